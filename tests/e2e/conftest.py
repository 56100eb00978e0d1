"""End-to-end fixtures: the real `mailrouter run` process against the real Postfix + Dovecot.

Every test gets department mailboxes and customers of its own (fresh accounts on the shared
stack), its own database and its own daemon process, so tests never see each other's mail.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import tomllib
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest
from sqlalchemy import Engine
from sqlalchemy.exc import OperationalError
from sqlmodel import Session, col, select
from sqlmodel.sql.expression import SelectOfScalar

from mailrouter.db import make_engine
from mailrouter.models import Case, Event, Message, OutboxMessage
from mailrouter.vocabulary import Direction, OutboxState
from tests.mailstack import MailStack
from tests.messages import make_mail, new_message_id

ROOT = Path(__file__).resolve().parents[2]
Row = TypeVar("Row")
_STARTED: list[Daemon] = []  # by Daemon.start, for no_daemon_outlives_its_test

CONFIG = """
database_url = "{database_url}"
rules = "{rules}"
templates = "{templates}"

[daemon]
{daemon}

[smtp]
{smtp}

[limits]
{limits}
"""

# Test timings: seconds where production waits minutes. Override any key per test.
DAEMON_SETTINGS: dict[str, object] = {"poll_interval": 1, "send_interval": 1, "shutdown_timeout": 10}
SMTP_SETTINGS: dict[str, object] = {
    "host": "127.0.0.1",
    "security": "none",
    "retry_initial": 1,
    "retry_max": 5,
}

# Every test's mailboxes are new and empty, and many tests send mail while the daemon starts: read
# all of it. The first-start tests set start themselves (None drops a key).
MAILBOX_SETTINGS: dict[str, object] = {"start": "all"}

MAILBOX = """
[mailboxes.{name}]
address = "{address}"
display_name = "{display_name}"
prefix = "{prefix}"
language = "{language}"
after_processing = "{after_processing}"
group = "{group}"
{mailbox}
[mailboxes.{name}.imap]
user = "{address}"
password_env = "{password_env}"
{imap}
"""

DEPARTMENTS = {
    "it": ("it", "IT Support", "IT", "en", "flag"),
    "hr": ("hr", "HR", "HR", "no", "move"),
    "vaktmester": ("vakt", "Vaktmester", "VM", "no", "flag"),
}


@dataclass
class Account:
    address: str
    password: str


@dataclass
class Daemon:
    """One mailrouter installation: its mailboxes, config, database and (when started) process."""

    stack: MailStack
    directory: Path
    mailboxes: dict[str, Account]
    database_url: str
    process: subprocess.Popen[bytes] | None = None
    env: dict[str, str] = field(default_factory=dict)
    agents: dict[str, Account] = field(default_factory=dict)

    @property
    def config_path(self) -> Path:
        return self.directory / "config.toml"

    @property
    def log_path(self) -> Path:
        return self.directory / "mailrouter.log"

    def start(self, wait: bool = False) -> None:
        """Start `mailrouter run`; with wait, return once it has upgraded the schema and runs."""
        assert self.process is None, "already running"
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        log = self.log_path.open("ab")
        _STARTED.append(self)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "mailrouter", "--config", str(self.config_path), "run"],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=self.env,
            cwd=self.directory,
        )
        if wait:
            self.wait_until(lambda: "mailrouter running" in self.log()[offset:], "mailrouter to start", 60)

    def stop(self, timeout: float = 30) -> int:
        assert self.process is not None, "not running"
        self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(timeout=timeout)
        self.process = None
        return code

    def kill(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "mailrouter", "--config", str(self.config_path), *args],
            capture_output=True,
            text=True,
            env=self.env,
            cwd=self.directory,
            timeout=60,
        )

    def engine(self) -> Engine:
        return make_engine(self.database_url)

    def cases(self) -> list[Case]:
        return self._select(select(Case).order_by(col(Case.id)))

    def outbox(self, kind: str | None = None) -> list[OutboxMessage]:
        rows = self._select(select(OutboxMessage).order_by(col(OutboxMessage.id)))
        return [r for r in rows if kind in (None, r.kind)]

    def events(self, kind: str) -> list[Event]:
        """The audit events of one kind, oldest first."""
        return self._select(select(Event).where(Event.kind == kind).order_by(col(Event.id)))

    def incoming(self, case_id: int | None) -> list[Message]:
        """The case's incoming messages, oldest first."""
        return self._select(
            select(Message)
            .where(Message.case_id == case_id, Message.direction == Direction.IN)
            .order_by(col(Message.id))
        )

    def _select(self, statement: SelectOfScalar[Row]) -> list[Row]:
        engine = self.engine()
        try:
            with Session(engine) as session:
                return list(session.exec(statement).all())
        finally:
            engine.dispose()

    def wait_until(self, condition: Callable[[], bool], what: str, timeout: float = 60) -> None:
        """Poll until condition holds; the timeout is a ceiling for a machine busy with other
        test workers (a daemon's start, models and all, takes seconds there)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(OperationalError):  # the daemon has not created its tables yet
                if condition():
                    return
            if self.process is not None and self.process.poll() is not None:
                raise AssertionError(
                    f"mailrouter exited ({self.process.returncode}) waiting for {what}:\n{self.log()}"
                )
            time.sleep(0.2)
        raise AssertionError(f"timed out waiting for {what}; mailrouter log:\n{self.log()[-4000:]}")

    def wait_idle(self) -> None:
        """Until every queued message has been handed to the relay, including rows a dead
        instance left half-sent (they are settled when their claim expires)."""
        self.wait_until(self._outbox_drained, "the outbox to drain")

    def settle(self) -> None:
        """Until nothing more can come of the mail so far, observed, not slept on: the relay
        holds no mail, every message in the watched folders is marked (or moved on), the outbox
        has handed every letter to the relay and the relay has delivered them. A letter the
        daemon (wrongly) queued twice is in its recipient's folder when this returns."""

        def quiet() -> bool:
            return (
                not self.stack.relay_queue()
                and self._all_marked()
                and self._outbox_drained()
                and not self.stack.relay_queue()
                and self._all_marked()
            )

        self.wait_until(quiet, "the daemon and the relay to settle")

    def wait_delivered(self) -> None:
        """Until the outbox has handed every letter to the relay and the relay has delivered
        them: what the daemon sent, (wrongly) twice or not, is in its recipients' folders."""
        self.wait_until(
            lambda: self._outbox_drained() and not self.stack.relay_queue(), "the relay to deliver"
        )

    def folders(self) -> dict[str, str]:
        """The folder each mailbox watches, by mailbox name."""
        mailboxes = tomllib.loads(self.config_path.read_text())["mailboxes"]
        return {name: mailboxes[name].get("folder", "INBOX") for name in self.mailboxes}

    def _outbox_drained(self) -> bool:
        unsettled = (OutboxState.QUEUED, OutboxState.SENDING)
        return all(o.state not in unsettled for o in self.outbox())

    def _all_marked(self) -> bool:
        return not any(
            self.stack.unmarked(self.mailboxes[name].address, self.mailboxes[name].password, folder)
            for name, folder in self.folders().items()
        )


AGENTS = """
[agents]
reply_secret_env = "E2E_REPLY_SECRET"
[agents.groups]
it-agents = ["{agent1}"]
it-access = ["{agent2}"]
hr-payroll = ["{agent2}"]
vaktmester-vakt = ["{agent1}"]
"""
DEFAULT_GROUPS = {"it": "it-agents", "hr": "hr-payroll", "vaktmester": "vaktmester-vakt"}


def _toml(settings: dict[str, object]) -> str:
    def value(v: object) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        return json.dumps(v) if isinstance(v, str) else str(v)

    return "\n".join(f"{key} = {value(v)}" for key, v in settings.items())


def make_daemon(
    stack: MailStack,
    directory: Path,
    database_url: str,
    departments: tuple[str, ...],
    *,
    daemon: Mapping[str, object] | None = None,
    smtp: dict[str, object] | None = None,
    imap: dict[str, object] | None = None,
    limits: dict[str, object] | None = None,
    mailbox: dict[str, dict[str, object]] | None = None,
    rules: Path = ROOT / "rules",
    templates: Path = ROOT / "templates",
    like: Daemon | None = None,
) -> Daemon:
    """A configured installation with fresh department mailboxes and two fresh agents.

    `daemon`, `smtp`, `imap` and `limits` override the test defaults, `mailbox` adds keys per
    department (e.g. {"it": {"folder": "Cases"}}), `rules` and `templates` replace the shipped
    directories; `like` is another installation whose mailboxes, agents and reply secret this
    one shares (a second instance)."""
    directory.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    if like is not None:
        accounts, agents = like.mailboxes, like.agents
        env["E2E_REPLY_SECRET"] = like.env["E2E_REPLY_SECRET"]
    else:
        locals_ = [DEPARTMENTS[name][0] for name in departments]
        *department_accounts, agent1, agent2 = stack.new_accounts(*locals_, "agent1", "agent2")
        accounts = {n: Account(*a) for n, a in zip(departments, department_accounts, strict=True)}
        agents = {"agent1": Account(*agent1), "agent2": Account(*agent2)}
        env["E2E_REPLY_SECRET"] = uuid.uuid4().hex
    parts = [
        CONFIG.format(
            database_url=database_url,
            rules=rules,
            templates=templates,
            daemon=_toml({**DAEMON_SETTINGS, **(daemon or {})}),
            smtp=_toml({**SMTP_SETTINGS, "port": stack.smtp_port, **(smtp or {})}),
            limits=_toml(limits or {}),
        ),
        AGENTS.format(agent1=agents["agent1"].address, agent2=agents["agent2"].address),
    ]
    imap_settings = _toml({"host": "127.0.0.1", "port": stack.imap_port, "security": "none", **(imap or {})})
    mailboxes: dict[str, Account] = {}
    for name in departments:
        _, display_name, prefix, language, after = DEPARTMENTS[name]
        address, password = accounts[name].address, accounts[name].password
        password_env = f"E2E_{name.upper()}_PASSWORD"
        env[password_env] = password
        mailboxes[name] = Account(address, password)
        parts.append(
            MAILBOX.format(
                name=name,
                address=address,
                display_name=display_name,
                prefix=prefix,
                language=language,
                after_processing=after,
                group=DEFAULT_GROUPS[name],
                password_env=password_env,
                imap=imap_settings,
                mailbox=_toml(
                    {
                        key: value
                        for key, value in {**MAILBOX_SETTINGS, **(mailbox or {}).get(name, {})}.items()
                        if value is not None
                    }
                ),
            )
        )
    (directory / "config.toml").write_text("".join(parts))
    return Daemon(stack, directory, mailboxes, database_url, env=env, agents=agents)


def send_mail(stack: MailStack, sender: str, to: str, subject: str, body: str, **headers: str) -> str:
    """Mail as a client sends it, through the real Postfix; returns its Message-ID.
    Header names are given with underscores: In_Reply_To="<...>"."""
    message_id = new_message_id()
    raw = make_mail(
        sender=sender,
        to=to,
        subject=subject,
        body=body,
        message_id=message_id,
        headers={name.replace("_", "-"): value for name, value in headers.items()},
    )
    stack.send(raw, sender.rpartition("<")[2].strip(">"), [to])
    return message_id


@pytest.fixture(autouse=True)
def no_daemon_outlives_its_test() -> Iterator[None]:
    """Every daemon the test started is killed when it ends, passed or failed: one left running
    would go on reading its mailboxes and holding memory until the whole run ends."""
    yield
    while _STARTED:
        _STARTED.pop().kill()


@pytest.fixture
def installation(mailstack: MailStack, tmp_path: Path) -> Callable[..., Daemon]:
    """make_daemon with all departments and a SQLite database of its own by default."""

    def make(name: str = "mailrouter", database_url: str | None = None, **kwargs: Any) -> Daemon:
        url = database_url or f"sqlite:///{tmp_path}/{name}.db"
        return make_daemon(mailstack, tmp_path / name, url, tuple(DEPARTMENTS), **kwargs)

    return make


@pytest.fixture
def daemon(mailstack: MailStack, tmp_path: Path) -> Daemon:
    """A configured, not yet started installation with the it, hr and vaktmester departments."""
    return make_daemon(
        mailstack,
        tmp_path / "mailrouter",
        f"sqlite:///{tmp_path}/mailrouter.db",
        tuple(DEPARTMENTS),
    )


@pytest.fixture
def customer(mailstack: MailStack) -> Account:
    return Account(*mailstack.new_account("customer"))
