"""/readyz's judgement and the [http] section's rules, without a server."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from mailrouter.config import HttpSettings
from mailrouter.errors import ImapError
from mailrouter.facts import DatabaseFacts
from mailrouter.health import Health, MailboxHealth, TaskHealth
from mailrouter.http import Thresholds, judge

LIMITS = Thresholds(max_poll_age=60, idle_timeout=1500, max_outbox_age=600)
FACTS = DatabaseFacts(outbox={"queued": 0}, oldest_queued_age=None, deliveries={})


def polled(name: str, at: float, *, idle: bool = False) -> MailboxHealth:
    mailbox = MailboxHealth(name, started_at=0.0)
    mailbox.logged_in()
    mailbox.last_poll, mailbox.idle = at, idle
    return mailbox


def test_fresh_mailboxes_running_tasks_and_a_short_outbox_are_ready() -> None:
    health = Health({"it": polled("it", 990.0)}, {"sender": TaskHealth("sender", running=True)})
    readiness = judge(health, FACTS, 1000.0, LIMITS)
    assert readiness.ready and readiness.causes == []


def test_a_mailbox_without_a_recent_poll_is_named_with_its_last_error() -> None:
    it = polled("it", 900.0)
    it.failed(OSError("Connection refused"))
    readiness = judge(Health({"it": it}), FACTS, 1000.0, LIMITS)
    assert readiness.causes == [
        "mailbox it: no successful poll for 100s (last error: OSError: Connection refused)"
    ]


def test_a_mailbox_in_idle_may_go_as_long_as_the_idle_timeout_without_a_poll() -> None:
    assert judge(Health({"it": polled("it", 0.0, idle=True)}), FACTS, 1000.0, LIMITS).ready


def test_a_refused_login_is_red_at_once() -> None:
    it = MailboxHealth("it", started_at=999.0)
    it.failed(ImapError("LOGIN as it@example.test: NO [AUTHENTICATIONFAILED]"))
    [cause] = judge(Health({"it": it}), FACTS, 1000.0, LIMITS).causes
    assert cause.startswith("mailbox it: cannot log in")


def test_a_task_waiting_for_its_restart_an_old_outbox_and_the_database_are_causes() -> None:
    task = TaskHealth("sender")
    task.failed(RuntimeError("boom"))
    old = DatabaseFacts(outbox={"queued": 1}, oldest_queued_age=700.0, deliveries={})
    assert judge(Health({}, {"sender": task}), old, 0.0, LIMITS).causes == [
        "task sender: restarting after a failure (RuntimeError: boom)",
        "outbox: the oldest queued mail has waited 700s",
    ]
    assert judge(Health(), "OperationalError: unable to open", 0.0, LIMITS).causes == [
        "database unreachable: OperationalError: unable to open"
    ]


def test_listening_beyond_loopback_needs_a_token() -> None:
    assert HttpSettings().loopback and HttpSettings(listen="[::1]:8025").loopback
    with pytest.raises(ValidationError, match="not loopback: set token_env or token_file"):
        HttpSettings(listen="0.0.0.0:8025")
    assert HttpSettings(listen="0.0.0.0:8025", token_file="/run/credentials/x").port == 8025
    with pytest.raises(ValidationError, match="expected HOST:PORT"):
        HttpSettings(listen="8025")
