"""SIGTERM: the message and SMTP transaction in hand are finished, then exit 0 in bounded time."""

from __future__ import annotations

import socket
import subprocess
import sys
from datetime import datetime

import pytest
from sqlmodel import select

from mailrouter.models import Message
from mailrouter.vocabulary import Direction, OutboxState
from tests.faults.conftest import (
    FAST_DAEMON,
    FAST_IMAP,
    FAST_SMTP,
    FLOOD_LIMITS,
    assert_acknowledged_exactly_once,
    customer_mail,
    preload,
)

pytestmark = [pytest.mark.faults, pytest.mark.e2e]


def shutdown_seconds(daemon) -> float:
    """From the daemon's first "stopping" to its "stopped", by the timestamps of its own log:
    what it decided, not how long a busy machine took to run the process's exit."""
    stamps: dict[str, datetime] = {}
    for line in daemon.log().splitlines():
        for kind in ("stopping:", "stopped"):
            if f"mailrouter.daemon: {kind}" in line:
                stamps.setdefault(kind, datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f"))
    return (stamps["stopped"] - stamps["stopping:"]).total_seconds()


def test_sigterm_mid_stream_finishes_the_work_in_hand_and_exits_0(installation, mailstack, customers):
    daemon = installation(
        daemon={**FAST_DAEMON, "batch_size": 5},
        smtp=FAST_SMTP,
        imap=FAST_IMAP,
        limits=FLOOD_LIMITS,
    )
    it, customer = daemon.mailboxes["it"], customers[0]
    # Enough backlog that SIGTERM surely lands mid-stream: with 60 the daemon sometimes had them all
    # registered before the signal arrived.
    backlog = 250
    preload(mailstack, it, [customer_mail(customer, it, f"Busy {n}")[1] for n in range(backlog)])
    daemon.start(wait=True)
    daemon.wait_until(lambda: len(daemon.cases()) >= 5, "work under way")
    assert daemon.stop() == 0
    assert shutdown_seconds(daemon) < FAST_DAEMON["shutdown_timeout"]
    log = daemon.log()
    assert "stopping: finishing the work in hand" in log and "did not finish in time" not in log

    # Whatever was registered was registered whole: each case with its message and its outbox row,
    # and no acknowledgement left half-sent.
    cases = daemon.cases()
    assert 5 <= len(cases) < backlog
    incoming = daemon._select(select(Message).where(Message.direction == Direction.IN))
    assert len(incoming) == len(cases) == len(daemon.outbox("acknowledgement"))
    assert all(o.state in (OutboxState.SENT, OutboxState.QUEUED) for o in daemon.outbox())

    daemon.start(wait=True)
    daemon.wait_until(lambda: len(daemon.cases()) == backlog, "the rest after the restart", 60)
    daemon.wait_idle()
    assert_acknowledged_exactly_once(mailstack, daemon, [customer])
    assert daemon.stop() == 0


def test_sigterm_with_a_hung_relay_exits_0_within_the_shutdown_timeout(installation, mailstack, customers):
    # A relay that accepts the connection and then never says a word.
    hung = socket.socket()
    hung.bind(("127.0.0.1", 0))
    hung.listen(8)
    try:
        daemon = installation(
            daemon={**FAST_DAEMON, "shutdown_timeout": 2},
            smtp={**FAST_SMTP, "port": hung.getsockname()[1], "timeout": 60},
            imap=FAST_IMAP,
        )
        it, customer = daemon.mailboxes["it"], customers[0]
        daemon.start(wait=True)
        preload(mailstack, it, [customer_mail(customer, it, "Relay hangs")[1]])
        daemon.wait_until(lambda: any(o.claimed_by for o in daemon.outbox()), "the sender to be stuck")
        assert daemon.stop() == 0  # long before the relay's 60 s timeout
        assert 2 <= shutdown_seconds(daemon) < 2 + 2
        assert "sender did not finish in time, cancelling it" in daemon.log()
        # nothing reached DATA: all of it (acknowledgement, agents' notification) is for the next run
        assert [row.state for row in daemon.outbox()] == [OutboxState.QUEUED] * 2
    finally:
        hung.close()


def test_a_second_instance_on_the_same_sqlite_database_is_refused(installation, mailstack):
    daemon = installation(daemon=FAST_DAEMON)
    daemon.start(wait=True)
    try:
        second = subprocess.run(
            [sys.executable, "-m", "mailrouter", "--config", str(daemon.config_path), "run"],
            capture_output=True,
            text=True,
            env=daemon.env,
            timeout=60,
        )
        assert second.returncode == 1
        assert f"another mailrouter (pid {daemon.process.pid}) is running" in second.stderr
        assert "use PostgreSQL" in second.stderr
        assert daemon.process.poll() is None  # the first one is unharmed
    finally:
        assert daemon.stop() == 0
    # and once the first has stopped, the lock is free again
    daemon.start(wait=True)
    assert daemon.stop() == 0
