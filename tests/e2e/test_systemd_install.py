"""The documented systemd install, followed into a scratch root: scripts/install, the secrets as
credential files, the config edited for this machine's servers; then the unit's own ExecStartPre
and ExecStart command lines, run with its Environment=, its credentials in $CREDENTIALS_DIRECTORY
and its StateDirectory in $STATE_DIRECTORY, as systemd would start them."""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import sys
import uuid
from pathlib import Path

from sqlmodel import Session, select

from mailrouter.db import make_engine
from mailrouter.models import Case
from tests.e2e.conftest import ROOT, send_mail
from tests.mailstack import MailStack
from tests.notifysocket import Listener

VENV_BIN = "/opt/mailrouter/.venv/bin/"  # where README installs the program


def service_settings(unit: Path) -> dict[str, list[str]]:
    """The [Service] section's settings, each key with all its values in order."""
    settings: dict[str, list[str]] = {}
    section = ""
    for line in unit.read_text().splitlines():
        line = line.strip()
        if line.startswith("["):
            section = line
        elif section == "[Service]" and line and not line.startswith("#"):
            key, _, value = line.partition("=")
            settings.setdefault(key, []).append(value)
    return settings


def test_the_documented_install_runs_and_registers_mail(mailstack: MailStack, tmp_path: Path) -> None:
    root = tmp_path / "root"
    subprocess.run([ROOT / "scripts" / "install", "--root", str(root)], check=True, capture_output=True)
    etc = root / "etc" / "mailrouter"
    unit = service_settings(root / "etc" / "systemd" / "system" / "mailrouter.service")

    # The secrets, one file each, as README says: IMAP passwords, the relay's, the reply secret.
    accounts = mailstack.new_accounts("it", "hr", "vakt", "agent1", "agent2", "relay")
    it, hr, vakt, agent1, agent2, relay = accounts
    secrets = {
        "it-imap": it[1],
        "hr-imap": hr[1],
        "vaktmester-imap": vakt[1],
        "smtp": relay[1],
        "reply-secret": uuid.uuid4().hex,
    }
    for name, value in secrets.items():
        (etc / "credentials" / name).write_text(value + "\n")
    # The edit README asks for: this machine's servers (IMAPS and submission with STARTTLS and a
    # login, both with the stack's own certificate) and its addresses.
    config = etc / "config.toml"
    text = config.read_text()
    ca = f'ca_file = "{mailstack.ca_file}"'
    imaps = f'host = "127.0.0.1"\nport = {mailstack.imaps_port}\n{ca}'
    submission = f'host = "127.0.0.1"\nport = {mailstack.submission_port}\n{ca}'
    text = text.replace('host = "imap.example.org"\nport = 993', imaps)
    text = text.replace('host = "smtp.example.org"\nport = 587', submission)
    for example, (address, _) in {
        "it-support@example.org": it,
        "hr@example.org": hr,
        "vaktmester@example.org": vakt,
        "agent1@example.org": agent1,
        "agent2@example.org": agent2,
        "mailrouter@example.org": relay,
    }.items():
        text = text.replace(example, address)
    config.write_text(text)
    installed = sorted(p.relative_to(etc) for p in etc.rglob("*"))

    # What systemd does before it starts the unit: credentials copied into a directory of the
    # service's own, the state directory made, the unit's environment and nothing else.
    credentials = root / "run" / "credentials" / "mailrouter.service"
    credentials.mkdir(parents=True)
    for entry in unit["LoadCredential"]:
        name, _, source = entry.partition(":")
        shutil.copy(root / source.lstrip("/"), credentials / name)
    [state_name] = unit["StateDirectory"]
    state = root / "var" / "lib" / state_name
    state.mkdir(parents=True)
    env = {"PATH": os.environ["PATH"], "LANG": "C.UTF-8"}
    for assignment in unit["Environment"]:
        key, _, value = assignment.partition("=")
        env[key] = str(root / value.lstrip("/")) if value.startswith("/") else value
    env |= {"CREDENTIALS_DIRECTORY": str(credentials), "STATE_DIRECTORY": str(state)}
    [working_directory] = unit["WorkingDirectory"]
    cwd = root / working_directory.lstrip("/")

    def command(line: str) -> list[str]:
        argv = shlex.split(line)
        assert argv[0].startswith(VENV_BIN), argv
        return [str(Path(sys.executable).parent / argv[0].removeprefix(VENV_BIN)), *argv[1:]]

    [pre] = unit["ExecStartPre"]
    checked = subprocess.run(command(pre), env=env, cwd=cwd, capture_output=True, text=True, timeout=60)
    assert checked.returncode == 0, checked.stderr

    notify_socket = str(tmp_path / "notify")
    notify = Listener(notify_socket)
    [start] = unit["ExecStart"]
    log = (tmp_path / "mailrouter.log").open("wb")
    env["NOTIFY_SOCKET"] = notify_socket
    daemon = subprocess.Popen(command(start), env=env, cwd=cwd, stdout=log, stderr=subprocess.STDOUT)
    try:
        notify.wait_for(lambda got: any("READY=1" in text for _, text in got), timeout=30)
        customer = mailstack.new_account("customer")
        send_mail(mailstack, customer[0], it[0], "The printer on floor 3", "It jams on every page.")
        # The acknowledgement went out through the relay's login (the smtp credential), and the
        # case is in the database in the state directory.
        mailstack.wait_for_messages(customer[0], customer[1], 1)
        engine = make_engine(f"sqlite:///{state / 'mailrouter.db'}")
        with Session(engine) as session:
            [case] = session.exec(select(Case)).all()
        engine.dispose()
        assert case.subject == "The printer on floor 3" and case.department == "it"
        # Each agent of the group got a notification whose reply address the reply secret signed.
        mailstack.wait_for_messages(agent1[0], agent1[1], 1)
    finally:
        daemon.send_signal(signal.SIGTERM)
        code = daemon.wait(timeout=30)
        notify.close()
    assert code == 0, (tmp_path / "mailrouter.log").read_text()
    # Nothing was written beside the read-only configuration.
    assert sorted(p.relative_to(etc) for p in etc.rglob("*")) == installed
