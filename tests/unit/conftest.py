"""Unit-test fixtures: a small two-department configuration."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from mailrouter.config import MailboxSettings, load_config
from mailrouter.daemon import load
from mailrouter.db import create_schema, make_engine, open_database
from mailrouter.intake import Intake
from tests.postgres import temporary_database

CONFIG = """
database_url = "sqlite:///{db}"
rules = "rules"
templates = "{templates}"
[smtp]
host = "127.0.0.1"
port = 2525
security = "none"
[agents]
reply_secret_env = "TEST_REPLY_SECRET"
reopen_days = 7
[agents.groups]
it-agents = ["agent1@example.test", "agent2@example.test"]
hr-agents = ["agent2@example.test"]
[mailboxes.it]
address = "it-support@example.test"
display_name = "IT Support"
prefix = "IT"
group = "it-agents"
[mailboxes.it.imap]
host = "127.0.0.1"
port = 1143
security = "none"
user = "it-support@example.test"
password_env = "TEST_IT_PASSWORD"
[mailboxes.hr]
address = "hr@example.test"
display_name = "HR"
prefix = "HR"
language = "no"
[mailboxes.hr.imap]
host = "127.0.0.1"
user = "hr@example.test"
password_file = "{secret}"
"""


@pytest.fixture
def config_file(tmp_path, monkeypatch, request):
    """A config with two departments, the repository's templates and an empty rules directory."""
    from pathlib import Path

    root = Path(request.config.rootpath)
    (tmp_path / "rules").mkdir()
    secret = tmp_path / "hr-secret"
    secret.write_text("hr-password\n")
    monkeypatch.setenv("TEST_IT_PASSWORD", "it-password")
    monkeypatch.setenv("TEST_REPLY_SECRET", "unit-test-reply-secret-of-32-bytes-or-more")
    path = tmp_path / "config.toml"
    path.write_text(CONFIG.format(db=tmp_path / "db.sqlite", templates=root / "templates", secret=secret))
    return path


@pytest.fixture
def mailboxes(config_file) -> dict[str, MailboxSettings]:
    return load_config(config_file).mailboxes


@pytest.fixture
def intake(config_file):
    """The real intake on a fresh SQLite database: no IMAP, no SMTP."""
    loaded = load(load_config(config_file))
    return Intake(loaded.config, loaded.rules, loaded.templates, open_database(loaded.config), loaded.agents)


START = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)  # a Monday


class Clock:
    """The intake's `now`, moved on by the test."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **span: float) -> datetime:
        self.now += timedelta(**span)
        return self.now


@pytest.fixture
def clock(monkeypatch) -> Clock:
    """The intake's clock, at START until the test moves it."""
    clock = Clock(START)
    monkeypatch.setattr("mailrouter.intake.utcnow", clock)
    return clock


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request, tmp_path):
    """A fresh schema, once on SQLite and once on PostgreSQL: the test runs on both."""
    if request.param == "sqlite":
        engine = make_engine(f"sqlite:///{tmp_path}/schema.db")
        create_schema(engine)
        yield engine
        engine.dispose()
        return
    with temporary_database() as url:
        engine = make_engine(url)
        create_schema(engine)
        yield engine
        engine.dispose()
