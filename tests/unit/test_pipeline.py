"""The whole intake against a real SQLite database: no IMAP, no SMTP."""

import email
import hashlib
import random
from datetime import timedelta
from email.policy import default

import pytest
from sqlalchemy import event
from sqlmodel import Session, select

from mailrouter import store
from mailrouter.models import Case, Customer, Event, Message, OutboxMessage, RawMessage, utcnow
from mailrouter.parse import parse_degraded
from mailrouter.plan import Origin, OutcomeKind, Raw
from mailrouter.store import checkpoint
from mailrouter.vocabulary import EventKind
from tests.messages import make_mail, plain_text


def rows(intake, model):
    with Session(intake.engine) as session:
        return session.exec(select(model)).all()


def acknowledgements(intake):
    return [o for o in rows(intake, OutboxMessage) if o.kind == "acknowledgement"]


def test_new_case_is_registered_and_acknowledged_in_one_transaction(intake):
    outcome = intake.process(make_mail(subject="Skrivaren är trasig – åäö"), Origin("it", 7, 1))
    assert outcome.kind == OutcomeKind.NEW_CASE and outcome.case_number == "IT-1001"
    [case] = rows(intake, Case)
    assert case.subject == "Skrivaren är trasig – åäö"
    [ack] = acknowledgements(intake)
    sent = email.message_from_bytes(ack.data, policy=default)
    assert sent["Subject"] == "[IT-1001] Re: Skrivaren är trasig – åäö"
    assert sent["From"] == "IT Support <it-support@example.test>"
    assert sent["To"] == "kari@kunde.example"
    assert sent["In-Reply-To"] == "<m1@kunde.example>"
    assert sent["Auto-Submitted"] == "auto-replied"
    assert sent["Message-ID"] == ack.message_id
    assert "IT-1001" in plain_text(sent)
    assert ack.rcpt_to == ["kari@kunde.example"] and ack.mail_from == "it-support@example.test"
    kinds = [e.kind for e in rows(intake, Event)]
    assert kinds == ["case-created", "routed", "acknowledgement-queued", "notified"]
    assert len(rows(intake, RawMessage)) == 1
    with Session(intake.engine) as session:
        state = checkpoint(session, "it")
        assert state is not None and (state.uidvalidity, state.last_uid) == (7, 1)


def test_a_sender_is_one_customer_whose_name_is_learnt_once(intake):
    intake.process(make_mail(sender="kari@kunde.example", message_id="<c1@k>"), Origin("it", 7, 1))
    intake.process(
        make_mail(sender="Kari Nordmann <kari@kunde.example>", message_id="<c2@k>"), Origin("it", 7, 2)
    )
    intake.process(make_mail(sender="K. N. <KARI@kunde.example>", message_id="<c3@k>"), Origin("it", 7, 3))
    intake.process(
        make_mail(sender="Ola <ola@styret.kunde.example>", message_id="<c4@k>"), Origin("it", 7, 4)
    )
    kari, ola = sorted(rows(intake, Customer), key=lambda c: c.address)
    assert (kari.address, kari.name, kari.organisation) == (
        "kari@kunde.example",
        "Kari Nordmann",
        "kunde.example",
    )
    assert (ola.name, ola.organisation) == ("Ola", "styret.kunde.example")
    assert kari.created_at is not None
    cases = sorted(rows(intake, Case), key=lambda c: c.number)
    assert [c.customer_id for c in cases] == [kari.id, kari.id, kari.id, ola.id]


def run_by_sqlite(engine):
    """The statements SQLite runs on the engine's connections from now on, as SQLite sees them
    (one for each row of a statement run for several): what reaches the database, whichever
    path in mailrouter sent it."""
    statements: list[str] = []
    engine.dispose()
    event.listen(engine, "connect", lambda connection, _: connection.set_trace_callback(statements.append))
    return statements


def test_a_new_case_reads_its_customer_once(intake):
    """The acknowledgement finds the customer in the session, not by a query of its own."""
    intake.process(make_mail(message_id="<r1@k>"), Origin("it", 7, 1))
    statements = run_by_sqlite(intake.engine)
    intake.process(make_mail(message_id="<r2@k>"), Origin("it", 7, 2))
    assert len([s for s in statements if s.startswith("SELECT customer.")]) == 1
    assert len(acknowledgements(intake)) == 2


def test_a_new_case_was_last_updated_when_it_was_created(intake):
    intake.process(make_mail(message_id="<t1@k>"), Origin("it", 7, 1))
    [case] = rows(intake, Case)
    [customer] = rows(intake, Customer)
    assert case.created_at == case.updated_at
    assert customer.created_at <= case.created_at


def test_a_messages_events_are_written_together_as_it_commits(intake):
    statements = run_by_sqlite(intake.engine)
    intake.process(make_mail(message_id="<e1@k>"), Origin("it", 7, 1))
    commit = statements.index("COMMIT")
    written = [s for s in statements[:commit] if s.startswith("INSERT INTO event")]
    first = statements.index(written[0])
    assert statements[first : first + len(written)] == written  # one after another
    rows_after = [
        s for s in statements[first:commit] if s.startswith(("INSERT INTO message", 'INSERT INTO "case"'))
    ]
    assert not rows_after  # as the transaction commits, after the message's own rows
    kinds = [e.kind for e in sorted(rows(intake, Event), key=lambda e: e.id)]
    assert kinds == ["case-created", "routed", "acknowledgement-queued", "notified"]
    assert len(written) == len(kinds)


def test_the_events_of_a_transaction_that_rolls_back_are_never_written(intake):
    with Session(intake.engine) as session:
        store.record(session, EventKind.CASE_CREATED, "IT-1001 opened")
        session.rollback()
        store.record(session, EventKind.ROUTED, "written")
        session.commit()
    with Session(intake.engine) as session:
        store.record(session, EventKind.CASE_CREATED, "left without a commit")
    assert [e.detail for e in rows(intake, Event)] == ["written"]


def test_reply_to_the_acknowledgement_joins_the_case_without_a_new_acknowledgement(intake):
    intake.process(make_mail(), Origin("it", 7, 1))
    [ack] = acknowledgements(intake)
    reply = make_mail(
        subject="Re: printer",
        message_id="<m2@kunde.example>",
        headers={"In-Reply-To": ack.message_id},
    )
    outcome = intake.process(reply, Origin("it", 7, 2))
    assert outcome.kind == OutcomeKind.FOLLOW_UP and outcome.case_number == "IT-1001"
    assert len(rows(intake, Case)) == 1 and len(acknowledgements(intake)) == 1


def test_the_same_message_is_never_registered_twice(intake):
    raw = make_mail()
    intake.process(raw, Origin("it", 7, 1))
    again = intake.process(raw, Origin("it", 8, 1))  # e.g. after a UIDVALIDITY change
    assert again.kind == OutcomeKind.DUPLICATE
    assert len(rows(intake, Case)) == 1
    # + acknowledgement, one notification for each of the group's two agents
    assert [m.direction for m in rows(intake, Message)] == ["in", "out", "out", "out"]


def test_message_without_message_id_is_deduplicated_by_content(intake):
    raw = make_mail(message_id=None)
    intake.process(raw, Origin("it", 7, 1))
    assert intake.process(raw, Origin("it", 7, 5)).kind == OutcomeKind.DUPLICATE


def test_case_numbers_follow_the_department_prefix(intake):
    numbers = [
        intake.process(make_mail(message_id=f"<n{i}@x>"), Origin("it", 1, i)).case_number for i in range(1, 4)
    ]
    hr = intake.process(make_mail(message_id="<h@x>", to="hr@example.test"), Origin("hr", 1, 1)).case_number
    assert numbers == ["IT-1001", "IT-1002", "IT-1003"] and hr == "HR-1001"


def test_auto_reply_is_kept_but_opens_no_case(intake):
    outcome = intake.process(make_mail(headers={"Auto-Submitted": "auto-replied"}), Origin("it", 1, 1))
    assert outcome.kind == OutcomeKind.SCREENED
    [message] = rows(intake, Message)
    assert message.case_id is None and message.raw_sha256
    [event] = rows(intake, Event)
    assert event.kind == "screened" and "Auto-Submitted" in event.detail


def test_non_email_is_refused_kept_and_recorded(intake):
    outcome = intake.process(b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1\0\0", Origin("it", 1, 3))
    assert outcome.kind == OutcomeKind.REFUSED
    [event] = rows(intake, Event)
    assert event.kind == "refused" and "Outlook" in event.detail
    assert len(rows(intake, RawMessage)) == 1
    with Session(intake.engine) as session:
        state = checkpoint(session, "it")
        assert state is not None and state.last_uid == 3


def test_a_failure_inside_the_transaction_leaves_nothing(intake, monkeypatch):
    """Half a plan written (raw copy, customer, case, message) when the outbox row fails."""

    def broken(*args, **kwargs):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr("mailrouter.store._queue", broken)
    with pytest.raises(RuntimeError):
        intake.process(make_mail(), Origin("it", 1, 1))
    for model in (Case, Message, Event, OutboxMessage, RawMessage):
        assert rows(intake, model) == []
    with Session(intake.engine) as session:
        assert checkpoint(session, "it") is None
    monkeypatch.undo()
    assert intake.process(make_mail(), Origin("it", 1, 1)).case_number == "IT-1001"  # number not burnt


def test_the_checkpoint_only_moves_forward_and_restarts_with_a_new_uidvalidity(intake):
    for uid in (5, 3):  # a retried lower UID must not move the checkpoint back
        intake.process(make_mail(message_id=f"<c{uid}@x>"), Origin("it", 7, uid))
    with Session(intake.engine) as session:
        state = checkpoint(session, "it")
        assert state is not None and (state.uidvalidity, state.last_uid) == (7, 5)
    intake.process(make_mail(message_id="<new-validity@x>"), Origin("it", 8, 2))
    with Session(intake.engine) as session:  # the folder was recreated: its UIDs start over
        state = checkpoint(session, "it")
        assert state is not None and (state.uidvalidity, state.last_uid) == (8, 2)


def test_the_same_bytes_in_two_mailboxes_are_registered_twice_and_kept_once(intake):
    raw = make_mail(to="it-support@example.test, hr@example.test")
    first = intake.process(raw, Origin("it", 1, 1))
    second = intake.process(raw, Origin("hr", 1, 1))
    assert first.kind == second.kind == OutcomeKind.NEW_CASE
    assert len(rows(intake, Message)) >= 2 and len(rows(intake, RawMessage)) == 1


def test_a_message_read_in_part_says_so_on_its_case(intake):
    raw = make_mail(message_id="<slow@kunde.example>", body="Skrivaren er ødelagt.")
    inbound = parse_degraded(raw, "parsing took longer than 5 s")
    outcome = intake.process(raw, Origin("it", 7, 1), inbound)
    assert outcome.kind == OutcomeKind.NEW_CASE
    [event] = [e for e in rows(intake, Event) if e.kind == EventKind.PARSED_DEGRADED]
    [case] = rows(intake, Case)
    assert event.case_id == case.id and event.message_id is not None
    assert event.detail == "the message was read in part, text parts only: parsing took longer than 5 s"


def test_mail_that_arrived_long_before_it_is_read_opens_its_case_unanswered(intake):
    old = Origin("it", 7, 1, received_at=utcnow() - timedelta(days=4))  # acknowledge_max_age: 3d
    assert intake.process(make_mail(message_id="<old@k>"), old).kind == OutcomeKind.NEW_CASE
    assert acknowledgements(intake) == []
    [why] = [e for e in rows(intake, Event) if e.kind == "not-acknowledged"]
    assert "acknowledge_max_age" in why.detail
    recent = Origin("it", 7, 2, received_at=utcnow() - timedelta(hours=1))
    intake.process(make_mail(message_id="<new@k>", subject="another"), recent)
    assert len(acknowledgements(intake)) == 1


@pytest.mark.parametrize("size", [100, store.STREAMED_RAW + 1])
def test_a_raw_message_is_kept_byte_for_byte_and_once(engine, size):
    data = random.Random(size).randbytes(size)
    raw = Raw(hashlib.sha256(data).hexdigest(), data)
    for _ in range(2):  # the same bytes again (a retry, a duplicate): still one row
        with Session(engine) as session:
            store.keep_raw(session, raw)
            session.commit()
    with Session(engine) as session:
        [kept] = session.exec(select(RawMessage)).all()
    assert (kept.sha256, kept.size, kept.data) == (raw.sha256, size, data)


def test_a_big_raw_message_whose_transaction_rolls_back_leaves_nothing(engine):
    data = random.Random(1).randbytes(store.STREAMED_RAW + 1)
    with Session(engine) as session:
        store.keep_raw(session, Raw(hashlib.sha256(data).hexdigest(), data))
        session.rollback()
    with Session(engine) as session:
        assert session.exec(select(RawMessage)).all() == []
