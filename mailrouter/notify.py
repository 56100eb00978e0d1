"""notify: systemd's notification protocol for Type=notify: READY=1, STATUS=, WATCHDOG=1, STOPPING=1.

Written here rather than taken from a library: the protocol is one datagram of KEY=value lines to
the AF_UNIX socket named by $NOTIFY_SOCKET (a leading '@' names an abstract socket), sdnotify on
PyPI has been unmaintained since 2017, and systemd-python builds against libsystemd's headers.

The watchdog is pinged from the event loop itself, so a loop that blocks stops the pings and
systemd kills and restarts the service after WatchdogSec.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import Callable, Mapping

from mailrouter.health import Health

log = logging.getLogger(__name__)


class Notifier:
    """Sends to $NOTIFY_SOCKET; does nothing when it is unset (not started by systemd)."""

    def __init__(self, address: str | None) -> None:
        self.address = "\0" + address[1:] if address and address.startswith("@") else address
        self._socket: socket.socket | None = None
        self._failed = False

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> Notifier:
        return cls(environ.get("NOTIFY_SOCKET") or None)

    def send(self, *fields: str) -> None:
        """One datagram; a failure is logged once and never stops the daemon (systemd, not the
        mail, is what is missing)."""
        if self.address is None:
            return
        if self._socket is None:
            self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        try:
            self._socket.sendto("\n".join(fields).encode(), self.address)
        except OSError as exc:
            if not self._failed:
                log.warning("cannot notify systemd at %s: %s", self.address.lstrip("\0"), exc)
            self._failed = True

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None


def watchdog_interval(environ: Mapping[str, str], pid: int | None = None) -> float | None:
    """Seconds between pings, half of WATCHDOG_USEC as sd_notify(3) advises; None when systemd
    asked for no watchdog, or asked another process (WATCHDOG_PID)."""
    usec = environ.get("WATCHDOG_USEC", "")
    owner = environ.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    if owner.isdigit() and int(owner) != (os.getpid() if pid is None else pid):
        return None
    return int(usec) / 2_000_000


def status_line(health: Health, queued: int | None) -> str:
    """One line for `systemctl status`: mailboxes up, queued mail, the last error."""
    up = sum(1 for m in health.mailboxes.values() if m.connected)
    parts = [f"{up}/{len(health.mailboxes)} mailboxes up"]
    parts.append("database unreachable" if queued is None else f"{queued} mail queued")
    if error := health.last_error():
        parts.append(f"last error: {error}")
    return ", ".join(parts)[:400]


async def _pause(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=seconds)


async def keep_alive(notifier: Notifier, interval: float, stop: asyncio.Event) -> None:
    """WATCHDOG=1 every `interval` seconds, from this loop, until stop."""
    while not stop.is_set():
        notifier.send("WATCHDOG=1")
        await _pause(stop, interval)


async def announce(
    notifier: Notifier,
    health: Health,
    queued: Callable[[], int],
    stop: asyncio.Event,
    *,
    interval: float = 5.0,
    on_ready: Callable[[], object] | None = None,
) -> None:
    """READY=1 once every mailbox has logged in or failed once, then STATUS= every `interval`.
    `queued` counts the outbox's queued rows; it runs in a thread and may raise (database away)."""
    while not health.all_attempted() and not stop.is_set():
        await _pause(stop, 0.1)
    first = True
    while not stop.is_set():
        try:
            count: int | None = await asyncio.to_thread(queued)
        except Exception:
            count = None
        fields = [f"STATUS={status_line(health, count)}"]
        notifier.send(*(["READY=1", *fields] if first else fields))
        if first and on_ready is not None:
            on_ready()
        first = False
        await _pause(stop, interval)
