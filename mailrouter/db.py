"""Engine set-up (SQLite tuned for one writer process, PostgreSQL as it comes), schema upgrades, and
the database as the daemon and each command open it.

The schema is owned by the alembic migrations in mailrouter/migrations, shipped inside the package;
the daemon and every command upgrade the database to the newest revision before using it.
"""

from __future__ import annotations

import ast
import asyncio
import contextlib
import logging
import sqlite3
import threading
import weakref
from collections import deque
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, Engine, event, inspect, text
from sqlalchemy.engine import ExceptionContext
from sqlmodel import Session, create_engine, select

from mailrouter.errors import DatabaseUnavailable, SchemaMismatch
from mailrouter.models import CaseCounter

if TYPE_CHECKING:
    from alembic.config import Config as AlembicConfig

    from mailrouter.config import Config

log = logging.getLogger(__name__)

BUSY_TIMEOUT_SECONDS = 30
# The daemon's checkpoints: a second of the intake at full speed is a few hundred pages of log.
CHECKPOINT_INTERVAL = 1.0


class WriteTurns:
    """The SQLite write lock, taken in turn by the writers of one process.

    SQLite's own busy handler sleeps 1, 2, 5, 10 ms… between attempts; a writer that commits and
    begins again at once (the intake, message after message) takes the lock in the gap each time,
    and the other (the sender's `sending` mark, on the event loop) can wait for seconds. Here a
    writer waits for the one ahead of it to commit, then goes: first come, first served.
    """

    def __init__(self) -> None:
        self._mutex = threading.Lock()
        self._queue: deque[threading.Lock] = deque()
        self._taken = False
        self._reserved = threading.local()

    def take(self, timeout: float) -> bool:
        if getattr(self._reserved, "turn", False):
            self._reserved.turn = False
            return True
        with self._mutex:
            if not self._taken:
                self._taken = True
                return True
            turn = threading.Lock()
            turn.acquire()
            self._queue.append(turn)
        if turn.acquire(timeout=timeout):
            return True  # handed over by give()
        with self._mutex:
            if turn in self._queue:
                self._queue.remove(turn)
                return False
        return True  # handed over just as the wait ran out

    def give(self) -> None:
        with self._mutex:
            if self._queue:
                self._queue.popleft().release()  # straight to the next writer: still taken
            else:
                self._taken = False

    async def reserve(self) -> None:
        """Wait for a turn off the event loop; this thread's next transaction then begins at once.
        Pair with `forgo`, which gives the turn back if that transaction never began."""
        taking = asyncio.ensure_future(asyncio.to_thread(self.take, BUSY_TIMEOUT_SECONDS))
        try:
            taken = await asyncio.shield(taking)
        except asyncio.CancelledError:
            # The wait goes on in its thread; a turn it gets later is nobody's: give it back.
            taking.add_done_callback(self._give_unwanted)
            raise
        if not taken:
            raise _locked()
        self._reserved.turn = True

    def _give_unwanted(self, taking: asyncio.Future[bool]) -> None:
        if not taking.cancelled() and taking.exception() is None and taking.result():
            self.give()

    def forgo(self) -> None:
        if getattr(self._reserved, "turn", False):
            self._reserved.turn = False
            self.give()


_turns: weakref.WeakKeyDictionary[Engine, WriteTurns] = weakref.WeakKeyDictionary()


def write_turns(engine: Engine) -> WriteTurns | None:
    """The turns of this SQLite engine's writers; None for a database with row locks."""
    return _turns.get(engine)


def _locked() -> DatabaseUnavailable:
    return DatabaseUnavailable(
        f"database is locked: this process's other writer held it for {BUSY_TIMEOUT_SECONDS}s"
    )


# SQLite primary result codes that say the database, not the statement, is the trouble: busy,
# locked, out of memory, read-only, I/O error, corrupt, disk full, cannot open, protocol, not a
# database. SQLITE_ERROR ("too many SQL variables", a constraint) is the statement's.
_SQLITE_UNAVAILABLE = frozenset({5, 6, 7, 8, 10, 11, 13, 14, 15, 26})
# PostgreSQL SQLSTATEs (and classes) of the same meaning: connection exception, insufficient
# resources, operator intervention (shutdown, cannot connect now), system error, a serialization
# failure or deadlock (the same transaction succeeds when tried again), a read-only standby.
_POSTGRES_UNAVAILABLE_CLASSES = ("08", "53", "58")
_POSTGRES_UNAVAILABLE = frozenset({"57P01", "57P02", "57P03", "40001", "40P01", "25006"})


def unavailable(error: BaseException, *, disconnected: bool = False) -> str | None:
    """Why this driver error means the database is unavailable, or None when the statement (so
    the message) failed. By error code and connection state, never by Python class: SQLite says
    "too many SQL variables" with the same class as "database is locked"."""
    if disconnected:
        return f"connection lost: {error}"
    if isinstance(error, sqlite3.Error):
        code = getattr(error, "sqlite_errorcode", None)
        return str(error) if code is not None and code & 0xFF in _SQLITE_UNAVAILABLE else None
    sqlstate = getattr(error, "sqlstate", False)
    if sqlstate is None:  # psycopg: no answer from a server at all (refused, closed, timed out)
        return " ".join(str(error).split())  # libpq's hint on a line of its own: one line for logs
    if isinstance(sqlstate, str) and (
        sqlstate in _POSTGRES_UNAVAILABLE or sqlstate[:2] in _POSTGRES_UNAVAILABLE_CLASSES
    ):
        return f"{sqlstate}: {str(error).strip()}"
    return None


def _translate_errors(engine: Engine) -> None:
    """The one place a driver's error becomes ours. The driver's words only: SQLAlchemy's own
    message adds the statement and its parameters, which are customer data."""

    @event.listens_for(engine, "handle_error")
    def _translate(context: ExceptionContext) -> None:
        if context.is_pre_ping:
            return  # the pool's own liveness check: it reconnects by itself
        reason = unavailable(context.original_exception, disconnected=context.is_disconnect)
        if reason is not None:
            raise DatabaseUnavailable(reason) from context.original_exception


class _TurnTakingConnection(sqlite3.Connection):
    """A connection that holds the process's write turn from BEGIN to COMMIT or ROLLBACK."""

    turns: WriteTurns
    holding = False

    def take_turn(self) -> None:
        if not self.turns.take(BUSY_TIMEOUT_SECONDS):
            raise _locked()
        self.holding = True

    def give_turn(self) -> None:
        if self.holding:
            self.holding = False
            self.turns.give()

    def commit(self) -> None:
        try:
            super().commit()
        finally:
            self.give_turn()

    def rollback(self) -> None:
        try:
            super().rollback()
        finally:
            self.give_turn()

    def close(self) -> None:
        try:
            super().close()
        finally:
            self.give_turn()


CONNECT_TIMEOUT = 10.0
STATEMENT_TIMEOUT = 30.0


def _postgresql_bounds(connect_timeout: float, statement_timeout: float) -> dict[str, Any]:
    """libpq's connect_timeout (whole seconds, at least 2) and the session's statement_timeout."""
    return {
        "connect_timeout": max(2, round(connect_timeout)),
        "options": f"-c statement_timeout={round(statement_timeout * 1000)}",
    }


def make_engine(
    url: str,
    *,
    connect_timeout: float = CONNECT_TIMEOUT,
    statement_timeout: float = STATEMENT_TIMEOUT,
    checkpoints_apart: bool = False,
) -> Engine:
    """hide_parameters everywhere: a statement's parameters are customer mail, and SQLAlchemy
    would otherwise put them into every error message that reaches a log. `checkpoints_apart`
    (SQLite): commits never copy the write-ahead log into the database; whoever asks for it must
    call `checkpoint` regularly, as the daemon does."""
    if not url.startswith("sqlite"):
        engine = create_engine(
            url,
            pool_pre_ping=True,
            hide_parameters=True,
            connect_args=_postgresql_bounds(connect_timeout, statement_timeout),
        )
        _translate_errors(engine)
        return engine
    database = url.removeprefix("sqlite:///")
    if database and database != ":memory:":
        Path(database).parent.mkdir(parents=True, exist_ok=True)
    # One class per engine: its writers take turns with each other, not with another database's.
    turns = WriteTurns()
    connection_class = type("Connection", (_TurnTakingConnection,), {"turns": turns})
    engine = create_engine(
        url,
        hide_parameters=True,
        connect_args={
            "check_same_thread": False,
            "timeout": BUSY_TIMEOUT_SECONDS,
            "factory": connection_class,
        },
    )
    _turns[engine] = turns
    _translate_errors(engine)

    @event.listens_for(engine, "connect")
    def _tune(dbapi_connection: Any, _record: Any) -> None:
        # WAL + NORMAL: durable across process crashes, ~3x the commit rate of the default.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_SECONDS * 1000}")
        if checkpoints_apart:
            # The commit that passed 1000 pages of log ran the checkpoint and its fsyncs, and the
            # intake, whose commits come one after another, waited for them (bench/RESULTS.md).
            cursor.execute("PRAGMA wal_autocheckpoint=0")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _begin_immediate(connection: Any) -> None:
        # Take the write lock up front: a deferred transaction that reads, then writes, can fail
        # with SQLITE_BUSY at once instead of waiting for the other worker's commit.
        # On the driver's connection: SQLAlchemy's execution machinery cost more than the BEGIN.
        dbapi_connection = connection.connection.dbapi_connection
        dbapi_connection.take_turn()
        try:
            dbapi_connection.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:  # SQLITE_BUSY after busy_timeout: another process writes
            dbapi_connection.give_turn()
            raise DatabaseUnavailable(f"BEGIN IMMEDIATE: {exc}") from exc
        except BaseException:
            dbapi_connection.give_turn()
            raise

    return engine


# The revision that matches the schema mailrouter 0.1 made with create_all(), before alembic.
BASELINE_REVISION = "0001"
# Two instances starting at once on PostgreSQL must not both run the same migration.
_MIGRATION_LOCK_KEY = 0x6D61696C726F7574  # "mailrout"


def alembic_config(connection: Connection | None = None) -> AlembicConfig:
    # alembic and its templates' mako cost a fifth of a second to import: only where it migrates.
    from alembic.config import Config as AlembicConfig

    config = AlembicConfig()
    config.set_main_option("script_location", "mailrouter:migrations")
    config.attributes["connection"] = connection
    return config


def create_schema(engine: Engine) -> None:
    """Upgrade the database to the newest schema (creating it when empty)."""
    from alembic import command

    with engine.connect() as connection:
        postgres = connection.dialect.name == "postgresql"
        if postgres:
            connection.execute(text("SELECT pg_advisory_lock(:key)"), {"key": _MIGRATION_LOCK_KEY})
            connection.commit()
        try:
            tables = set(inspect(connection).get_table_names())
            config = alembic_config(connection)
            if "alembic_version" not in tables and "case" in tables:
                # made by create_all() before migrations existed: that schema is the baseline
                command.stamp(config, BASELINE_REVISION)
                tables.add("alembic_version")
            current = (
                connection.execute(text("SELECT version_num FROM alembic_version")).scalar()
                if "alembic_version" in tables
                else None
            )
            # Only when there is something to do: alembic's log lines on every `mailrouter cases`
            # would bury what the command prints.
            if current != schema_revisions()[0]:
                command.upgrade(config, "head")
            connection.commit()
        finally:
            if postgres:
                connection.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": _MIGRATION_LOCK_KEY})
                connection.commit()


_VERSIONS = Path(__file__).with_name("migrations") / "versions"


def schema_revisions() -> tuple[str, frozenset[str]]:
    """This version's head revision and every revision it knows, read from the migration
    scripts' `revision` and `down_revision` assignments: alembic's script machinery takes longer
    to import than the read-only commands take to run."""
    parents: dict[str, tuple[str, ...]] = {}
    for script in _VERSIONS.glob("*.py"):
        found: dict[str, Any] = {}
        for node in ast.parse(script.read_text(encoding="utf-8")).body:
            if isinstance(node, ast.Assign) and len(node.targets) == 1:
                target = node.targets[0]
                if isinstance(target, ast.Name) and target.id in ("revision", "down_revision"):
                    found[target.id] = ast.literal_eval(node.value)
        if "revision" in found:
            down = found.get("down_revision")
            parents[found["revision"]] = () if down is None else (down,) if isinstance(down, str) else down
    heads = set(parents) - {parent for ups in parents.values() for parent in ups}
    if len(heads) != 1:
        raise SchemaMismatch(f"the migrations have {len(heads)} heads ({', '.join(sorted(heads))}), not one")
    return heads.pop(), frozenset(parents)


def make_reader(
    url: str, *, connect_timeout: float = CONNECT_TIMEOUT, statement_timeout: float = STATEMENT_TIMEOUT
) -> Engine:
    """An engine that cannot write, for the commands that only read: SQLite opened read-only (and
    never created), PostgreSQL sessions read-only by default."""
    if url.startswith("sqlite"):
        database = url.removeprefix("sqlite:///")
        if not Path(database).is_file():
            raise DatabaseUnavailable(f"no database at {database}: `mailrouter migrate` creates it")
        engine = create_engine(
            f"sqlite:///file:{Path(database).resolve()}?mode=ro&uri=true",
            hide_parameters=True,
            connect_args={"timeout": BUSY_TIMEOUT_SECONDS},
        )
    else:
        bounds = _postgresql_bounds(connect_timeout, statement_timeout)
        bounds["options"] += " -c default_transaction_read_only=on"
        engine = create_engine(url, pool_pre_ping=True, hide_parameters=True, connect_args=bounds)
    _translate_errors(engine)
    return engine


def require_current_schema(engine: Engine) -> None:
    """Refuse a database whose schema is not this version's head, saying what to run."""
    with engine.connect() as connection:
        tables = set(inspect(connection).get_table_names())
        if "alembic_version" in tables:
            current = connection.execute(text("SELECT version_num FROM alembic_version")).scalar()
        else:  # made by create_all() before migrations existed, or empty
            current = BASELINE_REVISION if "case" in tables else None
    head, known = schema_revisions()
    if current == head:
        return
    if current is None:
        raise SchemaMismatch("the database has no mailrouter schema; run `mailrouter migrate`")
    if current not in known:
        raise SchemaMismatch(
            f"the database is at schema {current}, newer than this mailrouter (head {head}): "
            "upgrade mailrouter",
            newer=True,
        )
    raise SchemaMismatch(f"the database is at schema {current} (head {head}); run `mailrouter migrate`")


def ensure_counters(engine: Engine, prefixes: list[str], start: int) -> None:
    """Create each prefix's counter before any worker needs it, so workers only ever UPDATE it."""
    with Session(engine) as session:
        existing = set(session.exec(select(CaseCounter.prefix)).all())
        for prefix in prefixes:
            if prefix not in existing:
                session.add(CaseCounter(prefix=prefix, last_number=start - 1))
        session.commit()


def checkpoint(engine: Engine) -> None:
    """Copy the write-ahead log into the database file, as far as no reader still needs it
    (PASSIVE: neither writers nor readers wait); the log starts over once all of it is copied."""
    connection = engine.raw_connection()
    try:
        connection.driver_connection.execute("PRAGMA wal_checkpoint(PASSIVE)")  # type: ignore[union-attr]
    finally:
        connection.close()


async def keep_checkpointing(engine: Engine, stop: asyncio.Event) -> None:
    """Checkpoint every CHECKPOINT_INTERVAL in a thread of its own, for an engine made with
    `checkpoints_apart`, until `stop`; a checkpoint that fails is logged and tried again."""
    while not stop.is_set():
        try:
            await asyncio.to_thread(checkpoint, engine)
        except sqlite3.Error as exc:
            log.warning("checkpoint of the write-ahead log failed, tried again shortly: %s", exc)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), CHECKPOINT_INTERVAL)


def open_database(config: Config, *, upgrade: bool = True, checkpoints_apart: bool = False) -> Engine:
    """The database, upgraded to this version's schema; without `upgrade`, refused unless it is
    at that schema already (commands other than `run` and `migrate` never change a schema).
    `checkpoints_apart`: see make_engine."""
    if not upgrade:
        reader = open_reader(config)
        reader.dispose()
    bounds = config.file.database
    engine = make_engine(
        config.database_url,
        connect_timeout=bounds.connect_timeout,
        statement_timeout=bounds.statement_timeout,
        checkpoints_apart=checkpoints_apart,
    )
    if upgrade:
        create_schema(engine)
    ensure_counters(engine, [m.prefix for m in config.mailboxes.values()], config.daemon.case_number_start)
    return engine


def open_reader(config: Config) -> Engine:
    """The database for a command that only reads: never created, migrated or written."""
    bounds = config.file.database
    engine = make_reader(
        config.database_url,
        connect_timeout=bounds.connect_timeout,
        statement_timeout=bounds.statement_timeout,
    )
    try:
        require_current_schema(engine)
    except BaseException:
        engine.dispose()
        raise
    return engine


def sqlite_path(database_url: str) -> Path | None:
    """The database file of a SQLite URL; None for PostgreSQL or an in-memory database."""
    prefix = "sqlite:///"
    if not database_url.startswith(prefix) or database_url == prefix + ":memory:":
        return None
    return Path(database_url[len(prefix) :])
