"""`mailrouter deliver`: one message from an MTA's pipe through the same intake, with sysexits."""

from __future__ import annotations

import io
import os
import sys

import pytest
from sqlmodel import Session, select

from mailrouter import store
from mailrouter.cli import main
from mailrouter.models import Case, Event, MailboxState, Message, OutboxMessage
from mailrouter.plan import Origin
from tests.messages import make_mail


def deliver(monkeypatch, capsys, config_file, raw: bytes, *args: str) -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(raw)))
    code = main(["--config", str(config_file), "deliver", *args])
    out, err = capsys.readouterr()
    return code, out, err


def rows(intake, table, *where):
    with Session(intake.engine) as session:
        return list(session.exec(select(table).where(*where)).all())


def test_delivered_mail_opens_a_case_with_its_acknowledgement_and_leaves_the_checkpoint(
    intake, config_file, monkeypatch, capsys
):
    intake.process(make_mail(message_id="<imap@kunde.example>"), Origin("it", 7, 41))
    code, out, _ = deliver(monkeypatch, capsys, config_file, make_mail(), "--mailbox", "it")
    assert code == os.EX_OK
    assert out.startswith("new-case IT-1002")
    [message] = rows(intake, Message, Message.message_id == "<m1@kunde.example>")
    assert message.uidvalidity == 0 and message.mailbox == "it"
    [case] = rows(intake, Case, Case.number == "IT-1002")
    assert [o.kind for o in rows(intake, OutboxMessage, OutboxMessage.case_id == case.id)].count(
        "acknowledgement"
    ) == 1
    assert {e.kind for e in rows(intake, Event, Event.case_id == case.id)} >= {"case-created", "routed"}
    [state] = rows(intake, MailboxState)
    assert (state.uidvalidity, state.last_uid) == (7, 41)  # the IMAP position is untouched


def test_the_same_message_delivered_twice_is_one_case(intake, config_file, monkeypatch, capsys):
    assert deliver(monkeypatch, capsys, config_file, make_mail(), "--mailbox", "it")[0] == 0
    code, out, _ = deliver(monkeypatch, capsys, config_file, make_mail(), "--mailbox", "it")
    assert code == os.EX_OK and out.startswith("duplicate")
    assert len(rows(intake, Case)) == 1


def test_deliveries_get_distinct_uids(intake):
    assert [store.next_delivery_uid(intake.engine, "it") for _ in range(3)] == [1, 2, 3]
    assert store.next_delivery_uid(intake.engine, "hr") == 1


@pytest.mark.parametrize(
    ("raw", "outcome"),
    [
        (make_mail(headers={"Auto-Submitted": "auto-replied"}), "screened"),
        (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1\0\0", "refused"),
    ],
)
def test_screened_and_refused_mail_is_kept_and_exits_0(
    intake, config_file, monkeypatch, capsys, raw, outcome
):
    code, out, _ = deliver(monkeypatch, capsys, config_file, raw, "--mailbox", "it")
    assert code == os.EX_OK and out.startswith(outcome)


def test_mail_that_fails_to_process_is_quarantined_not_bounced(intake, config_file, monkeypatch, capsys):
    def broken(*args, **kwargs):
        raise RuntimeError("template exploded")

    monkeypatch.setattr("mailrouter.notices.compose", broken)
    code, out, _ = deliver(monkeypatch, capsys, config_file, make_mail(), "--mailbox", "it")
    assert code == os.EX_OK and out.startswith("quarantined")
    [event] = rows(intake, Event, Event.kind == "quarantined")
    assert "template exploded" in event.detail


def test_an_unavailable_database_is_a_temporary_failure(config_file, monkeypatch, capsys):
    text = config_file.read_text().replace("sqlite:///", "postgresql+psycopg://postgres@127.0.0.1:1/x#", 1)
    config_file.write_text(text)
    code, _, err = deliver(monkeypatch, capsys, config_file, make_mail(), "--mailbox", "it")
    assert code == os.EX_TEMPFAIL
    assert "the MTA keeps the message and tries again" in err and "Traceback" not in err


def test_a_database_at_an_old_schema_is_a_temporary_failure(config_file, monkeypatch, capsys):
    from alembic import command

    from mailrouter.db import alembic_config, make_engine

    engine = make_engine(f"sqlite:///{config_file.parent / 'db.sqlite'}")
    with engine.connect() as connection:
        command.upgrade(alembic_config(connection), "0003")
        connection.commit()
    engine.dispose()
    code, _, err = deliver(monkeypatch, capsys, config_file, make_mail(), "--mailbox", "it")
    assert code == os.EX_TEMPFAIL and "run `mailrouter migrate`" in err


def test_usage_and_config_errors_have_their_sysexits(intake, config_file, monkeypatch, capsys, tmp_path):
    assert deliver(monkeypatch, capsys, config_file, make_mail())[0] == os.EX_USAGE
    code, _, err = deliver(monkeypatch, capsys, config_file, make_mail(), "--mailbox", "sales")
    assert code == os.EX_USAGE and "no mailbox 'sales'; configured: it, hr" in err
    missing = tmp_path / "missing.toml"
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(make_mail())))
    assert main(["--config", str(missing), "deliver", "--mailbox", "it"]) == os.EX_CONFIG


def test_deliver_reads_no_mailbox_password(intake, config_file, monkeypatch, capsys):
    """The MTA runs deliver as a user of its own, which may read the reply secret and nothing else."""
    monkeypatch.delenv("TEST_IT_PASSWORD")
    (config_file.parent / "hr-secret").unlink()
    code, out, err = deliver(monkeypatch, capsys, config_file, make_mail(), "--mailbox", "it")
    assert code == os.EX_OK, err
    assert out.startswith("new-case")
