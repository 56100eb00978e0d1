"""systemd notify against a real AF_UNIX datagram socket: the fields, READY, and the watchdog."""

from __future__ import annotations

import asyncio
import itertools
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from mailrouter.health import Health, MailboxHealth
from mailrouter.notify import Notifier, announce, keep_alive, status_line, watchdog_interval
from tests.notifysocket import Listener


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[Listener]:
    receiving = Listener(str(tmp_path / "notify.sock"))
    yield receiving
    receiving.close()


def test_a_message_arrives_as_one_datagram_of_lines(listener: Listener) -> None:
    notifier = Notifier.from_env({"NOTIFY_SOCKET": listener.socket.getsockname()})
    notifier.send("READY=1", "STATUS=ok")
    listener.wait_for(lambda got: len(got) == 1)
    assert listener.received[0][1] == "READY=1\nSTATUS=ok"


def test_an_abstract_socket_name_starts_with_an_at_sign() -> None:
    name = f"@mailrouter-test-{uuid.uuid4().hex}"
    receiving = Listener(name)
    try:
        Notifier.from_env({"NOTIFY_SOCKET": name}).send("WATCHDOG=1")
        receiving.wait_for(lambda got: [text for _, text in got] == ["WATCHDOG=1"])
    finally:
        receiving.close()


def test_without_notify_socket_nothing_is_sent_and_nothing_fails() -> None:
    Notifier.from_env({}).send("READY=1")


def test_a_vanished_socket_is_logged_not_raised(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    notifier = Notifier(str(tmp_path / "gone.sock"))
    notifier.send("WATCHDOG=1")
    notifier.send("WATCHDOG=1")
    assert caplog.text.count("cannot notify systemd") == 1


def test_the_watchdog_is_pinged_at_half_its_timeout_and_only_by_the_named_process() -> None:
    assert watchdog_interval({"WATCHDOG_USEC": "30000000"}, pid=7) == 15.0
    assert watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "7"}, pid=7) == 15.0
    assert watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "8"}, pid=7) is None
    assert watchdog_interval({}, pid=7) is None


async def test_pings_keep_coming_and_stop_while_the_loop_is_blocked(listener: Listener) -> None:
    notifier = Notifier(listener.socket.getsockname())
    stop = asyncio.Event()
    pinging = asyncio.create_task(keep_alive(notifier, 0.02, stop))
    while len(listener.received) < 5:
        await asyncio.sleep(0.01)
    time.sleep(0.5)  # the loop blocked: the test-only stall of a hung loop
    blocked_until = time.monotonic()
    while not any(at > blocked_until for at, _ in listener.received):
        await asyncio.sleep(0.01)
    stop.set()
    await pinging
    times = [at for at, text in listener.received if text == "WATCHDOG=1"]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert max(gaps) >= 0.45  # no ping while the loop was blocked
    assert sorted(gaps)[len(gaps) // 2] < 0.2  # pinging at its interval otherwise


class CountedHealth(Health):
    looked = 0

    def all_attempted(self) -> bool:
        self.looked += 1
        return super().all_attempted()


async def test_ready_waits_until_every_mailbox_has_logged_in_or_failed(listener: Listener) -> None:
    it, hr = MailboxHealth("it"), MailboxHealth("hr")
    health = CountedHealth({"it": it, "hr": hr})
    stop = asyncio.Event()
    ready = asyncio.Event()
    reporting = asyncio.create_task(
        announce(Notifier(listener.socket.getsockname()), health, lambda: 3, stop, on_ready=ready.set)
    )
    it.logged_in()
    while health.looked < 3:  # announce has looked, and seen that hr has not tried yet
        await asyncio.sleep(0.01)
    assert not ready.is_set()
    hr.failed(OSError("Connection refused"))
    await asyncio.wait_for(ready.wait(), timeout=5)
    stop.set()
    await reporting
    listener.wait_for(lambda got: len(got) == 1)
    assert listener.received[0][1] == (
        "READY=1\nSTATUS=1/2 mailboxes up, 3 mail queued, last error: mailbox hr: OSError: Connection refused"
    )


def test_the_status_line_says_when_the_database_cannot_be_read() -> None:
    health = Health({"it": MailboxHealth("it")})
    assert status_line(health, None) == "0/1 mailboxes up, database unreachable"
