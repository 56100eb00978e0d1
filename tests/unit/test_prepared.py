"""A prepared statement stores and returns what the same statement through SQLAlchemy does, and
fails the way SQLAlchemy's does: on SQLite (the driver's cursor) and PostgreSQL (SQLAlchemy)."""

from datetime import UTC, datetime

import pytest
from sqlalchemy import bindparam, insert, select, text, update
from sqlalchemy.exc import IntegrityError

from mailrouter.errors import DatabaseUnavailable
from mailrouter.models import CASE, MESSAGE, OUTBOX
from mailrouter.prepared import Prepared
from mailrouter.vocabulary import AuthorRole, Direction, OutboxKind

AT = datetime(2026, 12, 4, 9, 30, 15, 123456, tzinfo=UTC)
MESSAGE_ROW = {
    "case_id": None,
    "direction": Direction.IN,
    "author_role": AuthorRole.CUSTOMER,
    "mailbox": "it",
    "uidvalidity": None,
    "uid": None,
    "message_id": "<m1@kunde.example>",
    "references": ["<a@x>", "<b@x>"],
    "from_addr": "kari@kunde.example",
    "to_addrs": ["it@example.test"],
    "cc_addrs": [],
    "subject": "Skrivaren – åäö",
    "text": "hei\r\n",
    "received_at": AT,
}


def stored(engine, table, key, value):
    """A row as the database holds it, read past SQLAlchemy's types (id aside)."""
    with engine.connect() as connection:
        quoted = connection.dialect.identifier_preparer.quote(table.name)
        row = connection.execute(text(f"SELECT * FROM {quoted} WHERE {key} = :v"), {"v": value}).one()
    return {k: v for k, v in row._mapping.items() if k != "id"}


def test_a_prepared_insert_stores_what_sqlalchemys_insert_stores(engine):
    prepared = Prepared(insert(MESSAGE).returning(MESSAGE.c.id))
    with engine.begin() as connection:
        ours = prepared.scalar(connection, {**MESSAGE_ROW, "dedupe_key": "ours"})
        theirs = connection.execute(
            insert(MESSAGE).returning(MESSAGE.c.id), {**MESSAGE_ROW, "dedupe_key": "theirs"}
        )
        theirs_id = theirs.scalar_one()
    assert isinstance(ours, int) and ours != theirs_id
    ours_row = stored(engine, MESSAGE, "dedupe_key", "ours")
    theirs_row = stored(engine, MESSAGE, "dedupe_key", "theirs")
    assert {**ours_row, "dedupe_key": "theirs"} == theirs_row
    assert ours_row["in_reply_to"] == "" and ours_row["html"] == ""  # the columns' scalar defaults


def test_a_default_called_for_each_row_is_stored_as_sqlalchemy_stores_it(engine):
    """The outbox row's state, attempts, next attempt and creation time come from its defaults."""
    row = {
        "case_id": None,
        "kind": OutboxKind.ALERT,
        "mail_from": "desk@example.test",
        "rcpt_to": ["ops@example.test"],
        "message_id": "<ours@x>",
        "data": b"Subject: x\r\n\r\nbody\r\n",
    }
    before = datetime.now(UTC)
    with engine.begin() as connection:
        Prepared(insert(OUTBOX)).rowcount(connection, row)
        connection.execute(insert(OUTBOX), {**row, "message_id": "<theirs@x>"})
    ours = stored(engine, OUTBOX, "message_id", "<ours@x>")
    theirs = stored(engine, OUTBOX, "message_id", "<theirs@x>")
    times = ("next_attempt_at", "created_at")
    assert {k: v for k, v in ours.items() if k not in (*times, "message_id")} == {
        k: v for k, v in theirs.items() if k not in (*times, "message_id")
    }
    assert ours["state"] == "queued" and ours["attempts"] == 0
    assert all(type(ours[k]) is type(theirs[k]) for k in times)
    with engine.connect() as connection:
        read = connection.execute(
            select(OUTBOX.c.created_at).where(OUTBOX.c.message_id == "<ours@x>")
        ).scalar()
    assert read >= before.replace(microsecond=0)


def test_a_prepared_select_returns_values_of_the_columns_types(engine):
    with engine.begin() as connection:
        connection.execute(insert(MESSAGE), {**MESSAGE_ROW, "dedupe_key": "k"})
        prepared = Prepared(
            select(MESSAGE.c.references, MESSAGE.c.direction, MESSAGE.c.received_at, MESSAGE.c.uid).where(
                MESSAGE.c.dedupe_key == bindparam("key")
            )
        )
        row = prepared.first(connection, {"key": "k"})
        assert row == (["<a@x>", "<b@x>"], Direction.IN, AT, None)
        assert isinstance(row[1], Direction)
        assert prepared.first(connection, {"key": "none such"}) is None


def test_an_update_counts_the_rows_it_changed_with_the_columns_given_each_time(engine):
    with engine.begin() as connection:
        connection.execute(insert(MESSAGE), {**MESSAGE_ROW, "dedupe_key": "k"})
        prepared = Prepared(update(MESSAGE).where(MESSAGE.c.dedupe_key == bindparam("where_key")))
        assert prepared.rowcount(connection, {"subject": "new", "where_key": "k"}) == 1
        assert prepared.rowcount(connection, {"to_addrs": ["a@x"], "uid": 9, "where_key": "k"}) == 1
        assert prepared.rowcount(connection, {"subject": "x", "where_key": "none such"}) == 0
    row = stored(engine, MESSAGE, "dedupe_key", "k")
    assert row["subject"] == "new" and row["uid"] == 9


def test_a_broken_constraint_is_sqlalchemys_integrity_error(engine):
    """What the intake catches when another instance registered the same message first."""
    prepared = Prepared(insert(MESSAGE))
    with pytest.raises(IntegrityError), engine.begin() as connection:
        prepared.many(
            connection, [{**MESSAGE_ROW, "dedupe_key": "same"}, {**MESSAGE_ROW, "dedupe_key": "same"}]
        )
    with engine.connect() as connection:
        assert connection.execute(select(MESSAGE.c.id)).all() == []


def test_a_database_that_cannot_take_the_write_is_unavailable(tmp_path):
    from mailrouter.db import create_schema, make_engine

    engine = make_engine(f"sqlite:///{tmp_path}/readonly.db")
    create_schema(engine)
    with pytest.raises(DatabaseUnavailable), engine.begin() as connection:
        connection.exec_driver_sql("PRAGMA query_only = 1")
        Prepared(insert(CASE).returning(CASE.c.id)).scalar(
            connection, {"number": "IT-1", "department": "it", "subject": "s"}
        )
    engine.dispose()
