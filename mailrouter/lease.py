"""Who may fetch a mailbox, and who may run at all.

- PostgreSQL (several instances): a mailbox belongs to the instance holding a session-level
  advisory lock on a dedicated database connection. An instance that dies loses its connection
  and with it the lock, so another instance takes the mailbox over. A worker checks its
  connection every `lock_check_interval` seconds and stops fetching the moment it is gone.
- SQLite (one process): `InstanceLock` takes an exclusive flock on a file beside the database
  in `mailrouter run`, so a second daemon on the same database refuses to start.

The database's unique constraints remain the last word: even two workers that both believed
they owned a mailbox could not register a message twice (see intake.Intake.process).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import logging
import os
from pathlib import Path

from sqlalchemy import Connection, Engine, create_engine, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.pool import NullPool

from mailrouter.errors import AlreadyRunning, LockLost

log = logging.getLogger(__name__)


def lock_key(name: str, kind: str = "mailbox") -> int:
    """A stable signed 64-bit advisory-lock key for a mailbox (or another kind of thing) name."""
    digest = hashlib.sha256(f"mailrouter-{kind}:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


class MailboxLock:
    """Ownership of one mailbox among instances; always granted on SQLite (one process)."""

    def __init__(self, engine: Engine, mailbox: str, check_interval: float) -> None:
        self.mailbox = mailbox
        self.check_interval = check_interval
        self.shared = engine.dialect.name == "postgresql"
        # Its own engine without a pool: closing the connection must end the session (and the lock).
        self._engine = create_engine(engine.url, poolclass=NullPool) if self.shared else None
        self._connection: Connection | None = None
        self.held = False

    async def acquire(self, stop: asyncio.Event) -> bool:
        """Wait until this instance owns the mailbox; False when asked to stop first."""
        if not self.shared:
            self.held = True
            return True
        announced = False
        while not stop.is_set():
            try:
                if await asyncio.to_thread(self._try):
                    log.info("mailbox=%s this instance holds the mailbox lock", self.mailbox)
                    self.held = True
                    return True
                if not announced:
                    log.info("mailbox=%s is owned by another instance; standing by", self.mailbox)
                    announced = True
            except DBAPIError as exc:
                log.warning("mailbox=%s cannot reach the database for its lock: %s", self.mailbox, exc.orig)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=self.check_interval)
        return False

    def _try(self) -> bool:
        assert self._engine is not None
        connection = self._engine.connect()
        try:
            got = connection.execute(
                text("SELECT pg_try_advisory_lock(:key)"), {"key": lock_key(self.mailbox)}
            ).scalar_one()
            connection.commit()
        except BaseException:
            connection.close()
            raise
        if not got:
            connection.close()
            return False
        self._connection = connection
        return True

    async def watch(self) -> None:
        """Return never; raise LockLost once the lock's connection has gone."""
        if not self.shared:
            await asyncio.Event().wait()
        while True:
            await asyncio.sleep(self.check_interval)
            try:
                await asyncio.to_thread(self._check)
            except DBAPIError as exc:
                self.held = False
                raise LockLost(
                    f"the connection holding the lock of mailbox {self.mailbox} broke: {exc.orig}"
                ) from exc

    def _check(self) -> None:
        assert self._connection is not None
        self._connection.execute(text("SELECT 1")).scalar_one()
        self._connection.commit()

    def release(self) -> None:
        self.held = False
        if self._connection is not None:
            with contextlib.suppress(DBAPIError):
                self._connection.close()  # ends the session, which releases the advisory lock
            self._connection = None

    def dispose(self) -> None:
        self.release()
        if self._engine is not None:
            self._engine.dispose()


class InstanceLock:
    """An exclusive flock on `<database>.lock`, held for the life of the process."""

    def __init__(self, database_path: Path) -> None:
        self.path = database_path.with_name(database_path.name + ".lock")
        self._fd: int | None = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 64).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise AlreadyRunning(
                f"another mailrouter (pid {holder}) is running on this SQLite database "
                f"(lock {self.path}); SQLite allows one instance: stop it, or use PostgreSQL "
                "to run several"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
