"""Alembic environment: always driven from mailrouter.db with a connection handed over in
`config.attributes`, so the daemon, the tests and the `alembic` command line run the same code."""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection, create_engine
from sqlmodel import SQLModel

import mailrouter.models  # noqa: F401  (registers every table with SQLModel.metadata)
from mailrouter.errors import ConfigError

target_metadata = SQLModel.metadata


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        # SQLite alters tables by copying them ("batch" mode); PostgreSQL alters them in place.
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


connection = context.config.attributes.get("connection")
if connection is not None:
    _run(connection)
else:  # `alembic -x url=... upgrade head` from a shell
    url = context.get_x_argument(as_dictionary=True).get("url") or context.config.get_main_option(
        "sqlalchemy.url"
    )
    if url is None:
        raise ConfigError("alembic needs the database: -x url=... or sqlalchemy.url in alembic.ini")
    engine = create_engine(url)
    with engine.begin() as conn:
        _run(conn)
    engine.dispose()
