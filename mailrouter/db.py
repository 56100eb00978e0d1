"""Engine set-up (SQLite tuned for one writer process, PostgreSQL as it comes) and schema upgrades.

The schema is owned by the alembic migrations in mailrouter/migrations, shipped inside the package;
the daemon and every command upgrade the database to the newest revision before using it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config as AlembicConfig
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, event, inspect, text, update
from sqlmodel import Session, create_engine, select

from mailrouter.models import CaseCounter


def make_engine(url: str) -> Engine:
    if not url.startswith("sqlite"):
        return create_engine(url, pool_pre_ping=True)
    database = url.removeprefix("sqlite:///")
    if database and database != ":memory:":
        Path(database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

    @event.listens_for(engine, "connect")
    def _tune(dbapi_connection: Any, _record: Any) -> None:
        # WAL + NORMAL: durable across process crashes, ~3x the commit rate of the default.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _begin_immediate(connection: Any) -> None:
        # Take the write lock up front: a deferred transaction that reads, then writes, can fail
        # with SQLITE_BUSY at once instead of waiting for the other worker's commit.
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


# The revision that matches the schema mailrouter 0.1 made with create_all(), before alembic.
BASELINE_REVISION = "0001"
# Two instances starting at once on PostgreSQL must not both run the same migration.
_MIGRATION_LOCK_KEY = 0x6D61696C726F7574  # "mailrout"


def alembic_config(connection: Connection | None = None) -> AlembicConfig:
    config = AlembicConfig()
    config.set_main_option("script_location", "mailrouter:migrations")
    config.attributes["connection"] = connection
    return config


def create_schema(engine: Engine) -> None:
    """Upgrade the database to the newest schema (creating it when empty)."""
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
            if current != ScriptDirectory.from_config(config).get_current_head():
                command.upgrade(config, "head")
            connection.commit()
        finally:
            if postgres:
                connection.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": _MIGRATION_LOCK_KEY})
                connection.commit()


def ensure_counters(engine: Engine, prefixes: list[str], start: int) -> None:
    """Create each prefix's counter before any worker needs it, so workers only ever UPDATE it."""
    with Session(engine) as session:
        existing = set(session.exec(select(CaseCounter.prefix)).all())
        for prefix in prefixes:
            if prefix not in existing:
                session.add(CaseCounter(prefix=prefix, last_number=start - 1))
        session.commit()


def next_case_number(session: Session, prefix: str) -> str:
    """The next number for the prefix, unique and never reused: it rolls back with its case."""
    counter = CaseCounter.__table__  # type: ignore[attr-defined]
    statement = (  # Core, not the ORM's bulk UPDATE: that evaluates the WHERE against the session
        update(counter)
        .where(counter.c.prefix == prefix)
        .values(last_number=counter.c.last_number + 1)
        .returning(counter.c.last_number)
    )
    number = session.execute(statement).scalar_one()
    return f"{prefix}-{number}"
