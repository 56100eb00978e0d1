"""outbox: the sender's row work. Claim a batch, mark a letter `sending`, record what the relay
answered, hand rows back, and resolve what a dead instance left.

Every statement is Core, built once with bound parameters: the sender runs some of them per
letter, and composing a statement costs SQLAlchemy more than the database takes to run it; the ORM
built an object for each row, with its letter's bytes, only to change two of its columns
(bench/RESULTS.md). Events go through store.record, in the same transaction as the row they
describe. Each function takes the engine and plain data and returns plain data; none talks SMTP.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Engine, Row, Update, bindparam, func, insert, or_, select, text, update
from sqlmodel import Session

from mailrouter import models, store
from mailrouter.errors import OutboxError
from mailrouter.models import utcnow
from mailrouter.prepared import Prepared
from mailrouter.vocabulary import EventKind, OutboxKind, OutboxState

log = logging.getLogger(__name__)

BATCH = 20

_O = models.OUTBOX.c
_R = models.RAW_MESSAGE.c
# A batch is bounded by bytes as well as rows: notifications attach the customer's whole mail.
# The due rows' sizes come first (length() reads a value's stored size, not its bytes, in SQLite
# and PostgreSQL alike; an attached original's is the raw store's), and only the letters that
# fit are claimed and read.
_ORIGINAL_SIZE = select(_R.size).where(_R.sha256 == _O.original_sha256).scalar_subquery()
_DUE = (
    select(_O.id, (func.length(_O.data) + func.coalesce(_ORIGINAL_SIZE, 0)).label("size"))
    .where(_O.state == OutboxState.QUEUED)
    .where(_O.next_attempt_at <= bindparam("now"))
    .where(or_(_O.claimed_until.is_(None), _O.claimed_until < bindparam("now")))
    .order_by(_O.id)
    .limit(BATCH)
)
_DUE_SKIPPING_LOCKED = _DUE.with_for_update(skip_locked=True)  # PostgreSQL: passes over rows being claimed
_CLAIM = (
    update(models.OUTBOX)
    .where(_O.id.in_(bindparam("rows", expanding=True)))
    .values(claimed_by=bindparam("instance"), claimed_until=bindparam("lease_until"))
    .returning(
        *(_O.id, _O.case_id, _O.kind, _O.mail_from, _O.rcpt_to, _O.data, _O.attempts, _O.created_at),
        *(_O.original_sha256, _O.original_at),
    )
)
_ORIGINALS = select(_R.sha256, _R.data).where(_R.sha256.in_(bindparam("shas", expanding=True)))
_SENDING = (  # compare-and-set, only while the claim is still ours
    update(models.OUTBOX)
    .where(_O.id == bindparam("row"))
    .where(_O.state == OutboxState.QUEUED)
    .where(_O.claimed_by == bindparam("instance"))
    .values(state=OutboxState.SENDING, claimed_until=bindparam("lease_until"))
)
_MARK_SENDING = Prepared(_SENDING)  # committed on the event loop before every letter's final dot
# Some recipients refused at RCPT: the row keeps those the relay took, in the same compare-and-set.
_MARK_SENDING_TO = _SENDING.values(rcpt_to=bindparam("rcpt_to", type_=_O.rcpt_to.type))
# ...and those it refused for now go on in a row of their own, the letter copied in the database.
_SPLIT_OFF = (
    insert(models.OUTBOX)
    .from_select(
        [
            *("case_id", "kind", "mail_from", "message_id", "data", "created_at"),
            *("original_sha256", "original_at"),
            *("rcpt_to", "state", "attempts", "next_attempt_at", "last_error", "claimed_by"),
        ],
        select(
            *(_O.case_id, _O.kind, _O.mail_from, _O.message_id, _O.data, _O.created_at),
            *(_O.original_sha256, _O.original_at),
            bindparam("rcpt_to", type_=_O.rcpt_to.type),
            bindparam("state", OutboxState.QUEUED, type_=_O.state.type),
            _O.attempts + 1,
            bindparam("retry_at", type_=_O.next_attempt_at.type),
            bindparam("error", type_=_O.last_error.type),
            bindparam("unclaimed", "", type_=_O.claimed_by.type),
        ).where(_O.id == bindparam("row")),
    )
    .returning(_O.id)
)
_MARK_SENT = Prepared(
    update(models.OUTBOX)
    .where(_O.id == bindparam("row"))
    .where(_O.state == OutboxState.SENDING)  # a bounce may have come first
    .values(
        state=OutboxState.SENT,
        attempts=_O.attempts + 1,
        sent_at=bindparam("now"),
        last_error="",
        claimed_by="",
        claimed_until=None,
    )
)
# A failed attempt is recorded only while the row is still ours: another instance has it otherwise.
_ATTEMPTED = (
    update(models.OUTBOX)
    .where(_O.id == bindparam("row"))
    .where(_O.claimed_by == bindparam("instance"))
    .where(_O.state.in_([OutboxState.QUEUED, OutboxState.SENDING]))
)
_DEFERRED = _ATTEMPTED.values(
    state=OutboxState.QUEUED,
    attempts=_O.attempts + 1,
    last_error=bindparam("error"),
    next_attempt_at=bindparam("retry_at"),
    claimed_by="",
    claimed_until=None,
)
_FAILED = _ATTEMPTED.values(
    state=OutboxState.FAILED,
    attempts=_O.attempts + 1,
    last_error=bindparam("error"),
    claimed_by="",
    claimed_until=None,
)
_UNCONFIRMED = _ATTEMPTED.values(
    state=OutboxState.SENT,
    attempts=_O.attempts + 1,
    last_error=bindparam("error"),
    sent_at=bindparam("now"),
    claimed_by="",
    claimed_until=None,
)
_UNCLAIM = (
    update(models.OUTBOX)
    .where(_O.state == OutboxState.QUEUED)
    .where(_O.claimed_by == bindparam("instance"))
    .values(claimed_by="", claimed_until=None)
)
_UNCLAIM_ALL = (
    update(models.OUTBOX)
    .where(_O.state == OutboxState.QUEUED)
    .where(_O.claimed_by != "")
    .values(claimed_by="", claimed_until=None)
)
_STALE = or_(_O.claimed_until.is_(None), _O.claimed_until < bindparam("now"))
_LEFT_SENDING = {
    exclusive: select(_O.id, _O.case_id, _O.kind, _O.rcpt_to, _O.claimed_by)
    .where(_O.state == OutboxState.SENDING)
    .where(or_(_STALE, _O.claimed_by != bindparam("instance")) if exclusive else _STALE)
    for exclusive in (True, False)
}
# PostgreSQL: two instances recovering at once record each row once.
_LEFT_SENDING_SKIPPING_LOCKED = {
    exclusive: left.with_for_update(skip_locked=True) for exclusive, left in _LEFT_SENDING.items()
}
_COUNTED_SENT = (
    update(models.OUTBOX)
    .where(_O.id.in_(bindparam("rows", expanding=True)))
    .where(_O.state == OutboxState.SENDING)
    .values(
        state=OutboxState.SENT,
        sent_at=func.coalesce(_O.sent_at, bindparam("now")),
        claimed_by="",
        claimed_until=None,
    )
)


@dataclass(frozen=True)
class Refusal:
    """The relay's answer to one recipient's RCPT TO."""

    recipient: str
    code: int
    answer: str

    @property
    def permanent(self) -> bool:
        return self.code >= 500

    def __str__(self) -> str:
        return f"{self.recipient}: {self.code} {self.answer}"


@dataclass(frozen=True)
class Letter:
    """An outbox row as the sender needs it, detached from the database."""

    id: int
    case_id: int | None
    kind: OutboxKind
    mail_from: str
    rcpt_to: tuple[str, ...]
    data: bytes
    attempts: int
    created_at: datetime  # when it was queued (UTC): a temporary failure is not retried for ever


@dataclass(frozen=True)
class Batch:
    letters: list[Letter]
    more: bool  # due rows were left for the next batch: it may follow at once


def claim(engine: Engine, instance: str, lease: float, batch_bytes: int) -> Batch:
    """Take due rows for this instance, for `lease` seconds: up to BATCH of them and
    `batch_bytes` of letters, but always one (a letter larger than the budget goes alone)."""
    now = utcnow()
    due = _DUE_SKIPPING_LOCKED if engine.dialect.name == "postgresql" else _DUE
    with engine.begin() as connection:
        candidates = connection.execute(due, {"now": now}).all()
        chosen: list[int] = []
        size = 0
        for row in candidates:
            if chosen and size + row.size > batch_bytes:
                break
            chosen.append(row.id)
            size += row.size
        rows = []
        originals: dict[str, bytes] = {}
        if chosen:
            claimed = {"rows": chosen, "instance": instance, "lease_until": now + timedelta(seconds=lease)}
            rows = sorted(connection.execute(_CLAIM, claimed).all(), key=lambda row: row.id)
            shas = sorted({row.original_sha256 for row in rows if row.original_sha256})
            if shas:
                originals = {sha: data for sha, data in connection.execute(_ORIGINALS, {"shas": shas})}
    letters = [
        Letter(
            row.id,
            row.case_id,
            row.kind,
            row.mail_from,
            tuple(row.rcpt_to),
            store.with_original(row.data, row.original_at, originals[row.original_sha256])
            if row.original_sha256
            else row.data,
            row.attempts,
            row.created_at.replace(tzinfo=UTC),  # stored naive, in UTC
        )
        for row in rows
    ]
    return Batch(letters, more=len(chosen) < len(candidates) or len(candidates) == BATCH)


# The `sending` mark runs on the event loop: on PostgreSQL a row lock held elsewhere, or a server
# gone slow, may hold it this long at most (SQLite: the write turn is reserved off the loop first,
# and its busy handler waits for other processes only). SET LOCAL ends with the transaction.
SENDING_STATEMENT_TIMEOUT_MS = 2000
_SENDING_TIMEOUT = text(f"SET LOCAL statement_timeout = {SENDING_STATEMENT_TIMEOUT_MS}")


def _bound_on_the_loop(connection: Connection) -> None:
    if connection.dialect.name == "postgresql":
        connection.execute(_SENDING_TIMEOUT)


def mark_sending(engine: Engine, letter_id: int, instance: str, lease: float) -> bool:
    """Compare-and-set queued -> sending, only while the claim is still ours; False when another
    instance has taken the row over. A bare connection, no session: the sender commits this on the
    event loop, between the message and its final dot."""
    lease_until = utcnow() + timedelta(seconds=lease)
    with engine.begin() as connection:
        _bound_on_the_loop(connection)
        params = {"row": letter_id, "instance": instance, "lease_until": lease_until}
        return _MARK_SENDING.rowcount(connection, params) == 1


def mark_sending_to_some(
    engine: Engine,
    letter: Letter,
    instance: str,
    lease: float,
    refused: Sequence[Refusal],
    retry_at: datetime,
) -> bool:
    """mark_sending when the relay refused some of the recipients: the row keeps the others (the
    ones this transaction delivers to), each refusal is recorded on the case, and those refused
    for now are queued again in a new row for `retry_at`. One commit, before the final dot: a
    crash leaves either the whole letter to send again or each recipient in exactly one row, so
    no recipient gets it twice. False when another instance has taken the row over."""
    refused_to = {refusal.recipient for refusal in refused}
    accepted = [recipient for recipient in letter.rcpt_to if recipient not in refused_to]
    later = [refusal for refusal in refused if not refusal.permanent]
    lease_until = utcnow() + timedelta(seconds=lease)
    with Session(engine) as session:
        connection = session.connection()
        _bound_on_the_loop(connection)
        params = {"row": letter.id, "instance": instance, "lease_until": lease_until, "rcpt_to": accepted}
        if connection.execute(_MARK_SENDING_TO, params).rowcount != 1:
            return False
        retry_row = None
        if later:
            split = {
                "row": letter.id,
                "rcpt_to": [refusal.recipient for refusal in later],
                "retry_at": retry_at,
                "error": "; ".join(map(str, later)),
            }
            retry_row = connection.execute(_SPLIT_OFF, split).scalar_one()
        for refusal in refused:
            if refusal.permanent:
                outcome = "refused for good; the others get it"
            else:
                outcome = f"refused for now; the others get it, and it is tried again (outbox {retry_row})"
            store.record(
                session,
                EventKind.RECIPIENT_REFUSED,
                f"{letter.kind} to {refusal.recipient} {outcome}: {refusal.code} {refusal.answer}",
                case_id=letter.case_id,
                outbox_id=letter.id,
                recipient=refusal.recipient,
                answer=f"{refusal.code} {refusal.answer}",
                retry_outbox_id=None if refusal.permanent else retry_row,
            )
        session.commit()
    return True


def mark_sent(engine: Engine, accepted: Sequence[tuple[Letter, str]]) -> None:
    """Record accepted letters as sent, each with the relay's answer, in one commit."""
    now = utcnow()
    with Session(engine) as session:
        connection = session.connection()
        for letter, reply in accepted:
            _MARK_SENT.rowcount(connection, {"row": letter.id, "now": now})
            store.record(
                session,
                EventKind.MAIL_SENT,
                f"{letter.kind} to {', '.join(letter.rcpt_to)} accepted by the relay: {reply}",
                case_id=letter.case_id,
                outbox_id=letter.id,
            )
        session.commit()


def deferred(engine: Engine, letter: Letter, instance: str, error: str, retry_at: datetime) -> bool:
    """A temporary failure: queued again for `retry_at`. False when the row is no longer ours."""
    with engine.begin() as connection:
        params = {"row": letter.id, "instance": instance, "error": error, "retry_at": retry_at}
        return connection.execute(_DEFERRED, params).rowcount == 1


def failed(engine: Engine, letter: Letter, instance: str, error: str) -> bool:
    """A permanent failure, recorded on the case. False when the row is no longer ours."""
    detail = f"{letter.kind} to {', '.join(letter.rcpt_to)} refused for good: {error}"
    return _attempted(engine, _FAILED, letter, instance, error, EventKind.DELIVERY_FAILED, detail)


def gave_up(engine: Engine, letter: Letter, instance: str, error: str, over: str) -> bool:
    """A temporary failure that has lasted too long (`over`, for a person: "5 days"): failed,
    and recorded on the case with the last error. False when the row is no longer ours."""
    attempts = letter.attempts + 1
    detail = (
        f"{letter.kind} to {', '.join(letter.rcpt_to)}: gave up after {attempts} attempt(s) over "
        f"{over}: {error}"
    )
    return _attempted(engine, _FAILED, letter, instance, error, EventKind.DELIVERY_FAILED, detail)


def unconfirmed(engine: Engine, letter: Letter, instance: str, error: str) -> bool:
    """The relay had the whole message but its answer never came: counted as sent, since never
    twice beats at least once for automatic mail. False when the row is no longer ours."""
    detail = f"{letter.kind} to {', '.join(letter.rcpt_to)}: no answer to the final dot ({error})"
    return _attempted(engine, _UNCONFIRMED, letter, instance, error, EventKind.MAIL_SENT_UNCONFIRMED, detail)


def _attempted(
    engine: Engine,
    statement: Update,
    letter: Letter,
    instance: str,
    error: str,
    kind: EventKind,
    detail: str,
) -> bool:
    with Session(engine) as session:
        params = {"row": letter.id, "instance": instance, "error": error, "now": utcnow()}
        if session.connection().execute(statement, params).rowcount != 1:
            return False
        store.record(session, kind, detail, case_id=letter.case_id, outbox_id=letter.id)
        session.commit()
    return True


def unclaim(engine: Engine, instance: str) -> None:
    """Hand back the queued rows this instance claimed, so others need not wait for the lease."""
    with engine.begin() as connection:
        connection.execute(_UNCLAIM, {"instance": instance})


def recover(engine: Engine, instance: str, *, exclusive: bool) -> None:
    """Rows a dead instance left: interrupted final dots recorded as sent; when this instance is
    the only one (`exclusive`: SQLite's flock) also its queued claims, which need not wait for
    their lease to run out."""
    now = utcnow()
    lefts = _LEFT_SENDING_SKIPPING_LOCKED if engine.dialect.name == "postgresql" else _LEFT_SENDING
    with Session(engine) as session:
        connection = session.connection()
        rows = connection.execute(lefts[exclusive], {"now": now, "instance": instance}).all()
        for row in rows:
            store.record(
                session,
                EventKind.MAIL_SENT_UNCONFIRMED,
                f"{row.kind} to {', '.join(row.rcpt_to)}: the relay had the whole message when "
                f"{row.claimed_by or 'the sender'} stopped before its answer; counted as sent, "
                "not sent again",
                case_id=row.case_id,
                outbox_id=row.id,
            )
            log.warning("outbox=%s delivery unconfirmed (sender stopped mid-transaction)", row.id)
        if rows:
            connection.execute(_COUNTED_SENT, {"rows": [row.id for row in rows], "now": now})
        if exclusive:
            connection.execute(_UNCLAIM_ALL)
        session.commit()


# --- for a person: `mailrouter outbox list|retry` --------------------------------------------

RETRYABLE = frozenset({OutboxState.FAILED, OutboxState.BOUNCED})


@dataclass(frozen=True)
class OutboxRow:
    id: int
    case_number: str
    kind: OutboxKind
    rcpt_to: list[str]
    state: OutboxState
    attempts: int
    last_error: str
    created_at: datetime
    next_attempt_at: datetime


_C = models.CASE.c
_LISTED = select(
    _O.id,
    _C.number,
    _O.kind,
    _O.rcpt_to,
    _O.state,
    _O.attempts,
    _O.last_error,
    _O.created_at,
    _O.next_attempt_at,
).join(models.CASE, _C.id == _O.case_id, isouter=True)


def _row(row: Row[*tuple[Any, ...]]) -> OutboxRow:
    return OutboxRow(
        id=row.id,
        case_number=row.number or "",
        kind=OutboxKind(row.kind),
        rcpt_to=list(row.rcpt_to),
        state=OutboxState(row.state),
        attempts=row.attempts,
        last_error=row.last_error,
        created_at=_utc(row.created_at),
        next_attempt_at=_utc(row.next_attempt_at),
    )


def listed(engine: Engine, states: Sequence[OutboxState], limit: int) -> list[OutboxRow]:
    """Rows in these states, newest last."""
    statement = _LISTED.where(_O.state.in_(list(states))).order_by(_O.id.desc()).limit(limit)
    with engine.connect() as connection:
        return [_row(row) for row in reversed(connection.execute(statement).all())]


def oldest_queued(engine: Engine) -> OutboxRow | None:
    statement = _LISTED.where(_O.state == OutboxState.QUEUED).order_by(_O.created_at, _O.id).limit(1)
    with engine.connect() as connection:
        row = connection.execute(statement).first()
    return _row(row) if row is not None else None


def requeue(engine: Engine, row_id: int) -> OutboxRow:
    """A failed or bounced row queued again, as if new (its attempts and its give-up age start
    over), with an event on the case saying what it was."""
    with Session(engine) as session:
        found = session.connection().execute(_LISTED.where(_O.id == row_id)).first()
        if found is None:
            raise OutboxError(f"no outgoing mail {row_id}")
        row = _row(found)
        if row.state not in RETRYABLE:
            raise OutboxError(
                f"outgoing mail {row_id} is {row.state}: only failed or bounced mail is retried"
            )
        now = utcnow()
        session.connection().execute(
            update(models.OUTBOX)
            .where(_O.id == row_id, _O.state.in_(list(RETRYABLE)))
            .values(
                state=OutboxState.QUEUED,
                attempts=0,
                next_attempt_at=now,
                created_at=now,
                claimed_by="",
                claimed_until=None,
            )
        )
        case_id = session.connection().execute(select(_O.case_id).where(_O.id == row_id)).scalar_one()
        store.record(
            session,
            EventKind.MAIL_REQUEUED,
            f"{row.kind} to {', '.join(row.rcpt_to)} queued again by hand; it was {row.state} after "
            f"{row.attempts} attempt(s): {row.last_error or '-'}",
            case_id=case_id,
            outbox_id=row_id,
        )
        session.commit()
    return OutboxRow(**{**row.__dict__, "state": OutboxState.QUEUED, "attempts": 0, "next_attempt_at": now})


def _utc(moment: datetime) -> datetime:
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
