"""supervise: a long-running task that fails is logged, recorded and restarted; too many failures
in a short window end the process, with a non-zero exit, for systemd to restart it whole.

A worker that died silently while the process looked healthy is how fetching stops for days with
nobody told. The workers handle what they expect (a server away, the database locked); what
reaches the supervisor is a bug or a state they cannot leave, and a clean restart of the task is
the one remedy that does not depend on knowing which.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine
from sqlmodel import Session

from mailrouter import store
from mailrouter.config import DaemonSettings
from mailrouter.errors import TaskEnded, TaskFailedTooOften
from mailrouter.health import TaskHealth
from mailrouter.vocabulary import EventKind

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RestartPolicy:
    initial: float = 1.0
    maximum: float = 60.0
    limit: int = 5
    window: float = 300.0

    @classmethod
    def from_settings(cls, daemon: DaemonSettings) -> RestartPolicy:
        return cls(daemon.restart_initial, daemon.restart_max, daemon.restart_limit, daemon.restart_window)


@dataclass(frozen=True)
class Verdict:
    """What to do after a failure: restart after `delay` seconds, or give up."""

    give_up: bool
    delay: float
    recent: int  # failures within the window, this one included


def judge(policy: RestartPolicy, failures: Sequence[float], now: float) -> Verdict:
    """Failures (times, this one included) -> restart or give up. The backoff doubles with each
    failure still inside the window, so a task that fails once a day always restarts at once."""
    recent = sum(1 for at in failures if now - at <= policy.window)
    delay = min(policy.maximum, policy.initial * 2 ** (recent - 1))
    return Verdict(recent >= policy.limit, delay, recent)


def record_failure(engine: Engine, kind: EventKind, detail: str, **data: Any) -> None:
    """The event in a short transaction of its own: the task's own may be what failed."""
    with Session(engine) as session:
        store.record(session, kind, detail, **data)
        session.commit()


Start = Callable[[], Awaitable[None]]


class Supervisor:
    def __init__(
        self,
        engine: Engine,
        policy: RestartPolicy,
        stop: asyncio.Event,
        *,
        faults: Callable[[str], Callable[[Awaitable[None]], Awaitable[None]] | None] | None = None,
    ) -> None:
        self.engine = engine
        self.policy = policy
        self.stop = stop
        # test-only: wraps a task's run to make it fail (mailrouter.faultinjection); None in production
        self.faults = faults

    async def run(self, start: Start, health: TaskHealth) -> None:
        """Run `start()` until the daemon stops, restarting it after each failure; raises
        TaskFailedTooOften when failures come faster than the policy allows."""
        name = health.name
        loop = asyncio.get_running_loop()
        failures: list[float] = []
        while True:
            health.running = True
            try:
                running = start()
                inject = self.faults(name) if self.faults is not None else None
                await (inject(running) if inject is not None else running)
            except Exception as exc:
                error: Exception = exc
            else:
                if self.stop.is_set():
                    return
                error = TaskEnded(f"{name} returned while the daemon was running")
            health.failed(error)
            if self.stop.is_set():
                log.error("task %s failed while stopping", name, exc_info=error)
                return
            failures.append(loop.time())
            verdict = judge(self.policy, failures, loop.time())
            if verdict.give_up:
                detail = (
                    f"{name} failed {verdict.recent} times within {self.policy.window:g}s "
                    f"({health.last_error}): mailrouter stops so that its service manager restarts it"
                )
                log.critical("%s", detail, exc_info=error)
                await self._record(EventKind.TASK_FAILED_REPEATEDLY, detail, name, health.last_error)
                raise TaskFailedTooOften(detail) from error
            health.restarts += 1
            detail = f"{name} failed ({health.last_error}); restarting it in {verdict.delay:.1f}s"
            log.error("%s", detail, exc_info=error)
            await self._record(EventKind.TASK_RESTARTED, detail, name, health.last_error)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop.wait(), timeout=verdict.delay)
            if self.stop.is_set():
                return

    async def _record(self, kind: EventKind, detail: str, task: str, error: str) -> None:
        try:
            await asyncio.to_thread(record_failure, self.engine, kind, detail, task=task, error=error)
        except Exception as exc:  # the database may be the very thing that failed
            log.error(
                "task %s: the %s event could not be recorded (it is only in this log): %s", task, kind, exc
            )
