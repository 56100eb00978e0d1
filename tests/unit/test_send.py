"""The sender's pure parts (the DATA payload it writes by hand, its backoff) and its outbox rows."""

import asyncio
import email
import random
import re
from datetime import timedelta
from email.mime.application import MIMEApplication
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from email.policy import default

import pytest
from sqlmodel import Session, col, select

from mailrouter import outbox
from mailrouter.compose import original_part, with_crlf
from mailrouter.config import SmtpSettings
from mailrouter.db import create_schema, make_engine
from mailrouter.errors import TemporaryDeliveryError
from mailrouter.models import Event, Message, OutboxMessage, utcnow
from mailrouter.outbox import Letter, Refusal
from mailrouter.plan import Origin
from mailrouter.send import Sender, backoff, dot_stuffed
from mailrouter.vocabulary import OutboxState
from tests.messages import make_mail

BUDGET = 16 * 1024 * 1024


def test_dot_stuffing_and_line_endings():
    assert dot_stuffed(b"a\n.b\r\n..c\rd") == b"a\r\n..b\r\n...c\r\nd\r\n"
    assert dot_stuffed(b".\r\n") == b"..\r\n"  # a lone dot line must not end the message early
    assert dot_stuffed(b"x\r\n") == b"x\r\n"
    assert dot_stuffed(b"\r\r\n\n\r.") == b"\r\n\r\n\r\n\r\n..\r\n"


def test_dot_stuffing_is_the_rfc_5321_transparency_procedure_on_any_bytes():
    """Against its definition, written with regular expressions: every CR, LF or CRLF becomes
    CRLF; a dot that begins a line gets another (RFC 5321 4.5.2); the payload ends its line."""

    def by_definition(data: bytes) -> bytes:
        data = re.sub(rb"(?m)^\.", b"..", re.sub(rb"\r\n|\r|\n", b"\r\n", data))
        return data if data.endswith(b"\r\n") else data + b"\r\n"

    rng = random.Random(11)
    for _ in range(20000):
        data = bytes(rng.choice(b"\r\n.a") for _ in range(rng.randrange(0, 14)))
        assert dot_stuffed(data) == by_definition(data), data


def test_backoff_doubles_with_jitter_and_is_capped():
    random.seed(5)
    for attempts in range(1, 12):
        ceiling = min(900, 30 * 2 ** (attempts - 1))
        delays = [backoff(attempts, 30, 900) for _ in range(50)]
        assert all(ceiling / 2 <= d <= ceiling for d in delays)
        assert len(set(delays)) > 1  # jitter: instances that failed together do not retry together


def _row(engine, message_id: str, **fields) -> OutboxMessage:
    with Session(engine, expire_on_commit=False) as session:
        defaults = {
            "kind": "acknowledgement",
            "rcpt_to": ["kari@kunde.example"],
            "data": b"Subject: x\r\n\r\nx\r\n",
        }
        row = OutboxMessage(
            mail_from="it-support@example.test", message_id=message_id, **{**defaults, **fields}
        )
        session.add(row)
        session.commit()
        assert row.id is not None
        return row


def _id(row: OutboxMessage) -> int:
    """A stored row's id (the model's is None only before the row is stored)."""
    assert row.id is not None
    return row.id


def _sending_row(engine, message_id: str) -> Letter:
    row = _row(engine, message_id, state=OutboxState.SENDING, claimed_by="mailrouter")
    return Letter(_id(row), None, row.kind, row.mail_from, tuple(row.rcpt_to), row.data, 0, utcnow())


def test_accepted_letters_are_recorded_sent_in_one_go_unless_a_bounce_came_first(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path}/send.db")
    create_schema(engine)
    plain = _sending_row(engine, "<a@mailrouter>")
    bounced = _sending_row(engine, "<b@mailrouter>")
    with Session(engine) as session:  # the bounce's intake got there before the batch was recorded
        row = session.get(OutboxMessage, bounced.id)
        assert row is not None
        row.state = OutboxState.BOUNCED
        session.add(row)
        session.commit()

    outbox.mark_sent(engine, [(plain, "250 2.0.0 Ok: queued as A"), (bounced, "250 2.0.0 Ok: queued as B")])

    with Session(engine) as session:
        states = {r.id: (r.state, r.attempts, r.claimed_by) for r in session.exec(select(OutboxMessage))}
        sent_events = session.exec(select(Event).where(Event.kind == "mail-sent")).all()
    assert states[plain.id] == (OutboxState.SENT, 1, "")
    assert states[bounced.id][0] == OutboxState.BOUNCED
    assert sorted(e.data["outbox_id"] for e in sent_events) == [plain.id, bounced.id]  # both were accepted


def test_a_claim_takes_the_due_rows_in_order_and_leaves_those_claimed_by_another(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path}/send.db")
    create_schema(engine)
    first = _row(engine, "<1@mailrouter>").id
    taken = _row(engine, "<2@mailrouter>", claimed_by="b", claimed_until=utcnow() + timedelta(minutes=1)).id
    later = _row(engine, "<3@mailrouter>", next_attempt_at=utcnow() + timedelta(minutes=1)).id
    expired = _row(engine, "<4@mailrouter>", claimed_by="b", claimed_until=utcnow()).id

    letters = outbox.claim(engine, "a", 60, BUDGET).letters

    assert [(letter.id, letter.rcpt_to, letter.data) for letter in letters] == [
        (first, ("kari@kunde.example",), b"Subject: x\r\n\r\nx\r\n"),
        (expired, ("kari@kunde.example",), b"Subject: x\r\n\r\nx\r\n"),
    ]
    with Session(engine) as session:
        claims = {r.id: (r.claimed_by, r.claimed_until) for r in session.exec(select(OutboxMessage))}
    assert [claims[row][0] for row in (first, taken, later, expired)] == ["a", "b", "", "a"]
    first_until = claims[first][1]
    assert first_until is not None and first_until > utcnow() + timedelta(seconds=50)
    assert outbox.claim(engine, "a", 60, BUDGET).letters == []  # ours now, for the lease


async def test_rows_left_behind_are_looked_for_once_per_half_lease(tmp_path, monkeypatch):
    engine = make_engine(f"sqlite:///{tmp_path}/send.db")
    create_schema(engine)
    sender = Sender(engine, SmtpSettings(host="127.0.0.1"), None, lease=0.4)
    looked = []
    monkeypatch.setattr(outbox, "recover", lambda *args, **kwargs: looked.append(utcnow()))
    stop = asyncio.Event()
    await sender._round(stop)
    await sender._round(stop)
    assert len(looked) == 1
    await asyncio.sleep(0.25)
    await sender._round(stop)
    assert len(looked) == 2


def _claimed(engine, message_id: str, instance: str = "a") -> Letter:
    row = _row(engine, message_id, claimed_by=instance, claimed_until=utcnow() + timedelta(minutes=1))
    return Letter(_id(row), None, row.kind, row.mail_from, tuple(row.rcpt_to), row.data, 0, utcnow())


def _outbox(engine) -> dict[int, OutboxMessage]:
    with Session(engine) as session:
        return {_id(row): row for row in session.exec(select(OutboxMessage))}


def test_a_failed_attempt_is_recorded_only_while_the_row_is_ours(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path}/send.db")
    create_schema(engine)
    later = utcnow() + timedelta(minutes=5)
    deferred, refused, unanswered, lost = (_claimed(engine, f"<{n}@mailrouter>") for n in range(4))

    assert outbox.deferred(engine, deferred, "a", "421 busy", later)
    assert outbox.failed(engine, refused, "a", "550 no such user")
    assert outbox.mark_sending(engine, unanswered.id, "a", 60)
    assert outbox.unconfirmed(engine, unanswered, "a", "TimeoutError")
    assert not outbox.failed(engine, lost, "b", "550 no such user")  # b never had it

    rows = _outbox(engine)
    assert (rows[deferred.id].state, rows[deferred.id].attempts, rows[deferred.id].claimed_by) == (
        OutboxState.QUEUED,
        1,
        "",
    )
    assert rows[deferred.id].next_attempt_at.replace(tzinfo=None) == later.replace(tzinfo=None)
    assert (rows[refused.id].state, rows[refused.id].last_error) == (OutboxState.FAILED, "550 no such user")
    assert rows[unanswered.id].state == OutboxState.SENT and rows[unanswered.id].sent_at is not None
    assert (rows[lost.id].state, rows[lost.id].attempts) == (OutboxState.QUEUED, 0)
    with Session(engine) as session:
        events = {(e.kind, e.data["outbox_id"]) for e in session.exec(select(Event))}
    assert events == {("delivery-failed", refused.id), ("mail-sent-unconfirmed", unanswered.id)}


def test_recovery_counts_a_dead_instances_sending_rows_as_sent_and_frees_its_claims(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path}/send.db")
    create_schema(engine)
    until = utcnow() + timedelta(minutes=1)
    sending = _row(
        engine, "<s@mailrouter>", state=OutboxState.SENDING, claimed_by="dead", claimed_until=until
    )
    ours = _row(engine, "<o@mailrouter>", state=OutboxState.SENDING, claimed_by="a", claimed_until=until)
    queued = _row(engine, "<q@mailrouter>", claimed_by="dead", claimed_until=until)

    outbox.recover(engine, "a", exclusive=False)  # others' leases have not run out: nothing yet
    assert {row.state for row in _outbox(engine).values()} == {OutboxState.SENDING, OutboxState.QUEUED}

    outbox.recover(engine, "a", exclusive=True)  # the only instance: what others left is void

    rows = _outbox(engine)
    assert (rows[_id(sending)].state, rows[_id(sending)].claimed_by) == (OutboxState.SENT, "")
    assert rows[_id(ours)].state == OutboxState.SENDING  # our own transaction in hand
    assert (rows[_id(queued)].state, rows[_id(queued)].claimed_by) == (OutboxState.QUEUED, "")
    with Session(engine) as session:
        [event] = session.exec(select(Event)).all()
    assert event.kind == "mail-sent-unconfirmed" and event.data["outbox_id"] == sending.id


def test_a_letter_refused_for_some_recipients_goes_to_the_others_and_each_refusal_is_recorded(engine):
    """One departed agent does not silence a group; one whose server is busy gets it later, in a
    row of its own, so no recipient is in two rows that are sent."""
    group = ["agent1@example.test", "gone@example.test", "busy@example.test", "agent2@example.test"]
    created = utcnow() - timedelta(hours=1)
    row = _row(
        engine, "<n@mailrouter>", rcpt_to=group, claimed_by="a", created_at=created, kind="notification"
    )
    letter = Letter(_id(row), None, row.kind, row.mail_from, tuple(group), row.data, 0, utcnow())
    retry_at = utcnow() + timedelta(minutes=2)
    refused = (
        Refusal("gone@example.test", 550, "5.1.1 user unknown"),
        Refusal("busy@example.test", 450, "4.2.1 try later"),
    )

    assert outbox.mark_sending_to_some(engine, letter, "a", 60, refused, retry_at)

    rows = sorted(_outbox(engine).values(), key=_id)
    [sending, later] = rows
    assert (sending.state, sending.rcpt_to) == (
        OutboxState.SENDING,
        ["agent1@example.test", "agent2@example.test"],
    )
    assert (later.state, later.rcpt_to, later.attempts, later.claimed_by) == (
        OutboxState.QUEUED,
        ["busy@example.test"],
        1,
        "",
    )
    assert (later.data, later.message_id, later.kind) == (row.data, row.message_id, row.kind)
    assert later.created_at.replace(tzinfo=None) == created.replace(tzinfo=None)  # its age is the letter's
    assert later.next_attempt_at.replace(tzinfo=None) == retry_at.replace(tzinfo=None)
    assert "450 4.2.1 try later" in later.last_error
    with Session(engine) as session:
        events = {
            e.data["recipient"]: e
            for e in session.exec(select(Event).where(Event.kind == "recipient-refused"))
        }
    assert set(events) == {"gone@example.test", "busy@example.test"}
    assert "refused for good" in events["gone@example.test"].detail
    assert "550 5.1.1 user unknown" in events["gone@example.test"].detail
    assert events["busy@example.test"].data["retry_outbox_id"] == later.id
    assert outbox.claim(engine, "b", 60, BUDGET).letters == []  # the split-off row waits for its retry time


def test_a_split_is_not_made_for_a_row_another_instance_took_over(engine):
    row = _row(engine, "<n@mailrouter>", rcpt_to=["a@example.test", "b@example.test"], claimed_by="b")
    letter = Letter(_id(row), None, row.kind, row.mail_from, tuple(row.rcpt_to), row.data, 0, utcnow())
    refused = (Refusal("b@example.test", 451, "later"),)

    assert not outbox.mark_sending_to_some(engine, letter, "a", 60, refused, utcnow())

    assert [(r.state, r.rcpt_to) for r in _outbox(engine).values()] == [
        (OutboxState.QUEUED, ["a@example.test", "b@example.test"])
    ]


@pytest.mark.parametrize(
    ("queued_ago", "state"),
    [(timedelta(days=5, minutes=1), OutboxState.FAILED), (timedelta(days=4, hours=23), OutboxState.QUEUED)],
)
def test_a_temporary_failure_is_not_retried_for_ever(tmp_path, queued_ago, state):
    engine = make_engine(f"sqlite:///{tmp_path}/send.db")
    create_schema(engine)
    sender = Sender(engine, SmtpSettings(host="127.0.0.1"), None, instance="a")  # give_up_after: 5 days
    row = _row(engine, "<old@mailrouter>", created_at=utcnow() - queued_ago, attempts=41)
    [letter] = outbox.claim(engine, "a", 60, BUDGET).letters
    assert utcnow() - letter.created_at >= queued_ago

    sender._failed(letter, TemporaryDeliveryError("421 4.4.2 mx.kunde.example: timed out"))

    [stored] = _outbox(engine).values()
    assert (stored.state, stored.attempts) == (state, 42)
    with Session(engine) as session:
        events = session.exec(select(Event).where(Event.kind == "delivery-failed")).all()
    if state == OutboxState.FAILED:
        [event] = events
        assert event.data["outbox_id"] == row.id
        assert event.detail == (
            "acknowledgement to kari@kunde.example: gave up after 42 attempt(s) over 5 days: "
            "421 4.4.2 mx.kunde.example: timed out"
        )
    else:
        assert events == []


def test_a_claimed_batch_is_bounded_by_bytes_but_always_takes_one_letter(engine):
    """Notifications attach the customer's whole mail: twenty of them must not all be in memory."""
    sizes = [10_000, 10_000, 10_000, 100_000, 10_000]
    ids = [_row(engine, f"<{n}@mailrouter>", data=b"x" * size).id for n, size in enumerate(sizes)]

    batches = []
    while (batch := outbox.claim(engine, "a", 60, 25_000)).letters:
        batches.append(([letter.id for letter in batch.letters], batch.more))

    assert (
        batches
        == [
            (ids[0:2], True),  # 20 000 bytes; a third would make 30 000
            (ids[2:3], True),  # the next one does not fit beside it
            (ids[3:4], True),  # larger than the budget: alone
            (ids[4:5], False),
        ]
    )


def test_a_notification_refers_to_the_original_in_the_raw_store_and_is_sent_whole(intake):
    """The outbox keeps no second copy of the customer's mail: the row refers to the raw store,
    and the letter claimed for sending carries the original, byte for byte, as its attachment."""
    body = "The attached spreadsheet is broken " * 200
    raw = make_mail(body=body)
    intake.process(raw, Origin("it", 7, 1))
    with Session(intake.engine) as session:
        [incoming] = session.exec(select(Message).where(Message.direction == "in")).all()
        notifications = session.exec(select(OutboxMessage).where(OutboxMessage.kind == "notification")).all()
    assert len(notifications) == 2  # one per agent of it-agents
    for row in notifications:
        assert row.original_sha256 == incoming.raw_sha256 and row.original_at is not None
        assert with_crlf(raw) not in row.data
    letters = {letter.id: letter for letter in outbox.claim(intake.engine, "a", 60, BUDGET).letters}
    for row in notifications:
        assert len(letters[_id(row)].data) == len(row.data) + len(original_part(raw))
        sent = email.message_from_bytes(letters[_id(row)].data, policy=default)
        [original] = [part for part in sent.walk() if part.get_filename() == "original.eml"]
        assert original.get_content_type() == "message/rfc822"
        assert letters[_id(row)].data.count(with_crlf(raw)) == 1


def test_a_batchs_byte_budget_counts_the_original_each_letter_attaches(intake):
    mail = MIMEMultipart()
    mail["From"], mail["To"], mail["Subject"] = "kari@kunde.example", "it-support@example.test", "Logs"
    mail.attach(MIMEText("The logs are attached."))
    mail.attach(MIMEApplication(b"x" * 200_000, Name="logs.bin"))
    raw = mail.as_bytes()
    intake.process(raw, Origin("it", 7, 1))
    with Session(intake.engine) as session:
        rows = session.exec(select(OutboxMessage).order_by(col(OutboxMessage.id))).all()
    assert [row.kind for row in rows] == ["acknowledgement", "notification", "notification"]
    assert all(len(row.data) < 20_000 for row in rows)
    budget = len(rows[0].data) + len(rows[1].data) + len(raw)  # the first notification, not the second
    assert [letter.id for letter in outbox.claim(intake.engine, "a", 60, budget).letters] == [
        rows[0].id,
        rows[1].id,
    ]
