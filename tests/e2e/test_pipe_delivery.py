"""The project's Postfix delivers a domain to `mailrouter deliver` through a pipe(8) transport:
registered, a second delivery of the same message deduplicated, and EX_TEMPFAIL while the
database cannot be opened makes Postfix keep the mail and deliver it once it can.

pipe(8) refuses to run a command as root, so it runs as the stack's PIPE_USER, which must be able
to run this venv's Python. A venv made from a pyenv Python under /root (0700) is not runnable by
anyone else; then the pipe gets a venv of its own, made from a system Python of the same version
that user can run, which imports this venv's packages (same version, so the same compiled ABI).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import DEPARTMENTS, Daemon, make_daemon
from tests.mailstack import PIPE_DOMAIN, PIPE_USER, MailStack
from tests.messages import make_mail


def as_pipe_user(*argv: str) -> subprocess.CompletedProcess[str]:
    """argv run as the pipe user, by /bin/sh's exec as the pipe program does it (sh checks the
    permissions a sandbox's own execve may not)."""
    user = [f"--reuid={PIPE_USER}", f"--regid={PIPE_USER}", "--clear-groups"]
    return subprocess.run(
        ["setpriv", *user, "/bin/sh", "-c", 'exec "$@"', "sh", *argv],
        capture_output=True,
        text=True,
        timeout=60,
    )


def python_for_pipe(home: Path) -> Path:
    """A Python the pipe user can run that imports mailrouter and its dependencies from this venv."""
    if as_pipe_user(sys.executable, "-c", "import mailrouter").returncode == 0:
        return Path(sys.executable)
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    for base in (f"/usr/bin/python{version}", f"/usr/local/bin/python{version}"):
        if as_pipe_user(base, "-c", "").returncode != 0:
            continue
        venv = home / "python"
        subprocess.run([base, "-m", "venv", "--without-pip", str(venv)], check=True, capture_output=True)
        site_packages = venv / "lib" / f"python{version}" / "site-packages"
        ours = sysconfig.get_paths()["purelib"]  # addsitedir: its .pth files (the editable install) too
        (site_packages / "mailrouter-dev.pth").write_text(f"import site; site.addsitedir({ours!r})\n")
        return venv / "bin" / "python"
    raise AssertionError(
        f"user {PIPE_USER} can run neither {sys.executable} nor a python{version} of the system: "
        f"make the venv from a Python {PIPE_USER} can read (scripts/bootstrap with that python3)"
    )


@pytest.fixture
def piped(mailstack: MailStack) -> Iterator[tuple[str, Daemon, Path]]:
    """A mailrouter installation that Postfix pipes mail for <mailbox>@<domain> into: its domain,
    the installation (not started: nothing reads IMAP) and its database file."""
    domain = f"desk-{uuid.uuid4().hex[:8]}.{PIPE_DOMAIN}"
    home = mailstack.pipe_dir / domain
    home.mkdir()
    try:
        data = home / "data"
        data.mkdir()
        database = data / "mailrouter.db"
        daemon = make_daemon(mailstack, home / "mailrouter", f"sqlite:///{database}", tuple(DEPARTMENTS))
        # The pipe gets no environment from Postfix: the reply secret (all deliver reads of the
        # secrets) comes from a file only the pipe user may read; the IMAP passwords stay unset.
        secret = home / "reply-secret"
        secret.write_text(daemon.env["E2E_REPLY_SECRET"])
        secret.chmod(0o600)
        config = daemon.config_path.read_text()
        daemon.config_path.write_text(
            config.replace('reply_secret_env = "E2E_REPLY_SECRET"', f'reply_secret_file = "{secret}"')
        )
        migrated = daemon.cli("migrate")
        assert migrated.returncode == 0, migrated.stderr
        for path in (data, *data.iterdir(), secret):
            shutil.chown(path, PIPE_USER, PIPE_USER)
        program = home / "deliver"
        python = python_for_pipe(home)
        program.write_text(
            "#!/bin/sh\n# Postfix's pipe(8) runs this as the pipe user; $1 is the local part: the mailbox.\n"
            f'exec {python} -m mailrouter --config {daemon.config_path} deliver --mailbox "$1"\n'
        )
        program.chmod(0o755)
        yield domain, daemon, database
    finally:
        shutil.rmtree(home)


def wait_for(condition: Callable[[], object], what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def test_postfix_pipes_to_deliver_which_defers_while_the_database_is_down_then_registers_once(
    mailstack: MailStack, piped: tuple[str, Daemon, Path]
) -> None:
    domain, daemon, database = piped
    raw = make_mail(to=f"it@{domain}", subject="The printer on floor 3", body="It jams on every page.")

    database.chmod(0)  # the pipe user cannot open it: the database is unavailable
    first = mailstack.submit(raw, "customer@example.test", f"it@{domain}")
    wait_for(lambda: mailstack.delivery_attempts(first), "the first delivery attempt")
    [deferred] = mailstack.delivery_attempts(first)
    assert deferred.startswith("deferred"), deferred
    assert "not delivered; the MTA keeps the message and tries again" in deferred
    assert first in mailstack.queued()  # kept, not bounced
    assert daemon.cases() == []

    database.chmod(0o600)
    mailstack.deliver_now(first)
    wait_for(lambda: len(mailstack.delivery_attempts(first)) == 2, "the retried delivery")
    assert mailstack.delivery_attempts(first)[1].startswith("sent"), mailstack.delivery_attempts(first)
    [case] = daemon.cases()
    assert case.department == "it" and case.subject == "The printer on floor 3"

    # The same message again (a resend, a second MX): delivered, and still one case, one message.
    again = mailstack.submit(raw, "customer@example.test", f"it@{domain}")
    wait_for(lambda: mailstack.delivery_attempts(again), "the second delivery")
    assert mailstack.delivery_attempts(again)[0].startswith("sent"), mailstack.delivery_attempts(again)
    assert len(daemon.cases()) == 1
    assert len(daemon.incoming(case.id)) == 1
