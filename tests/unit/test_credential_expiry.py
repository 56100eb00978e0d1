"""The scheduler's daily warning of OAuth2 secrets about to run out: an event, a WARNING and one
alert mail per credential and day, however often the job runs and however many instances run it."""

from __future__ import annotations

import asyncio
import logging
import threading
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Engine
from sqlmodel import Session, select

from mailrouter.casework import Casework
from mailrouter.config import load_config
from mailrouter.daemon import load
from mailrouter.db import open_database
from mailrouter.intake import Intake
from mailrouter.models import Event, OutboxMessage
from mailrouter.schedule import Scheduler, warn_of_expiring_credentials
from mailrouter.vocabulary import EventKind, OutboxKind
from tests.postgres import temporary_database

NOW = datetime(2026, 12, 3, 9, 0, tzinfo=UTC)

CREDENTIALS = """
[oauth2.m365]
provider = "microsoft"
tenant = "contoso"
client_id = "c"
client_secret_env = "TEST_OAUTH_SECRET"
secret_expires = 2026-12-13
[oauth2.later]
provider = "microsoft"
tenant = "contoso"
client_id = "c"
client_secret_env = "TEST_OAUTH_SECRET"
secret_expires = 2027-02-01
[alerts]
to = ["ops@example.test"]
"""


@pytest.fixture(params=["sqlite", "postgresql"])
def installation(request, config_file, monkeypatch):
    """The unit config with two credentials (one runs out in 10 days) and [alerts], on SQLite or
    a PostgreSQL database of its own; (casework, engine)."""
    monkeypatch.setenv("TEST_OAUTH_SECRET", "s")
    text = config_file.read_text() + CREDENTIALS
    if request.param == "sqlite":
        config_file.write_text(text)
        yield casework(config_file)
        return
    with temporary_database() as url:
        config_file.write_text(text.replace(text.splitlines()[1], f'database_url = "{url}"'))
        made = casework(config_file)
        yield made
        made[1].dispose()


def casework(config_file) -> tuple[Casework, Engine]:
    loaded = load(load_config(config_file))
    engine = open_database(loaded.config)
    return Intake(loaded.config, loaded.rules, loaded.templates, engine, loaded.agents).casework, engine


def warnings_given(engine) -> tuple[list[Event], list[OutboxMessage]]:
    with Session(engine) as session:
        events = session.exec(select(Event).where(Event.kind == EventKind.CREDENTIAL_EXPIRING)).all()
        alerts = session.exec(select(OutboxMessage).where(OutboxMessage.kind == OutboxKind.ALERT)).all()
    return list(events), list(alerts)


def test_a_secret_running_out_within_14_days_is_warned_of_once_a_day_by_event_log_and_mail(
    installation, caplog
):
    casework, engine = installation
    with caplog.at_level(logging.WARNING, logger="mailrouter.schedule"):
        assert warn_of_expiring_credentials(engine, casework, NOW) == 1
        assert warn_of_expiring_credentials(engine, casework, NOW + timedelta(hours=14)) == 0
    [event], [alert] = warnings_given(engine)
    assert event.detail.startswith(
        "oauth2.m365: the client secret (secret_expires) expires on 2026-12-13 (10 days)"
    )
    assert "later" not in event.detail
    assert b"credential m365 runs out on 2026-12-13" in alert.data and alert.rcpt_to == ["ops@example.test"]
    assert [r.getMessage() for r in caplog.records] == [event.detail]

    assert warn_of_expiring_credentials(engine, casework, NOW + timedelta(days=1)) == 1  # the next day
    events, alerts = warnings_given(engine)
    assert len(events) == len(alerts) == 2 and "(9 days)" in events[1].detail


@pytest.mark.parametrize("installation", ["postgresql"], indirect=True)  # SQLite has one instance
def test_instances_running_the_job_at_once_on_postgresql_warn_once(installation):
    casework, engine = installation
    queued: list[int] = []
    threads = [
        threading.Thread(target=lambda: queued.append(warn_of_expiring_credentials(engine, casework, NOW)))
        for _ in range(4)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(queued) == [0, 0, 0, 1]
    events, alerts = warnings_given(engine)
    assert len(events) == len(alerts) == 1


async def test_the_scheduler_warns_at_its_start_without_waiting_a_day_and_wakes_the_sender(
    config_file, monkeypatch
):
    monkeypatch.setenv("TEST_OAUTH_SECRET", "s")
    soon = (datetime.now(UTC) + timedelta(days=5)).date()
    config_file.write_text(config_file.read_text() + CREDENTIALS.replace("2026-12-13", soon.isoformat()))
    work, engine = casework(config_file)
    woken = asyncio.Event()
    scheduler = Scheduler(engine, work, interval=3600, on_queued=woken.set)
    scheduler.start()
    try:
        await asyncio.wait_for(woken.wait(), timeout=5)
    finally:
        scheduler.stop()
    events, alerts = warnings_given(engine)
    assert len(events) == len(alerts) == 1 and "oauth2.m365" in events[0].detail
