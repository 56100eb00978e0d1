"""Worker processes that parse fetched mail while the intake registers the mail before it.

Parsing is pure CPU; in the daemon's own process it takes turns with the intake and the sender
for the GIL (bench/RESULTS.md has the numbers). The workers only ever run parse().
"""

from __future__ import annotations

import logging
import os
import threading
import time
import weakref
from collections.abc import Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from multiprocessing import get_context

from mailrouter.errors import ParseError
from mailrouter.parse import Inbound, parse

log = logging.getLogger(__name__)

PARENT_CHECK_SECONDS = 1.0
# Bigger mail is parsed in process: the copies that carry it to a worker and back cost more
# memory than parse() itself needs for big mail (it cuts attachment bodies out first).
LARGEST_SENT_TO_WORKER = 1024 * 1024
# Messages per task: each task's round trip to a worker cost the daemon 0.29 ms of CPU, a
# message's share in a task of eight 0.11 ms (bench/RESULTS.md); the first registration of a
# batch waits for its first task, some 15 ms.
CHUNK = 8

Parsed = Inbound | ParseError | None  # None: the worker could not; the intake parses it itself


@dataclass(frozen=True)
class Parsing:
    """One message's place in a task under way."""

    task: Future[list[Parsed]]
    index: int


class ParsePool:
    """A pool that broke (a worker died) is replaced; meanwhile the intake parses in process."""

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self._pool: ProcessPoolExecutor | None = None
        self._guard = threading.Lock()
        # Which pool each parse went to: a pool's death reaches every mailbox's parses, and a late
        # report of it must not drop the replacement another mailbox has started meanwhile.
        self._pool_of: weakref.WeakKeyDictionary[Future[list[Parsed]], ProcessPoolExecutor] = (
            weakref.WeakKeyDictionary()
        )

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
            self.workers, mp_context=get_context("spawn"), initializer=_follow_parent, initargs=(os.getpid(),)
        )

    def submit(self, raws: Sequence[bytes | None]) -> list[Parsing | None]:
        """The parses of a batch under way, CHUNK messages to a task, in order; None for each
        message the intake parses itself (raw None, or too big to send, or no workers)."""
        parsings: list[Parsing | None] = [None] * len(raws)
        if self.workers == 0:
            return parsings
        sent = [i for i, raw in enumerate(raws) if raw is not None and len(raw) <= LARGEST_SENT_TO_WORKER]
        with self._guard:
            for start in range(0, len(sent), CHUNK):
                chunk = sent[start : start + CHUNK]
                if self._pool is None:
                    self._pool = self._new_pool()
                try:
                    task = self._pool.submit(_parse_all, [raws[i] for i in chunk])
                except BrokenProcessPool:
                    self._pool = None
                    break
                self._pool_of[task] = self._pool
                for index, position in enumerate(chunk):
                    parsings[position] = Parsing(task, index)
        return parsings

    def result(self, parsing: Parsing | None) -> Parsed:
        if parsing is None:
            return None
        try:
            return parsing.task.result()[parsing.index]
        except BrokenProcessPool as exc:
            log.warning("parser process died (%s); parsing in process until a new one starts", exc)
            with self._guard:
                if self._pool_of.get(parsing.task) is self._pool:
                    self._pool = None
            return None

    def shutdown(self) -> None:
        with self._guard:
            if self._pool is not None:
                self._pool.shutdown(wait=False, cancel_futures=True)
                self._pool = None


def _parse_all(raws: list[bytes]) -> list[Parsed]:
    """In a worker. A message that breaks the parser in an unforeseen way comes back as None:
    parsed again in the daemon, it fails there with its own traceback and takes the intake's way
    of failures (retry, then quarantine), and the rest of its task is not lost with it."""
    results: list[Parsed] = []
    for raw in raws:
        try:
            results.append(parse(raw))
        except ParseError as exc:
            results.append(exc)  # a verdict on the message, handed back as data
        except Exception:
            results.append(None)
    return results


def _follow_parent(parent: int) -> None:
    """A worker ends with the daemon, even one killed with SIGKILL: it would otherwise wait on
    its task queue for ever (and keep multiprocessing's resource tracker alive with it)."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(PARENT_CHECK_SECONDS)
        os._exit(0)

    threading.Thread(target=watch, name="follow-parent", daemon=True).start()
