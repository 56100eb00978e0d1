"""store: the writes of one message's transaction, and the case look-ups threading needs.

Every function here works inside the caller's session; the caller commits once per message, so a
crash leaves either nothing or everything.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, insert
from sqlmodel import Session, col, select

from mailrouter.compose import Outgoing
from mailrouter.models import (
    Attachment,
    AuthorRole,
    Case,
    Customer,
    Direction,
    Event,
    MailboxState,
    Message,
    OutboxMessage,
    RawMessage,
    utcnow,
)
from mailrouter.parse import Address, Inbound
from mailrouter.thread import CaseRef

# Append-only rows are written with Core inserts: building and flushing an ORM object for each
# cost more than all the rest of a message's registration (bench/RESULTS.md).
MESSAGE = Message.__table__  # type: ignore[attr-defined]
ATTACHMENT = Attachment.__table__  # type: ignore[attr-defined]
RAW_MESSAGE = RawMessage.__table__  # type: ignore[attr-defined]
OUTBOX = OutboxMessage.__table__  # type: ignore[attr-defined]
EVENT = Event.__table__  # type: ignore[attr-defined]


@dataclass(frozen=True)
class Origin:
    """Where an incoming message was found: the IMAP identity of that copy."""

    mailbox: str
    uidvalidity: int
    uid: int


class SqlCaseLookup:
    def __init__(self, session: Session) -> None:
        self.session = session

    def _ref(self, case: Case | None) -> CaseRef | None:
        if case is None or case.id is None:
            return None
        customer = self.session.get(Customer, case.customer_id) if case.customer_id else None
        return CaseRef(
            case.id, case.number, case.department, case.status, customer.address if customer else ""
        )

    def case_by_number(self, number: str) -> CaseRef | None:
        return self._ref(self.session.exec(select(Case).where(Case.number == number)).first())

    def case_by_message_ids(self, message_ids: Sequence[str]) -> CaseRef | None:
        """The case of the nearest message named: message_ids are ordered nearest first."""
        rows = self.session.exec(
            select(Message.message_id, Message.case_id).where(
                col(Message.message_id).in_(message_ids), col(Message.case_id).is_not(None)
            )
        ).all()
        by_id = {message_id: case_id for message_id, case_id in rows}
        for message_id in message_ids:
            if message_id in by_id:
                return self._ref(self.session.get(Case, by_id[message_id]))
        return None


def dedupe_key(mailbox: str, inbound: Inbound) -> str:
    return f"{mailbox}:{inbound.message_id or 'sha256:' + inbound.sha256}"


def already_registered(session: Session, key: str) -> int | None:
    """The id of the message registered under this key, if any."""
    return session.execute(select(MESSAGE.c.id).where(MESSAGE.c.dedupe_key == key)).scalar()


def keep_raw(session: Session, raw: bytes, sha256: str) -> None:
    if session.execute(select(RAW_MESSAGE.c.sha256).where(RAW_MESSAGE.c.sha256 == sha256)).first() is None:
        session.execute(insert(RAW_MESSAGE), {"sha256": sha256, "size": len(raw), "data": raw})


def customer_for(session: Session, sender: Address) -> Customer:
    customer = session.exec(select(Customer).where(Customer.address == sender.address)).first()
    if customer is None:
        customer = Customer(address=sender.address, name=sender.name, organisation=sender.domain)
        session.add(customer)
        session.flush()
    elif sender.name and not customer.name:
        customer.name = sender.name
    return customer


def add_incoming(
    session: Session, origin: Origin, inbound: Inbound, case_id: int | None, role: AuthorRole
) -> int:
    """Record an incoming message and its attachments; returns the message's id."""
    message_id: int = session.execute(
        insert(MESSAGE).returning(MESSAGE.c.id),
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
    ).scalar_one()
    if inbound.attachments:
        session.execute(
            insert(ATTACHMENT),
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


def queue_outgoing(session: Session, case: Case, outgoing: Outgoing, kind: str, role: AuthorRole) -> None:
    """The outbox row and the matching outgoing Message, so replies to it thread by Message-ID."""
    session.execute(
        insert(MESSAGE),
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
    session.execute(
        insert(OUTBOX),
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


def acknowledgements_to(session: Session, address: str, since: datetime) -> int:
    """Acknowledgements queued since then for cases whose customer is this address."""
    return session.exec(
        select(func.count())
        .select_from(OutboxMessage)
        .join(Case, col(Case.id) == OutboxMessage.case_id)
        .join(Customer, col(Customer.id) == Case.customer_id)
        .where(
            Customer.address == address,
            OutboxMessage.kind == "acknowledgement",
            OutboxMessage.created_at >= since,
        )
    ).one()


def record(
    session: Session,
    kind: str,
    detail: str,
    *,
    case_id: int | None = None,
    message_id: int | None = None,
    mailbox: str = "",
    **data: Any,
) -> None:
    session.execute(
        insert(EVENT),
        {
            "case_id": case_id,
            "message_id": message_id,
            "mailbox": mailbox,
            "kind": kind,
            "detail": detail,
            "data": data,
            "created_at": utcnow(),
        },
    )


def advance_checkpoint(session: Session, origin: Origin) -> None:
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
