"""Worker processes that parse fetched mail while the intake registers the mail before it.

Parsing is pure CPU; in the daemon's own process it takes turns with the intake and the sender
for the GIL (bench/RESULTS.md has the numbers). The workers only ever run parse(), under a time
limit: a message that takes too long is read again in a degraded way, never waited on for long.
"""

from __future__ import annotations

import functools
import logging
import os
import signal
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from concurrent.futures import CancelledError as FutureCancelled
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from multiprocessing import get_context

from mailrouter.errors import ParseError
from mailrouter.parse import MAX_HTML_CHARS, Inbound, parse, parse_degraded

log = logging.getLogger(__name__)

PARENT_CHECK_SECONDS = 1.0
# Bigger mail is parsed in process: the copies that carry it to a worker and back cost more
# memory than parse() itself needs for big mail (it cuts attachment bodies out first).
LARGEST_SENT_TO_WORKER = 1024 * 1024
# Messages per task at most: each task's round trip to a worker cost the daemon 0.29 ms of CPU, a
# message's share in a task of eight 0.11 ms (bench/RESULTS.md).
CHUNK = 8

# How much longer than its time limit a worker may take before it is killed: the limit is kept
# inside the worker (SIGALRM), so a worker past this is stuck where no signal reaches (C code).
KILL_AFTER = 2.0

Parsed = Inbound | ParseError | None  # None: the worker could not; the intake parses it itself
Parser = Callable[..., Inbound]


@dataclass(eq=False)
class _Task:
    """A few messages of a batch given to one worker call. A task whose worker was killed is
    done again (`redone`: where each of its messages went), never dropped."""

    raws: list[bytes]
    degraded: str  # "": a full parse; else why only the degraded readings are tried
    future: Future[list[Parsed]]
    pool: ProcessPoolExecutor | None
    deadline: float | None = None  # set when the intake first waits for it
    redone: list[tuple[_Task, int]] | None = None


@dataclass(frozen=True)
class Parsing:
    """One message's place in a task under way."""

    task: _Task
    index: int


class ParsePool:
    """Every parse in a worker runs under time_limit: past it the message is read again in a
    degraded way (text parts only, then headers only), and a worker that does not even answer
    that is killed and replaced, so one message never holds up the others for long. A pool that
    broke by itself (a worker died) is replaced; meanwhile the intake parses in process.
    `parse` is what the workers run (tests give one that hangs)."""

    def __init__(
        self,
        workers: int,
        *,
        time_limit: float = 5.0,
        html_chars: int = MAX_HTML_CHARS,
        parse: Parser = parse,
    ) -> None:
        self.workers = workers
        self.time_limit = time_limit
        self.html_chars = html_chars
        self.parse = parse
        self._pool: ProcessPoolExecutor | None = None
        self._guard = threading.Lock()
        # Pools killed for a stuck worker: the other tasks they broke are done again elsewhere.
        self._killed: weakref.WeakSet[ProcessPoolExecutor] = weakref.WeakSet()

    def start(self) -> None:
        """Start the workers now rather than with the first mail: each takes a second to start."""
        with self._guard:
            if self.workers and self._pool is None:
                self._pool = self._new_pool()
                for _ in range(self.workers):
                    self._pool.submit(int)

    def _new_pool(self) -> ProcessPoolExecutor:
        # spawn: a forked worker would inherit the SQLite instance lock and open sockets
        return ProcessPoolExecutor(
            self.workers, mp_context=get_context("spawn"), initializer=_start_worker, initargs=(os.getpid(),)
        )

    def submit(self, raws: Sequence[bytes | None]) -> list[Parsing | None]:
        """The parses of a batch under way, in order, in tasks of 1, 2, 4, then CHUNK messages
        (the intake waits for the first before it registers anything, the rest come while it
        does); None for each message the intake parses itself (raw None, or too big to send, or
        no workers)."""
        parsings: list[Parsing | None] = [None] * len(raws)
        if self.workers == 0:
            return parsings
        sent = [i for i, raw in enumerate(raws) if raw is not None and len(raw) <= LARGEST_SENT_TO_WORKER]
        start, size = 0, 1
        while start < len(sent):
            chunk = sent[start : start + size]
            task = self._task([raw for i in chunk if (raw := raws[i]) is not None], "")
            if task is None:
                break
            for index, position in enumerate(chunk):
                parsings[position] = Parsing(task, index)
            start, size = start + size, min(size * 2, CHUNK)
        return parsings

    def _task(self, raws: list[bytes], degraded: str) -> _Task | None:
        with self._guard:
            for _ in range(2):  # a pool found broken is replaced once
                if self._pool is None:
                    self._pool = self._new_pool()
                try:
                    future = self._pool.submit(
                        _parse_all, raws, self.parse, self.time_limit, self.html_chars, degraded
                    )
                except BrokenProcessPool:
                    self._pool = None
                    continue
                return _Task(raws, degraded, future, self._pool)
        return None

    def result(self, parsing: Parsing | None) -> Parsed:
        if parsing is None:
            return None
        task, index = parsing.task, parsing.index
        while True:
            if task.redone is not None:
                task, index = task.redone[index]
                continue
            if task.deadline is None:
                # Each message may use its limit three times over: whole, text only, headers only.
                task.deadline = time.monotonic() + 3 * self.time_limit + KILL_AFTER
            try:
                return task.future.result(timeout=max(0.0, task.deadline - time.monotonic()))[index]
            except FutureTimeout:
                self._kill(task)
            except (BrokenProcessPool, FutureCancelled) as exc:
                # Cancelled: still queued in a pool that the kill of another task shut down.
                if isinstance(exc, BrokenProcessPool) and task.pool not in self._killed:
                    log.warning("parser process died (%s); parsing in process until a new one starts", exc)
                    with self._guard:
                        if task.pool is self._pool:
                            self._pool = None
                    return None
                redo = self._task(task.raws, task.degraded)  # broken by the kill of another task
                if redo is None:
                    return None
                task.redone = [(redo, i) for i in range(len(task.raws))]

    def _kill(self, task: _Task) -> None:
        """The worker of `task` is stuck: kill its pool and do the task again, each message alone
        (which of them hung is not known); one that hangs alone is read degraded, and one that
        hangs even so is handed back as a ParseError, to be set aside."""
        pool = task.pool
        with self._guard:
            if pool is not None and pool not in self._killed:
                self._killed.add(pool)
                # Python 3.11 has no public way to end a pool's workers (3.14 adds kill_workers).
                for process in list(pool._processes.values()):
                    process.kill()
                pool.shutdown(wait=False, cancel_futures=True)
                if self._pool is pool:
                    self._pool = None
        limit = f"{self.time_limit:g} s"
        log.warning("a parse took longer than %s and its worker was killed", limit)
        redone: list[tuple[_Task, int]] = []
        for raw in task.raws:
            if len(task.raws) > 1:
                alone = self._task([raw], task.degraded)
            elif not task.degraded:
                alone = self._task([raw], f"parsing did not finish within {limit}; its worker was killed")
            else:
                alone = None
            if alone is None:
                verdict: Future[list[Parsed]] = Future()
                verdict.set_result([ParseError(f"{task.degraded}, and its degraded reading hung too")])
                alone = _Task([raw], task.degraded, verdict, None)
            redone.append((alone, 0))
        task.redone = redone

    def shutdown(self) -> None:
        with self._guard:
            if self._pool is not None:
                self._pool.shutdown(wait=False, cancel_futures=True)
                self._pool = None


class _Overtime(BaseException):
    """Raised in a worker by SIGALRM when a parse takes too long. A BaseException, so that no
    `except Exception` in the parser (mail-parser's or ours) can swallow it."""


def _overtime(signum: int, frame: object) -> None:
    raise _Overtime


def _within(seconds: float, read: Callable[[], Inbound]) -> Inbound:
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        return read()
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)


def _parse_all(
    raws: list[bytes], parse: Parser, time_limit: float, html_chars: int, degraded: str
) -> list[Parsed]:
    """In a worker. A message that breaks the parser in an unforeseen way comes back as None:
    parsed again in the daemon, it fails there with its own traceback and takes the intake's way
    of failures (retry, then quarantine), and the rest of its task is not lost with it."""
    results: list[Parsed] = []
    for raw in raws:
        try:
            results.append(_parse_one(raw, parse, time_limit, html_chars, degraded))
        except ParseError as exc:
            results.append(exc)  # a verdict on the message, handed back as data
        except Exception:
            results.append(None)
    return results


def _parse_one(
    raw: bytes, parse: Parser, time_limit: float, html_chars: int, degraded: str
) -> Inbound | ParseError:
    """The message read whole within time_limit; else its text parts, else its headers, each
    within time_limit too; else a ParseError."""
    limit = f"{time_limit:g} s"
    reason = degraded
    if not reason:
        try:
            return _within(time_limit, lambda: parse(raw, html_chars=html_chars))
        except _Overtime:
            reason = f"parsing took longer than {limit}"
    for headers_only in (False, True):
        try:
            return _within(
                time_limit, functools.partial(parse_degraded, raw, reason, headers_only=headers_only)
            )
        except ParseError:
            raise
        except (_Overtime, Exception):  # after a parse this slow, never hand it back to the intake
            continue
    return ParseError(f"{reason}, and not even its headers could be read within {limit}")


def _start_worker(parent: int) -> None:
    signal.signal(signal.SIGALRM, _overtime)
    _follow_parent(parent)


def _follow_parent(parent: int) -> None:
    """A worker ends with the daemon, even one killed with SIGKILL: it would otherwise wait on
    its task queue for ever (and keep multiprocessing's resource tracker alive with it)."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(PARENT_CHECK_SECONDS)
        os._exit(0)

    threading.Thread(target=watch, name="follow-parent", daemon=True).start()
