"""store: the writes of one message's transaction, and the case look-ups threading needs.

Every function here works inside the caller's session; the caller commits once per message, so a
crash leaves either nothing or everything.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar

from sqlalchemy import bindparam, case, event, func, insert, update
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session as OrmSession
from sqlalchemy.orm import SessionTransaction, make_transient_to_detached
from sqlalchemy.orm.util import identity_key
from sqlmodel import Session, col, select

from mailrouter.compose import Outgoing
from mailrouter.models import (
    Attachment,
    Case,
    Customer,
    Event,
    MailboxState,
    Message,
    MessageAttempt,
    OutboxMessage,
    RawMessage,
    utcnow,
)
from mailrouter.parse import Address, Inbound
from mailrouter.thread import CaseRef
from mailrouter.vocabulary import AuthorRole, Direction, EventKind, OutboxKind

_Loaded = TypeVar("_Loaded", Case, Customer)

# Append-only rows are written with Core inserts: building and flushing an ORM object for each
# cost more than all the rest of a message's registration (bench/RESULTS.md).
MESSAGE = Message.__table__  # type: ignore[attr-defined]
ATTACHMENT = Attachment.__table__  # type: ignore[attr-defined]
RAW_MESSAGE = RawMessage.__table__  # type: ignore[attr-defined]
OUTBOX = OutboxMessage.__table__  # type: ignore[attr-defined]
EVENT = Event.__table__  # type: ignore[attr-defined]
CASE = Case.__table__  # type: ignore[attr-defined]
CUSTOMER = Customer.__table__  # type: ignore[attr-defined]
MAILBOX_STATE = MailboxState.__table__  # type: ignore[attr-defined]
MESSAGE_ATTEMPT = MessageAttempt.__table__  # type: ignore[attr-defined]

# The statements every message runs are built once, with bound parameters: composing a statement
# costs SQLAlchemy more than SQLite takes to run it (bench/RESULTS.md). They run on the session's
# connection, in its transaction: Session.execute would add ORM bookkeeping that Core rows don't
# need, and doubles the cost of a statement.
_INSERT_CASE_RETURNING_ID = insert(CASE).returning(CASE.c.id)
_INSERT_MESSAGE = insert(MESSAGE)
_INSERT_MESSAGE_RETURNING_ID = insert(MESSAGE).returning(MESSAGE.c.id)
_INSERT_ATTACHMENT = insert(ATTACHMENT)
_INSERT_OUTBOX = insert(OUTBOX)
_INSERT_EVENT = insert(EVENT)
_EVENTS = "mailrouter.events"  # a session's events not yet written (Session.info)
_REGISTERED = select(MESSAGE.c.id).where(MESSAGE.c.dedupe_key == bindparam("key"))
_KEEP_RAW = {
    dialect: insert_for(RAW_MESSAGE).on_conflict_do_nothing(index_elements=["sha256"])
    for dialect, insert_for in (("sqlite", sqlite_insert), ("postgresql", postgresql_insert))
}
_CUSTOMER_BY_ADDRESS = select(CUSTOMER).where(CUSTOMER.c.address == bindparam("address"))
_INSERT_CUSTOMER_RETURNING_ID = insert(CUSTOMER).returning(CUSTOMER.c.id)
# What threading needs of a case, with its customer's address, in one statement.
_CASE_REF = (CASE.c.id, CASE.c.number, CASE.c.department, CASE.c.status, CUSTOMER.c.address)
_CASE_WITH_CUSTOMER = CASE.outerjoin(CUSTOMER, CUSTOMER.c.id == CASE.c.customer_id)
_CASE_BY_NUMBER = (
    select(*_CASE_REF).select_from(_CASE_WITH_CUSTOMER).where(CASE.c.number == bindparam("number"))
)
_CASES_BY_MESSAGE_IDS = (
    select(MESSAGE.c.message_id, *_CASE_REF)
    .select_from(MESSAGE.join(_CASE_WITH_CUSTOMER, CASE.c.id == MESSAGE.c.case_id))
    .where(MESSAGE.c.message_id.in_(bindparam("message_ids", expanding=True)))
)
# Acknowledgements are queued only as their case is created, so the cases created since then are
# the only ones to look at: ix_case_customer_id_created_at finds them, however long the sender's
# history (joining all of a sender's cases made a frequent sender's every new case slower).
_ACKNOWLEDGEMENTS_SINCE = select(func.count()).select_from(
    select(OUTBOX.c.id)
    .join(CASE, CASE.c.id == OUTBOX.c.case_id)
    .where(
        CASE.c.customer_id == bindparam("customer_id"),
        CASE.c.created_at >= bindparam("since"),
        OUTBOX.c.kind == OutboxKind.ACKNOWLEDGEMENT,
        OUTBOX.c.created_at >= bindparam("since"),
    )
    .limit(bindparam("at_most"))
    .subquery()
)
_ADVANCE_CHECKPOINT = (  # same UIDVALIDITY: the UID only ever grows
    update(MAILBOX_STATE)
    .where(MAILBOX_STATE.c.mailbox == bindparam("box"), MAILBOX_STATE.c.uidvalidity == bindparam("validity"))
    .values(
        last_uid=case(
            (MAILBOX_STATE.c.last_uid < bindparam("uid"), bindparam("uid")), else_=MAILBOX_STATE.c.last_uid
        ),
        last_poll_at=bindparam("now"),
    )
)


@dataclass(frozen=True)
class Origin:
    """Where an incoming message was found: the IMAP identity of that copy."""

    mailbox: str
    uidvalidity: int
    uid: int
    # When the copy arrived in the folder (IMAP INTERNALDATE), where known: not part of its identity.
    received_at: datetime | None = field(default=None, compare=False)


class SqlCaseLookup:
    def __init__(self, session: Session) -> None:
        self.connection = session.connection()

    def case_by_number(self, number: str) -> CaseRef | None:
        row = self.connection.execute(_CASE_BY_NUMBER, {"number": number}).first()
        return _case_ref(*row) if row else None

    def case_by_message_ids(self, message_ids: Sequence[str]) -> CaseRef | None:
        """The case of the nearest message named: message_ids are ordered nearest first."""
        rows = self.connection.execute(_CASES_BY_MESSAGE_IDS, {"message_ids": list(message_ids)}).all()
        by_id = {message_id: case for message_id, *case in rows}
        for message_id in message_ids:
            if message_id in by_id:
                return _case_ref(*by_id[message_id])
        return None


def _case_ref(case_id: int, number: str, department: str, status: str, customer: str | None) -> CaseRef:
    return CaseRef(case_id, number, department, status, customer or "")


def dedupe_key(mailbox: str, inbound: Inbound) -> str:
    return f"{mailbox}:{inbound.message_id or 'sha256:' + inbound.sha256}"


def already_registered(session: Session, key: str) -> int | None:
    """The id of the message registered under this key, if any."""
    return session.connection().execute(_REGISTERED, {"key": key}).scalar()


def keep_raw(session: Session, raw: bytes, sha256: str) -> None:
    """Content-addressed: the same bytes seen again (a duplicate, a retry) are kept once."""
    statement = _KEEP_RAW[session.get_bind().dialect.name]
    session.connection().execute(statement, {"sha256": sha256, "size": len(raw), "data": raw})


def customer_for(session: Session, sender: Address) -> Customer:
    """The sender's customer record, made at their first mail; a name they give later fills an
    empty one. Read or inserted by Core and put in the session as loaded, like add_case: the
    acknowledgement and the notification then find it there without a query of their own."""
    row = session.connection().execute(_CUSTOMER_BY_ADDRESS, {"address": sender.address}).first()
    if row is not None and (known := session.identity_map.get(identity_key(Customer, row.id))) is not None:
        customer = known
    elif row is not None:
        customer = _as_loaded(session, Customer(**row._mapping))
    else:
        customer = Customer(
            address=sender.address, name=sender.name, organisation=sender.domain, created_at=utcnow()
        )
        values = {
            column.key: getattr(customer, column.key) for column in CUSTOMER.columns if column.key != "id"
        }
        customer.id = session.connection().execute(_INSERT_CUSTOMER_RETURNING_ID, values).scalar_one()
        return _as_loaded(session, customer)
    if sender.name and not customer.name:
        customer.name = sender.name
    return customer


def _as_loaded(session: Session, instance: _Loaded) -> _Loaded:
    """In the session as if the ORM had loaded it: the ORM's own load or flush of one object
    cost more than the rest of its statements."""
    make_transient_to_detached(instance)
    session.add(instance)
    return instance


def add_case(session: Session, case: Case) -> None:
    """Insert a new case and give it its id: a Core insert, then the object is put in the session
    as loaded."""
    values = {column.key: getattr(case, column.key) for column in CASE.columns if column.key != "id"}
    case.id = session.connection().execute(_INSERT_CASE_RETURNING_ID, values).scalar_one()
    _as_loaded(session, case)


def add_incoming(
    session: Session, origin: Origin, inbound: Inbound, case_id: int | None, role: AuthorRole
) -> int:
    """Record an incoming message and its attachments; returns the message's id."""
    message_id: int = (
        session.connection()
        .execute(
            _INSERT_MESSAGE_RETURNING_ID,
            {
                "case_id": case_id,
                "direction": Direction.IN,
                "author_role": role,
                "mailbox": origin.mailbox,
                "uidvalidity": origin.uidvalidity,
                "uid": origin.uid,
                "dedupe_key": dedupe_key(origin.mailbox, inbound),
                "message_id": inbound.message_id,
                "in_reply_to": inbound.in_reply_to,
                "references": list(inbound.references),
                "from_addr": inbound.sender.address if inbound.sender else "",
                "from_name": inbound.sender.name if inbound.sender else "",
                "to_addrs": [a.address for a in inbound.to],
                "cc_addrs": [a.address for a in inbound.cc],
                "subject": inbound.subject,
                "text": inbound.text,
                "html": inbound.html,
                "raw_sha256": inbound.sha256,
            },
        )
        .scalar_one()
    )
    if inbound.attachments:
        session.connection().execute(
            _INSERT_ATTACHMENT,
            [
                {
                    "message_id": message_id,
                    "filename": item.filename,
                    "content_type": item.content_type,
                    "size": item.size,
                    "sha256": item.sha256,
                }
                for item in inbound.attachments
            ],
        )
    return message_id


def queue_outgoing(
    session: Session, case: Case, outgoing: Outgoing, kind: OutboxKind, role: AuthorRole
) -> None:
    """The outbox row and the matching outgoing Message, so replies to it thread by Message-ID."""
    session.connection().execute(
        _INSERT_MESSAGE,
        {
            "case_id": case.id,
            "direction": Direction.OUT,
            "author_role": role,
            "mailbox": case.department,
            "message_id": outgoing.message_id,
            "from_addr": outgoing.mail_from,
            "to_addrs": list(outgoing.rcpt_to),
            "cc_addrs": [],
            "references": [],
            "subject": outgoing.subject,
            "text": outgoing.text,
        },
    )
    session.connection().execute(
        _INSERT_OUTBOX,
        {
            "case_id": case.id,
            "kind": kind,
            "mail_from": outgoing.mail_from,
            "rcpt_to": list(outgoing.rcpt_to),
            "message_id": outgoing.message_id,
            "data": outgoing.data,
        },
    )


def outbox_by_message_ids(session: Session, message_ids: Sequence[str]) -> list[OutboxMessage]:
    """Our outgoing mail named by these Message-IDs (what a bounce says it returns)."""
    if not message_ids:
        return []
    return list(
        session.exec(
            select(OutboxMessage)
            .where(col(OutboxMessage.message_id).in_(message_ids))
            .order_by(col(OutboxMessage.id))
        ).all()
    )


def acknowledgements_to(session: Session, customer_id: int, since: datetime, at_most: int) -> int:
    """Acknowledgements queued since then for this customer's cases, counted up to `at_most`: a
    sender over its limit costs no more to check than one under it."""
    params = {"customer_id": customer_id, "since": since, "at_most": at_most}
    return session.connection().execute(_ACKNOWLEDGEMENTS_SINCE, params).scalar_one()


def record(
    session: Session,
    kind: EventKind,
    detail: str,
    *,
    case_id: int | None = None,
    message_id: int | None = None,
    mailbox: str = "",
    **data: Any,
) -> None:
    """An event of the session's transaction: written with the transaction's other events, in one
    statement as it commits, and gone with it if it rolls back. A message records several;
    nothing reads them before the commit."""
    if not session.in_transaction():
        session.connection()  # begun now, so that its end, however it comes, clears the events
    session.info.setdefault(_EVENTS, []).append(
        {
            "case_id": case_id,
            "message_id": message_id,
            "mailbox": mailbox,
            "kind": kind,
            "detail": detail,
            "data": data,
            "created_at": utcnow(),
        }
    )


@event.listens_for(OrmSession, "before_commit")
def _write_events(session: Session) -> None:
    if events := session.info.pop(_EVENTS, None):
        session.connection().execute(_INSERT_EVENT, events)


@event.listens_for(OrmSession, "after_transaction_end")
def _forget_events(session: Session, transaction: SessionTransaction) -> None:
    if transaction.parent is None:  # the session's own transaction, not a savepoint
        session.info.pop(_EVENTS, None)


def advance_checkpoint(session: Session, origin: Origin) -> None:
    params = {"box": origin.mailbox, "validity": origin.uidvalidity, "uid": origin.uid, "now": utcnow()}
    if session.connection().execute(_ADVANCE_CHECKPOINT, params).rowcount == 1:  # type: ignore[attr-defined]
        return  # the usual case; a first message or a new UIDVALIDITY goes on below
    state = session.get(MailboxState, origin.mailbox)
    if state is None or state.uidvalidity != origin.uidvalidity:
        state = state or MailboxState(mailbox=origin.mailbox)
        state.uidvalidity = origin.uidvalidity
        state.last_uid = 0
    state.last_uid = max(state.last_uid, origin.uid)
    state.last_poll_at = utcnow()
    session.add(state)


def checkpoint(session: Session, mailbox: str) -> MailboxState | None:
    return session.get(MailboxState, mailbox)


def set_checkpoint(session: Session, mailbox: str, uidvalidity: int, last_uid: int) -> None:
    """Where the mailbox's reading starts over: its first start, or a new UIDVALIDITY."""
    state = session.get(MailboxState, mailbox) or MailboxState(mailbox=mailbox)
    state.uidvalidity = uidvalidity
    state.last_uid = last_uid
    session.add(state)


def attempts_of(session: Session, mailbox: str, uidvalidity: int, uids: Sequence[int]) -> dict[int, int]:
    """{UID: tries begun so far} for those of these messages that were tried before."""
    if not uids:
        return {}
    rows = session.exec(
        select(MessageAttempt).where(
            MessageAttempt.mailbox == mailbox,
            MessageAttempt.uidvalidity == uidvalidity,
            col(MessageAttempt.uid).in_(list(uids)),
        )
    ).all()
    return {row.uid: row.attempts for row in rows}


def count_attempt(session: Session, origin: Origin, more: int = 1) -> int:
    """A try of this message begins: `more` is 1, or 0 where the previous one does not count;
    returns how many tries have begun, this one included."""
    key = (origin.mailbox, origin.uidvalidity, origin.uid)
    row = session.get(MessageAttempt, key) or MessageAttempt(
        mailbox=origin.mailbox, uidvalidity=origin.uidvalidity, uid=origin.uid
    )
    row.attempts += more
    row.updated_at = utcnow()
    session.add(row)
    return row.attempts


def forget_attempts(session: Session, mailbox: str, uidvalidity: int, up_to_uid: int) -> None:
    """The attempts of messages the checkpoint has passed (registered or set aside), and of
    any earlier UIDVALIDITY."""
    session.connection().execute(
        MESSAGE_ATTEMPT.delete().where(
            MESSAGE_ATTEMPT.c.mailbox == mailbox,
            (MESSAGE_ATTEMPT.c.uidvalidity != uidvalidity) | (MESSAGE_ATTEMPT.c.uid <= up_to_uid),
        )
    )
