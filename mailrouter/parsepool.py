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
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from multiprocessing import get_context

from mailrouter.errors import ParseError
from mailrouter.parse import Inbound, parse

log = logging.getLogger(__name__)

PARENT_CHECK_SECONDS = 1.0
# Bigger mail is parsed in process: the copies that carry it to a worker and back cost more
# memory than parse() itself needs for big mail (it cuts attachment bodies out first).
LARGEST_SENT_TO_WORKER = 1024 * 1024


class ParsePool:
    """A pool that broke (a worker died) is replaced; meanwhile the intake parses in process."""

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self._pool: ProcessPoolExecutor | None = None
        self._guard = threading.Lock()
        # Which pool each parse went to: a pool's death reaches every mailbox's parses, and a late
        # report of it must not drop the replacement another mailbox has started meanwhile.
        self._pool_of: weakref.WeakKeyDictionary[Future[Inbound], ProcessPoolExecutor] = (
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

    def submit(self, raw: bytes) -> Future[Inbound] | None:
        """The parse of raw under way, or None: then the intake parses it itself."""
        if self.workers == 0 or len(raw) > LARGEST_SENT_TO_WORKER:
            return None
        with self._guard:
            if self._pool is None:
                self._pool = self._new_pool()
            try:
                future = self._pool.submit(parse, raw)
            except BrokenProcessPool:
                self._pool = None
                return None
            self._pool_of[future] = self._pool
            return future

    def result(self, future: Future[Inbound] | None) -> Inbound | ParseError | None:
        if future is None:
            return None
        try:
            return future.result()
        except ParseError as exc:
            return exc
        except BrokenProcessPool as exc:
            log.warning("parser process died (%s); parsing in process until a new one starts", exc)
            with self._guard:
                if self._pool_of.get(future) is self._pool:
                    self._pool = None
            return None

    def shutdown(self) -> None:
        with self._guard:
            if self._pool is not None:
                self._pool.shutdown(wait=False, cancel_futures=True)
                self._pool = None


def _follow_parent(parent: int) -> None:
    """A worker ends with the daemon, even one killed with SIGKILL: it would otherwise wait on
    its task queue for ever (and keep multiprocessing's resource tracker alive with it)."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(PARENT_CHECK_SECONDS)
        os._exit(0)

    threading.Thread(target=watch, name="follow-parent", daemon=True).start()
