"""The alembic migrations build exactly the schema the models describe, on SQLite and PostgreSQL.

A model change without a migration makes autogenerate find a difference, and this test fail.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect, text
from sqlmodel import SQLModel

from mailrouter.db import alembic_config, create_schema, make_engine, schema_revisions
from tests.postgres import temporary_database

HEAD = ScriptDirectory.from_config(alembic_config()).get_current_head()


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request, tmp_path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/migrations.db"
    else:
        with temporary_database() as url:
            yield url


def test_migrations_match_the_models(database_url):
    engine = make_engine(database_url)
    create_schema(engine)
    with engine.connect() as connection:
        differences = compare_metadata(
            MigrationContext.configure(connection, opts={"compare_type": True}), SQLModel.metadata
        )
        version = connection.execute(text("SELECT version_num FROM alembic_version")).scalar_one()
    engine.dispose()
    assert differences == []
    assert version == HEAD


def test_the_revisions_read_from_the_scripts_are_alembics():
    script = ScriptDirectory.from_config(alembic_config())
    assert schema_revisions() == (HEAD, frozenset(r.revision for r in script.walk_revisions()))


def test_upgrade_is_idempotent_and_downgrade_works(database_url):
    engine = make_engine(database_url)
    create_schema(engine)
    create_schema(engine)  # a second start finds nothing to do
    with engine.connect() as connection:
        command.downgrade(alembic_config(connection), "base")
        connection.commit()
        assert set(inspect(connection).get_table_names()) <= {"alembic_version"}
    create_schema(engine)
    with engine.connect() as connection:
        assert "outboxmessage" in inspect(connection).get_table_names()
    engine.dispose()


def test_a_database_made_before_migrations_is_adopted(tmp_path):
    """mailrouter 0.1 used create_all(): such a database is stamped as 0001, then upgraded."""
    url = f"sqlite:///{tmp_path}/old.db"
    engine = make_engine(url)
    with engine.connect() as connection:
        command.upgrade(alembic_config(connection), "0001")
        connection.execute(text("DROP TABLE alembic_version"))
        connection.commit()
    create_schema(engine)
    with engine.connect() as connection:
        columns = {c["name"] for c in inspect(connection).get_columns("outboxmessage")}
        version = connection.execute(text("SELECT version_num FROM alembic_version")).scalar_one()
    engine.dispose()
    assert {"claimed_by", "claimed_until"} <= columns and version == HEAD


def test_migrate_command_upgrades_and_prints_the_revision(config_file, capsys):
    from mailrouter.cli import main

    assert main(["--config", str(config_file), "migrate"]) == 0
    assert f"schema at revision {HEAD}" in capsys.readouterr().out


def test_0009_moves_an_attached_original_out_of_the_letter_and_back_byte_for_byte(database_url):
    from sqlmodel import Session, select

    from mailrouter.compose import compose
    from mailrouter.models import Case, Message, OutboxMessage, RawMessage
    from mailrouter.store import without_original
    from mailrouter.templates import Rendered
    from mailrouter.vocabulary import AuthorRole, Direction, OutboxKind
    from tests.messages import make_mail

    raw = make_mail(body="Kari's mail, attached to the notification")
    outgoing = compose(
        case_number="IT-1001",
        from_address="it-support@example.test",
        from_name="IT",
        to=("agent1@example.test",),
        subject="New case",
        body=Rendered("A new case\n", None),
        attach_original=raw,
    )
    assert outgoing.original_at is not None
    engine = make_engine(database_url)
    create_schema(engine)
    with Session(engine) as session:
        case = Case(number="IT-1001", department="it", subject="Printer")
        session.add(case)
        session.add(RawMessage(sha256="a" * 64, size=len(raw), data=raw))
        session.flush()
        session.add(
            Message(
                case_id=case.id,
                direction=Direction.IN,
                author_role=AuthorRole.CUSTOMER,
                mailbox="it",
                message_id="<m1@k>",
                raw_sha256="a" * 64,
            )
        )
        session.add(
            OutboxMessage(
                case_id=case.id,
                kind=OutboxKind.NOTIFICATION,
                mail_from=outgoing.mail_from,
                rcpt_to=list(outgoing.rcpt_to),
                message_id=outgoing.message_id,
                data=without_original(outgoing.data, outgoing.original_at, raw),
                original_sha256="a" * 64,
                original_at=outgoing.original_at,
            )
        )
        session.commit()

    def letter() -> tuple[bytes, str | None, int | None]:
        with engine.connect() as connection:
            columns = {c["name"] for c in inspect(connection).get_columns("outboxmessage")}
            if "original_at" not in columns:
                return connection.execute(text("SELECT data FROM outboxmessage")).scalar_one(), None, None
            row = connection.execute(
                text("SELECT data, original_sha256, original_at FROM outboxmessage")
            ).one()
            return row.data, row.original_sha256, row.original_at

    with engine.connect() as connection:
        command.downgrade(alembic_config(connection), "0008")
        connection.commit()
    assert letter() == (outgoing.data, None, None)  # the whole letter again, as composed
    create_schema(engine)
    data, sha, at = letter()
    assert (sha, at) == ("a" * 64, outgoing.original_at) and len(data) < len(outgoing.data)
    assert data == without_original(outgoing.data, outgoing.original_at, raw)
    with Session(engine) as session:
        assert session.exec(select(OutboxMessage)).one().original_sha256 == "a" * 64
    engine.dispose()


def test_0015_gives_earlier_acknowledgements_the_domain_their_budget_counts(database_url):
    from datetime import timedelta

    from sqlalchemy import insert, select
    from sqlmodel import Session

    from mailrouter.models import CASE, CUSTOMER, OUTBOX, utcnow
    from mailrouter.store import SqlFacts
    from mailrouter.vocabulary import OutboxKind

    engine = make_engine(database_url)
    create_schema(engine)
    with engine.begin() as connection:
        customer = connection.execute(
            insert(CUSTOMER)
            .values(address="kari@kunde.example", organisation="kunde.example")
            .returning(CUSTOMER.c.id)
        ).scalar_one()
        case = connection.execute(
            insert(CASE)
            .values(number="IT-1001", department="it", subject="Printer", customer_id=customer, tags=[])
            .returning(CASE.c.id)
        ).scalar_one()
        for kind in (OutboxKind.ACKNOWLEDGEMENT, OutboxKind.NOTIFICATION):
            connection.execute(
                insert(OUTBOX).values(
                    case_id=case,
                    kind=kind,
                    mail_from="it@desk.example",
                    rcpt_to=[],
                    message_id=f"<{kind}>",
                    data=b"",
                )
            )
    with engine.connect() as connection:
        command.downgrade(alembic_config(connection), "0014")
        connection.commit()
    create_schema(engine)
    with engine.connect() as connection:
        domains = {
            kind: domain for kind, domain in connection.execute(select(OUTBOX.c.kind, OUTBOX.c.domain))
        }
    with Session(engine) as session:
        counted = SqlFacts(session).acknowledgements_to_domain(
            "kunde.example", utcnow() - timedelta(hours=1), 10
        )
    engine.dispose()
    assert domains == {OutboxKind.ACKNOWLEDGEMENT: "kunde.example", OutboxKind.NOTIFICATION: None}
    assert counted == 1
