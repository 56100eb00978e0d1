"""No database call waits without a bound: PostgreSQL's connect and statement timeouts, the
sender's `sending` mark, and errors that never carry a statement's parameters."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import pytest
from psycopg.errors import QueryCanceled
from sqlalchemy import text
from sqlalchemy.exc import OperationalError, SQLAlchemyError
from sqlmodel import Session

from mailrouter import outbox
from mailrouter.db import create_schema, make_engine
from mailrouter.errors import DatabaseUnavailable
from mailrouter.models import OutboxMessage
from mailrouter.vocabulary import OutboxKind
from tests.postgres import temporary_database


@pytest.fixture
def postgres() -> Iterator[str]:
    with temporary_database() as url:
        yield url


def test_a_statement_is_cancelled_by_the_statement_timeout(postgres):
    """Without the bound the sleep would end by itself, twenty times the timeout later, and raise
    nothing: only the server's cancel, for the statement timeout, raises."""
    engine = make_engine(postgres, statement_timeout=0.5)
    with engine.connect() as connection:
        assert connection.execute(text("SHOW statement_timeout")).scalar() == "500ms"
    with pytest.raises(OperationalError, match="statement timeout") as raised, engine.connect() as connection:
        connection.execute(text("SELECT pg_sleep(10)"))
    assert isinstance(raised.value.orig, QueryCanceled)
    engine.dispose()


def test_the_configured_bounds_reach_the_server(postgres, config_file):
    from mailrouter.config import load_config
    from mailrouter.db import open_database

    lines = [
        f'database_url = "{postgres}"' if line.startswith("database_url") else line
        for line in config_file.read_text().splitlines()
    ]
    config_file.write_text("\n".join(lines) + "\n[database]\nstatement_timeout = 1.5\nconnect_timeout = 3\n")
    engine = open_database(load_config(config_file))
    with engine.connect() as connection:
        assert connection.execute(text("SHOW statement_timeout")).scalar() == "1500ms"
    engine.dispose()


def test_a_server_that_never_answers_is_unavailable_after_the_connect_timeout():
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen()  # the kernel accepts the connection; nobody ever says a word
    port = silent.getsockname()[1]
    engine = make_engine(f"postgresql+psycopg://postgres@127.0.0.1:{port}/x", connect_timeout=2)
    outcome: list[BaseException] = []

    def connect() -> None:
        try:
            engine.connect().close()
        except BaseException as exc:
            outcome.append(exc)

    attempt = threading.Thread(target=connect, daemon=True)  # unbounded, it would hang the test
    attempt.start()
    attempt.join(8)
    silent.close()
    assert not attempt.is_alive(), "connecting waited without a bound"
    assert isinstance(outcome[0], DatabaseUnavailable)
    engine.dispose()


def test_the_sending_mark_gives_up_on_a_locked_row_by_a_statement_timeout_of_its_own(postgres):
    """The session's own statement timeout is an hour here and the lock is held until the mark
    has given up (or for a minute at most): only the mark's own bound can cancel its wait."""
    engine = make_engine(postgres, statement_timeout=3600)
    create_schema(engine)
    with Session(engine) as session:
        row = OutboxMessage(
            kind=OutboxKind.ACKNOWLEDGEMENT,
            mail_from="it@example.test",
            rcpt_to=["a@b.example"],
            message_id="<x@y>",
            data=b"mail",
        )
        row.claimed_by = "me"
        session.add(row)
        session.commit()
        row_id = row.id
    assert row_id is not None
    locked, release = threading.Event(), threading.Event()

    def hold_the_row() -> None:
        with engine.begin() as connection:
            connection.execute(text("SELECT id FROM outboxmessage WHERE id = :id FOR UPDATE"), {"id": row_id})
            locked.set()
            release.wait(60)

    holder = threading.Thread(target=hold_the_row)
    holder.start()
    assert locked.wait(10)
    try:
        with pytest.raises(OperationalError, match="statement timeout") as raised:
            outbox.mark_sending(engine, row_id, "me", 60)
        assert isinstance(raised.value.orig, QueryCanceled)
        assert holder.is_alive()  # given up while the row was still locked
    finally:
        release.set()
        holder.join()
    assert outbox.mark_sending(engine, row_id, "me", 60)  # unlocked, it goes through
    engine.dispose()


def test_database_errors_never_carry_the_statements_parameters(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path}/db.sqlite")
    with pytest.raises(SQLAlchemyError) as raised, engine.connect() as connection:
        connection.execute(text("INSERT INTO nowhere VALUES (:body)"), {"body": "the customer's secret"})
    assert "the customer's secret" not in str(raised.value)
    engine.dispose()
