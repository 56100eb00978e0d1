"""health: what each mailbox worker and supervised task last did, for /metrics, /readyz and systemd.

The workers write plain facts here (one small call at connect, poll, IDLE, failure and outcome);
readers (the HTTP endpoint, the notify status line) judge them. Nothing here talks to a server or
the database, and nothing waits: a worker's call costs an attribute write.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field

from mailrouter.errors import ImapError, TokenRefused

# Seconds from a batch's bytes in hand to each message's commit.
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


@dataclass
class Latency:
    """A histogram without a metrics library, so that the worker's thread only counts."""

    counts: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BUCKETS) + 1))
    total: float = 0.0

    def observe(self, seconds: float) -> None:
        index = next((i for i, bound in enumerate(LATENCY_BUCKETS) if seconds <= bound), len(LATENCY_BUCKETS))
        self.counts[index] += 1
        self.total += seconds


@dataclass
class MailboxHealth:
    """One mailbox worker's recent past. Times are time.monotonic()."""

    name: str
    started_at: float = field(default_factory=time.monotonic)
    connected: bool = False
    idle: bool = False
    attempted: bool = False  # logged in or failed at least once: what READY=1 waits for
    login_failed: bool = False
    last_poll: float | None = None
    last_error: str = ""
    error_at: float = 0.0
    lag: int = 0  # newest UID on the server minus the checkpoint, at the last poll
    fetched: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)
    latency: Latency = field(default_factory=Latency)
    _batch_at: float = 0.0

    def logged_in(self) -> None:
        self.connected = self.attempted = True
        self.login_failed = False

    def failed(self, error: BaseException) -> None:
        """A session ended in error. A NO or BAD from the server before we were logged in is a
        login failure (wrong password, no STARTTLS): waiting will not mend it, a person must. So
        is a token the identity provider refuses, even while the session in hand still works."""
        self.login_failed = isinstance(error, TokenRefused) or (
            not self.connected and isinstance(error, ImapError)
        )
        self.connected = self.idle = False
        self.attempted = True
        self.last_error = describe(error)
        self.error_at = time.monotonic()

    def polled(self, lag: int) -> None:
        self.last_poll = time.monotonic()
        self.lag = lag

    def idling(self, idle: bool) -> None:
        """IDLE accepted by the server counts as a poll: it will tell us of new mail itself."""
        self.idle = idle
        self.last_poll = time.monotonic()

    def batch(self, fetched: int) -> None:
        self.fetched += fetched
        self._batch_at = time.monotonic()

    def counted(self, outcome: str) -> None:
        self.outcomes[outcome] += 1
        self.latency.observe(time.monotonic() - self._batch_at)

    def poll_age(self, now: float) -> float:
        """Seconds since the last successful poll (since start when there was none)."""
        return now - (self.last_poll if self.last_poll is not None else self.started_at)


@dataclass
class TaskHealth:
    """A supervised task: running, or waiting to be restarted after a failure."""

    name: str
    running: bool = False
    restarts: int = 0
    last_error: str = ""
    error_at: float = 0.0

    def failed(self, error: BaseException) -> None:
        self.running = False
        self.last_error = describe(error)
        self.error_at = time.monotonic()


@dataclass
class Health:
    """Everything the daemon's readers look at, keyed by mailbox and by task name."""

    mailboxes: dict[str, MailboxHealth] = field(default_factory=dict)
    tasks: dict[str, TaskHealth] = field(default_factory=dict)

    def task(self, name: str) -> TaskHealth:
        return self.tasks.setdefault(name, TaskHealth(name))

    def all_attempted(self) -> bool:
        return all(m.attempted for m in self.mailboxes.values())

    def last_error(self) -> str:
        """The most recent error of a task, or of a mailbox that is not connected now."""
        errors = [(t.error_at, f"{t.name}: {t.last_error}") for t in self.tasks.values() if t.last_error]
        errors += [
            (m.error_at, f"mailbox {m.name}: {m.last_error}")
            for m in self.mailboxes.values()
            if not m.connected and m.last_error
        ]
        return max(errors)[1] if errors else ""


def describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
