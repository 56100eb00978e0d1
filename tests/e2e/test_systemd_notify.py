"""The real daemon under a NOTIFY_SOCKET bound by the test, as systemd would start it with
Type=notify and WatchdogSec=: READY=1 once the mailboxes have logged in, STATUS= lines, and
WATCHDOG=1 pings from the event loop that stop while the loop is blocked (the TEST-ONLY hook
MAILROUTER_FAULT_INJECTION=stall-loop=...)."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest

from mailrouter.faultinjection import ENV as FAULTS
from tests.notifysocket import Listener

pytestmark = pytest.mark.e2e

WATCHDOG_USEC = 400_000  # a ping every 0.2 s


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[Listener]:
    listener = Listener(str(tmp_path / "notify.sock"))
    yield listener
    listener.close()


def pings_after_ready(listener: Listener) -> list[float]:
    ready_at = next((at for at, text in listener.received if "READY=1" in text), None)
    if ready_at is None:
        return []
    return [at for at, text in listener.received if text == "WATCHDOG=1" and at > ready_at]


def test_ready_comes_once_the_mailboxes_logged_in_and_the_watchdog_keeps_being_pinged(
    installation, notify_socket
):
    daemon = installation()
    daemon.env.update(NOTIFY_SOCKET=notify_socket.socket.getsockname(), WATCHDOG_USEC=str(WATCHDOG_USEC))
    daemon.start()
    notify_socket.wait_for(lambda got: any("READY=1" in text for _, text in got), timeout=30)
    [ready] = [text for text in notify_socket.texts() if "READY=1" in text]
    assert "STATUS=3/3 mailboxes up, 0 mail queued" in ready
    notify_socket.wait_for(lambda got: len(pings_after_ready(notify_socket)) >= 10)
    times = pings_after_ready(notify_socket)
    assert max(b - a for a, b in itertools.pairwise(times)) < 0.2 * 3
    assert daemon.stop() == 0
    assert "STOPPING=1" in notify_socket.texts()


def test_a_stalled_event_loop_stops_the_watchdog_pings(installation, notify_socket):
    daemon = installation()
    daemon.env.update(
        NOTIFY_SOCKET=notify_socket.socket.getsockname(),
        WATCHDOG_USEC=str(WATCHDOG_USEC),
        **{FAULTS: "stall-loop=2"},
    )
    daemon.start()
    notify_socket.wait_for(lambda got: len(pings_after_ready(notify_socket)) >= 5, timeout=30)
    times = [at for at, text in notify_socket.received if text == "WATCHDOG=1"]  # the stall follows READY
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert max(gaps) >= 1.9  # systemd, with WatchdogSec under 2 s, would have killed it
    assert daemon.stop() == 0
