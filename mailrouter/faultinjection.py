"""faultinjection: TEST-ONLY hooks that make a running daemon fail on purpose.

Off unless the environment variable MAILROUTER_FAULT_INJECTION is set (the daemon logs a warning
when it is); the end-to-end tests use it to prove supervision and the watchdog on a real process,
where no honest outside fault reaches the code under test. Never set it in production.

    MAILROUTER_FAULT_INJECTION="fail-task=mailbox-it:2:3,stall-loop=4"

- `fail-task=TASK:TIMES[:AFTER]`: the task's first TIMES runs fail with InjectedFault, each AFTER
  seconds (default 0) after it started; the running task is cancelled, as a crash would end it.
- `stall-loop=SECONDS`: once READY=1 has been sent, block the event loop for SECONDS, once.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass, field

from mailrouter.errors import ConfigError, InjectedFault

ENV = "MAILROUTER_FAULT_INJECTION"


@dataclass
class FaultInjection:
    failures_left: dict[str, int] = field(default_factory=dict)
    fail_after: dict[str, float] = field(default_factory=dict)
    stall_loop: float | None = None

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> FaultInjection | None:
        text = environ.get(ENV, "").strip()
        return cls.parse(text) if text else None

    @classmethod
    def parse(cls, text: str) -> FaultInjection:
        faults = cls()
        for item in filter(None, (part.strip() for part in text.split(","))):
            key, _, value = item.partition("=")
            try:
                if key == "fail-task":
                    task, times, *after = value.split(":")
                    faults.failures_left[task] = int(times)
                    faults.fail_after[task] = float(after[0]) if after else 0.0
                elif key == "stall-loop":
                    faults.stall_loop = float(value)
                else:
                    raise ValueError(f"unknown fault {key!r}")
            except ValueError as exc:
                raise ConfigError(f"{ENV}: cannot use {item!r}: {exc}") from None
        return faults

    def for_task(self, name: str) -> Callable[[Awaitable[None]], Awaitable[None]] | None:
        """A wrapper that makes this run of the task fail, while it has failures left."""
        if self.failures_left.get(name, 0) <= 0:
            return None
        self.failures_left[name] -= 1
        return lambda running: _fail(running, name, self.fail_after[name])

    def stall(self) -> None:
        """Block the event loop (called on it): nothing else runs, the watchdog pings included."""
        if self.stall_loop is not None:
            time.sleep(self.stall_loop)


async def _fail(running: Awaitable[None], name: str, after: float) -> None:
    if after <= 0:
        if isinstance(running, Coroutine):
            running.close()  # never started: closed rather than left to warn that it was never awaited
        raise InjectedFault(f"fault injection: {name} failed as it started")
    try:
        await asyncio.wait_for(running, timeout=after)
    except TimeoutError:
        raise InjectedFault(f"fault injection: {name} killed after {after:g}s") from None
