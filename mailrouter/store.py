"""store: the only code that writes rows. `apply` writes a plan; SqlFacts reads what deciding
needs (the case look-ups threading needs, and casework's CaseFacts).

Every function here works inside the caller's session; the caller commits once per message, so a
crash leaves either nothing or everything.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import (
    Connection,
    Engine,
    and_,
    bindparam,
    case,
    delete,
    event,
    exists,
    func,
    insert,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session as OrmSession
from sqlalchemy.orm import SessionTransaction
from sqlmodel import Session, col
from sqlmodel import select as sql_select

from mailrouter.casework import OtherCase, SentMail, SentReport
from mailrouter.compose import original_part
from mailrouter.lease import lock_key
from mailrouter.models import (
    ATTACHMENT,
    CASE,
    CASE_COUNTER,
    CUSTOMER,
    EVENT,
    MAILBOX_STATE,
    MESSAGE,
    MESSAGE_ATTEMPT,
    NEXT_RESPONSE,
    OUTBOX,
    RAW_MESSAGE,
    REPORT_SLOT,
    STATUS_CHANGE,
    Case,
    CaseCounter,
    Event,
    MailboxState,
    Message,
    MessageAttempt,
    OutboxMessage,
    RawMessage,
    utcnow,
)
from mailrouter.parse import Address, Inbound
from mailrouter.plan import (
    DELIVERED,
    CaseView,
    ClockStarted,
    CustomerView,
    Incoming,
    Origin,
    Plan,
    QueuedMail,
    Raw,
    ShownMessage,
)
from mailrouter.prepared import Prepared
from mailrouter.sla import Stage, Target
from mailrouter.thread import CaseRef
from mailrouter.vocabulary import (
    CLOCK_RUNS,
    SENSITIVE_SUBJECT,
    SET_ASIDE,
    WAITING_ON_US,
    AuthorRole,
    CaseStatus,
    Direction,
    EventKind,
    OutboxKind,
    OutboxState,
)

# Append-only rows are written with Core inserts: building and flushing an ORM object for each
# cost more than all the rest of a message's registration (bench/RESULTS.md); the tables are
# models.py's.
# The statements every message runs are built once, with bound parameters: composing a statement
# costs SQLAlchemy more than SQLite takes to run it (bench/RESULTS.md). They run on the session's
# connection, in its transaction: Session.execute would add ORM bookkeeping that Core rows don't
# need, and doubles the cost of a statement. Those that write a message's rows are Prepared: on
# SQLite they go to the driver's cursor, past SQLAlchemy's per-execution work.
_INSERT_CASE_RETURNING_ID = Prepared(insert(CASE).returning(CASE.c.id))
_UPDATE_CASE = Prepared(update(CASE).where(CASE.c.id == bindparam("where_case")))
_INSERT_MESSAGE = Prepared(insert(MESSAGE))
_INSERT_MESSAGE_RETURNING_ID = Prepared(insert(MESSAGE).returning(MESSAGE.c.id))
_INSERT_ATTACHMENT = Prepared(insert(ATTACHMENT))
_INSERT_OUTBOX = Prepared(insert(OUTBOX))
_INSERT_EVENT = Prepared(insert(EVENT))
_INSERT_STATUS_CHANGE = Prepared(insert(STATUS_CHANGE))
_START_CLOCK = Prepared(insert(NEXT_RESPONSE))
_SETTLE_CLOCK = Prepared(
    update(NEXT_RESPONSE)
    .where(NEXT_RESPONSE.c.case_id == bindparam("case"), NEXT_RESPONSE.c.settled_at.is_(None))
    .values(settled_at=bindparam("at"), met=bindparam("met"))
)
_EVENTS = "mailrouter.events"  # a session's events not yet written (Session.info)
_REGISTERED = Prepared(select(MESSAGE.c.id).where(MESSAGE.c.dedupe_key == bindparam("key")))
# One look for both questions: registered already, or another message under its Message-ID?
_SAME_MESSAGE_ID = Prepared(
    select(MESSAGE.c.id, MESSAGE.c.dedupe_key)
    .where(
        MESSAGE.c.message_id == bindparam("message_id"),
        MESSAGE.c.mailbox == bindparam("mailbox"),
        MESSAGE.c.direction == Direction.IN,
    )
    .limit(100)
)
_KEEP_RAW = {
    dialect: Prepared(insert_for(RAW_MESSAGE).on_conflict_do_nothing(index_elements=["sha256"]))
    for dialect, insert_for in (("sqlite", sqlite_insert), ("postgresql", postgresql_insert))
}
# From this size on, SQLite gets the raw bytes written into a zero-filled row of their length
# rather than bound: it copies a bound blob, and its cached statement keeps that copy until the
# statement's next use (bench/RESULTS.md: a 25 MB mail stayed 25 MB more resident).
STREAMED_RAW = 1024 * 1024
_KEEP_RAW_STREAMED = (
    sqlite_insert(RAW_MESSAGE)
    .values(data=func.zeroblob(bindparam("length")))
    .on_conflict_do_nothing(index_elements=["sha256"])
)
_CLAIM_REPORT_SLOT = {
    # RETURNING says whether the row went in: psycopg reports no rowcount for ON CONFLICT.
    dialect: insert_for(REPORT_SLOT)
    .on_conflict_do_nothing(index_elements=["report", "slot_at"])
    .returning(REPORT_SLOT.c.report)
    for dialect, insert_for in (("sqlite", sqlite_insert), ("postgresql", postgresql_insert))
}
_REPORT_SLOT = select(REPORT_SLOT.c.claimed_by).where(
    REPORT_SLOT.c.report == bindparam("report"), REPORT_SLOT.c.slot_at == bindparam("slot_at")
)
_CUSTOMER_BY_ADDRESS = Prepared(select(CUSTOMER).where(CUSTOMER.c.address == bindparam("address")))
_INSERT_CUSTOMER_RETURNING_ID = Prepared(insert(CUSTOMER).returning(CUSTOMER.c.id))
_ADVANCE_CHECKPOINT = Prepared(  # same UIDVALIDITY: the UID only ever grows
    update(MAILBOX_STATE)
    .where(MAILBOX_STATE.c.mailbox == bindparam("box"), MAILBOX_STATE.c.uidvalidity == bindparam("validity"))
    .values(
        last_uid=case(
            (MAILBOX_STATE.c.last_uid < bindparam("uid"), bindparam("uid")), else_=MAILBOX_STATE.c.last_uid
        ),
        last_poll_at=bindparam("now"),
    )
)


_CUSTOMER_COLUMNS = (
    CUSTOMER.c.id.label("customer_id_"),
    CUSTOMER.c.address.label("customer_address"),
    CUSTOMER.c.name.label("customer_name"),
    CUSTOMER.c.organisation.label("customer_organisation"),
)
_CASE_WITH_CUSTOMER = CASE.outerjoin(CUSTOMER, CUSTOMER.c.id == CASE.c.customer_id)
_CASE_VIEW = (*CASE.columns, *_CUSTOMER_COLUMNS)
_CASE_BY_NUMBER = Prepared(
    select(*_CASE_VIEW).select_from(_CASE_WITH_CUSTOMER).where(CASE.c.number == bindparam("number"))
)
_CASE_BY_ID = Prepared(
    select(*_CASE_VIEW).select_from(_CASE_WITH_CUSTOMER).where(CASE.c.id == bindparam("case_id"))
)
_CASES_BY_MESSAGE_IDS = (
    select(MESSAGE.c.message_id.label("named_message_id"), *_CASE_VIEW)
    .select_from(MESSAGE.join(_CASE_WITH_CUSTOMER, CASE.c.id == MESSAGE.c.case_id))
    .where(MESSAGE.c.message_id.in_(bindparam("message_ids", expanding=True)))
)
# Acknowledgements are queued only as their case is created, so the cases created since then are
# the only ones to look at: ix_case_customer_id_created_at finds them, however long the sender's
# history (joining all of a sender's cases made a frequent sender's every new case slower).
_ACKNOWLEDGEMENTS_SINCE = Prepared(
    select(func.count()).select_from(
        select(OUTBOX.c.id)
        .join(CASE, CASE.c.id == OUTBOX.c.case_id)
        .where(
            CASE.c.customer_id
            == select(CUSTOMER.c.id).where(CUSTOMER.c.address == bindparam("address")).scalar_subquery(),
            CASE.c.created_at >= bindparam("since"),
            OUTBOX.c.kind == OutboxKind.ACKNOWLEDGEMENT,
            OUTBOX.c.created_at >= bindparam("since"),
        )
        .limit(bindparam("at_most"))
        .subquery()
    )
)
# A case not yet inserted has no id: 0 leaves nothing out (ids start at 1).
_OTHER_CASES = Prepared(
    select(
        CASE.c.number,
        CASE.c.status,
        case((CASE.c.sensitive, SENSITIVE_SUBJECT), else_=CASE.c.subject).label("subject"),
    )
    .where(CASE.c.customer_id == bindparam("customer_id"), CASE.c.id != bindparam("case_id"))
    .where(or_(CASE.c.status != CaseStatus.CLOSED, CASE.c.created_at > bindparam("recent")))
    .order_by(CASE.c.id.desc())
    .limit(10)
)
_CONVERSATION = Prepared(
    select(*(MESSAGE.c[name] for name in ("id", "received_at", "author_role", "from_addr", "from_name")))
    .add_columns(MESSAGE.c.subject, MESSAGE.c.text)
    .where(MESSAGE.c.case_id == bindparam("case_id"), MESSAGE.c.direction == Direction.IN)
    .order_by(MESSAGE.c.id)
)
_CONVERSATION_ATTACHMENTS = Prepared(
    select(ATTACHMENT.c.message_id, ATTACHMENT.c.filename)
    .join(MESSAGE, MESSAGE.c.id == ATTACHMENT.c.message_id)
    .where(MESSAGE.c.case_id == bindparam("case_id"))
    .order_by(ATTACHMENT.c.id)
)
# From the open cases, not from the organisation's customers: those have every case they ever
# opened, and the open ones are what is counted (the correlated EXISTS keeps SQLite to that order).
_ORGANISATION_OPEN_CASES = Prepared(
    select(func.count()).select_from(
        select(CASE.c.id)
        .where(or_(*(CASE.c.status == status for status in WAITING_ON_US)))
        .where(CASE.c.id != bindparam("case_id"))
        .where(
            exists().where(
                CUSTOMER.c.id == CASE.c.customer_id, CUSTOMER.c.organisation == bindparam("organisation")
            )
        )
        .limit(bindparam("at_most"))
        .subquery()
    )
)
# Budgets against forged senders: the window's acknowledgements in all (by created_at) and to a
# domain (by domain, created_at), each counted from its covering index. kind is the index's last
# column, not its first, so that no query on the outbox's kind alone is planned through them.
_ACKNOWLEDGEMENTS_IN_ALL = Prepared(
    select(func.count()).select_from(
        select(OUTBOX.c.id)
        .where(OUTBOX.c.created_at >= bindparam("since"), OUTBOX.c.kind == OutboxKind.ACKNOWLEDGEMENT)
        .limit(bindparam("at_most"))
        .subquery()
    )
)
_ACKNOWLEDGEMENTS_TO_DOMAIN = Prepared(
    select(func.count()).select_from(
        select(OUTBOX.c.id)
        .where(
            OUTBOX.c.domain == bindparam("domain"),
            OUTBOX.c.created_at >= bindparam("since"),
            OUTBOX.c.kind == OutboxKind.ACKNOWLEDGEMENT,
        )
        .limit(bindparam("at_most"))
        .subquery()
    )
)

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ON_CASE = Prepared(
    select(MESSAGE.c.id)
    .where(
        MESSAGE.c.case_id == bindparam("case_id"),
        MESSAGE.c.message_id == bindparam("message_id"),
        MESSAGE.c.direction == Direction.IN,
    )
    .limit(1)
)
# Strangers' and forged agents' mail is on the case too, and makes nobody part of it.
_ADDRESSES_ON_CASE = Prepared(
    select(MESSAGE.c.from_addr, MESSAGE.c.to_addrs, MESSAGE.c.cc_addrs).where(
        MESSAGE.c.case_id == bindparam("case_id"),
        MESSAGE.c.author_role != AuthorRole.STRANGER,  # two comparisons, not NOT IN: no list
        MESSAGE.c.author_role != AuthorRole.EXTERNAL,  # to expand, so it can be prepared
    )
)
_MESSAGES_FROM = Prepared(
    select(func.count()).select_from(
        select(MESSAGE.c.id)
        .where(
            MESSAGE.c.case_id == bindparam("case_id"),
            MESSAGE.c.from_addr == bindparam("address"),
            MESSAGE.c.direction == Direction.IN,
            MESSAGE.c.received_at >= bindparam("since"),
        )
        .limit(bindparam("at_most"))
        .subquery()
    )
)
_REMOVED_PARTICIPANTS = Prepared(
    select(EVENT.c.data).where(
        EVENT.c.case_id == bindparam("case_id"), EVENT.c.kind == EventKind.PARTICIPANT_REMOVED
    )
)
_LAST_CUSTOMER_MESSAGE = Prepared(
    select(MESSAGE.c.message_id, MESSAGE.c.references, MESSAGE.c.to_addrs, MESSAGE.c.cc_addrs)
    .where(
        MESSAGE.c.case_id == bindparam("case_id"),
        MESSAGE.c.direction == Direction.IN,
        MESSAGE.c.author_role == AuthorRole.CUSTOMER,
    )
    .order_by(MESSAGE.c.id.desc())
    .limit(1)
)
_SENT_BY_MESSAGE_IDS = (
    select(OUTBOX.c.id, OUTBOX.c.case_id, OUTBOX.c.kind, OUTBOX.c.rcpt_to, OUTBOX.c.message_id)
    .where(OUTBOX.c.message_id.in_(bindparam("message_ids", expanding=True)), OUTBOX.c.case_id.is_not(None))
    .where(OUTBOX.c.state.in_([OutboxState.SENT, OutboxState.SENDING]))  # what the relay took
    .order_by(OUTBOX.c.id)
)
_REPORTS_BY_MESSAGE_IDS = (
    select(OUTBOX.c.id, OUTBOX.c.rcpt_to, OUTBOX.c.message_id)
    .where(OUTBOX.c.message_id.in_(bindparam("message_ids", expanding=True)), OUTBOX.c.case_id.is_(None))
    .where(OUTBOX.c.kind == OutboxKind.REPORT)
    .order_by(OUTBOX.c.id)
)
_MARK_BOUNCED = Prepared(
    update(OUTBOX)
    .where(OUTBOX.c.id == bindparam("row"))
    .values(state=OutboxState.BOUNCED, last_error=bindparam("error"))
)
# Core, not the ORM's bulk UPDATE (that evaluates the WHERE against the session).
_NEXT_NUMBER = Prepared(
    update(CASE_COUNTER)
    .where(CASE_COUNTER.c.prefix == bindparam("for_prefix"))
    .values(last_number=CASE_COUNTER.c.last_number + 1)
    .returning(CASE_COUNTER.c.last_number)
)
_FILL_CUSTOMER_NAME = Prepared(
    update(CUSTOMER)
    .where(CUSTOMER.c.id == bindparam("customer"), CUSTOMER.c.name == "")
    .values(name=bindparam("name"))
)
_DUE_FOLLOW_UPS = select(CASE.c.id, CASE.c.follow_up_at).where(CASE.c.follow_up_at <= bindparam("now"))
_CLAIM_FOLLOW_UP = (  # compare-and-set: another instance, or an agent's change, wins
    update(CASE)
    .where(CASE.c.id == bindparam("case_id"), CASE.c.follow_up_at == bindparam("due"))
    .values(follow_up_at=None)
)


SLA_COLUMNS = (
    "sla",
    "first_response_due",
    "first_response_warn",
    "next_response_due",
    "next_response_warn",
    "resolution_due",
    "resolution_warn",
    "warned_first_response_at",
    "breached_first_response_at",
    "warned_next_response_at",
    "breached_next_response_at",
    "warned_resolution_at",
    "breached_resolution_at",
    "sla_paused_at",
    "sla_paused_seconds",
)
CUSTOMER_UPDATE_COLUMNS = (
    "pending_since",
    "customer_heard_at",
    "quiet_reminded_at",
    "survey_message_id",
    "survey_sent_at",
    "survey_answered_at",
    "satisfaction_score",
    "satisfaction_comment",
)
REPORT_COLUMNS = (
    "agent_replies",
    "customer_replied_at",
    "first_response_seconds",
    "first_response_business_seconds",
    "first_response_met",
    "first_resolved_at",
    "resolution_seconds",
    "resolution_business_seconds",
    "resolution_met",
    "resolution_replies",
    "first_contact_resolution",
    "closed_at",
)


def dedupe_key(mailbox: str, inbound: Inbound) -> str:
    """A message's identity in a mailbox: its Message-ID and what it says. Scanners and scripts
    reuse one Message-ID for different mail; a copy of the same mail (a UIDVALIDITY reset, a
    second delivery with other trace headers) says the same."""
    if not inbound.message_id:
        return f"{mailbox}:sha256:{inbound.sha256}"
    content = hashlib.sha256()
    for part in (
        inbound.sender.address if inbound.sender else "",
        inbound.subject,
        inbound.text,
        *(a.sha256 for a in inbound.attachments),
    ):
        content.update(part.encode("utf-8", "surrogateescape") + b"\0")
    return f"{mailbox}:{inbound.message_id}:{content.hexdigest()[:24]}"


def _earlier_keys(mailbox: str, inbound: Inbound) -> list[str]:
    """The keys this message may have been registered under: today's, and the Message-ID alone
    that versions before content-aware identity wrote."""
    keys = [dedupe_key(mailbox, inbound)]
    if inbound.message_id:
        keys.append(f"{mailbox}:{inbound.message_id}")
    return keys


def _case_view(row: Any) -> CaseView:
    values = row._asdict()
    customer = None
    if values["customer_id_"] is not None:
        customer = CustomerView(
            values["customer_id_"],
            values["customer_address"],
            values["customer_name"],
            values["customer_organisation"],
        )
    return CaseView(
        id=values["id"],
        number=values["number"],
        department=values["department"],
        subject=values["subject"],
        status=values["status"],
        priority=values["priority"],
        category=values["category"],
        group=values["group"],
        assignee=values["assignee"],
        tags=tuple(values["tags"]),
        language=values["language"],
        created_at=values["created_at"],
        updated_at=values["updated_at"],
        first_response_at=values["first_response_at"],
        resolved_at=values["resolved_at"],
        follow_up_at=values["follow_up_at"],
        related_case_id=values["related_case_id"],
        sensitive=values["sensitive"],
        customer=customer,
        **{column: values[column] for column in (*SLA_COLUMNS, *CUSTOMER_UPDATE_COLUMNS, *REPORT_COLUMNS)},
    )


def _case_ref(view: CaseView) -> CaseRef:
    return CaseRef(
        view.id or 0,
        view.number,
        view.department,
        view.status,
        view.customer.address if view.customer else "",
    )


class SqlFacts:
    """What deciding reads of the desk, in the message's transaction. A case read for threading
    is kept, so casework's look at it costs no second query."""

    def __init__(self, session: Session) -> None:
        self.connection = session.connection()
        self._cases: dict[int, CaseView] = {}

    def _keep(self, row: Any) -> CaseView | None:
        if row is None:
            return None
        view = self._cases[row.id] = _case_view(row)
        return view

    # thread.CaseLookup
    def case_by_number(self, number: str) -> CaseRef | None:
        view = self._keep(_CASE_BY_NUMBER.first(self.connection, {"number": number}))
        return _case_ref(view) if view else None

    def case_by_message_ids(self, message_ids: Sequence[str]) -> CaseRef | None:
        """The case of the nearest message named: message_ids are ordered nearest first."""
        rows = self.connection.execute(_CASES_BY_MESSAGE_IDS, {"message_ids": list(message_ids)}).all()
        by_id = {row.named_message_id: row for row in rows}
        for message_id in message_ids:
            if message_id in by_id:
                view = self._keep(by_id[message_id])
                return _case_ref(view) if view else None
        return None

    # for the intake
    def case(self, case_id: int) -> CaseView:
        if case_id not in self._cases:
            row = _CASE_BY_ID.first(self.connection, {"case_id": case_id})
            assert row is not None, "the case a message was threaded to"
            self._keep(row)
        return self._cases[case_id]

    def identity(self, mailbox: str, inbound: Inbound) -> tuple[int | None, int | None]:
        """(the id of this message if the mailbox registered it already, the id of another
        message the mailbox registered under the same Message-ID)."""
        if not inbound.message_id:
            row = _REGISTERED.first(self.connection, {"key": dedupe_key(mailbox, inbound)})
            return None if row is None else row.id, None
        keys = _earlier_keys(mailbox, inbound)
        params = {"message_id": inbound.message_id, "mailbox": mailbox}
        rows = _SAME_MESSAGE_ID.all(self.connection, params)
        registered = next((row.id for row in rows if row.dedupe_key in keys), None)
        return registered, None if registered is not None or not rows else rows[0].id

    def customer(self, sender: Address) -> CustomerView:
        """The sender as a customer: on record, or as their first mail will record them (a name
        they give later fills an empty one)."""
        row = _CUSTOMER_BY_ADDRESS.first(self.connection, {"address": sender.address})
        if row is None:
            return CustomerView(None, sender.address, sender.name, sender.domain)
        return CustomerView(row.id, row.address, row.name or sender.name, row.organisation)

    def sent_reports(self, message_ids: Sequence[str]) -> list[SentReport]:
        """Our report mails named by these Message-IDs (what a lead's reply answers)."""
        rows = self.connection.execute(_REPORTS_BY_MESSAGE_IDS, {"message_ids": list(message_ids)}).all()
        return [SentReport(r.id, tuple(r.rcpt_to), r.message_id) for r in rows]

    def sent_mail(self, message_ids: Sequence[str]) -> list[SentMail]:
        """Our outgoing mail named by these Message-IDs (what a bounce says it returns)."""
        if not message_ids:
            return []
        rows = self.connection.execute(_SENT_BY_MESSAGE_IDS, {"message_ids": list(message_ids)}).all()
        return [SentMail(r.id, r.case_id, r.kind, tuple(r.rcpt_to), r.message_id) for r in rows]

    # casework.CaseFacts
    def other_cases(self, customer_id: int, case_id: int | None, since: datetime) -> list[OtherCase]:
        params = {"customer_id": customer_id, "case_id": case_id or 0, "recent": since}
        return [OtherCase(*row) for row in _OTHER_CASES.all(self.connection, params)]

    def organisation_open_cases(self, organisation: str, case_id: int | None, at_most: int) -> int:
        params = {"case_id": case_id or 0, "organisation": organisation, "at_most": at_most}
        return int(_ORGANISATION_OPEN_CASES.scalar(self.connection, params))

    def conversation(self, case_id: int) -> list[ShownMessage]:
        attachments: dict[int, list[str]] = {}
        for message_id, filename in _CONVERSATION_ATTACHMENTS.all(self.connection, {"case_id": case_id}):
            attachments.setdefault(message_id, []).append(filename)
        return [
            ShownMessage(
                row.received_at,
                row.author_role,
                row.from_addr,
                row.from_name,
                row.subject,
                row.text,
                tuple(attachments.get(row.id, ())),
            )
            for row in _CONVERSATION.all(self.connection, {"case_id": case_id})
        ]

    def last_customer_message(self, case_id: int) -> tuple[str, tuple[str, ...], tuple[str, ...]] | None:
        row = _LAST_CUSTOMER_MESSAGE.first(self.connection, {"case_id": case_id})
        if row is None:
            return None
        return row.message_id, tuple(row.references), (*row.to_addrs, *row.cc_addrs)

    def removed_participants(self, case_id: int) -> frozenset[str]:
        rows = _REMOVED_PARTICIPANTS.all(self.connection, {"case_id": case_id})
        return frozenset(str(data.get("address", "")) for (data,) in rows)

    def acknowledgements_to_domain(self, domain: str, since: datetime, at_most: int) -> int:
        params = {"domain": domain, "since": since, "at_most": at_most}
        return int(_ACKNOWLEDGEMENTS_TO_DOMAIN.scalar(self.connection, params))

    def acknowledgements_since(self, since: datetime, at_most: int) -> int:
        return int(_ACKNOWLEDGEMENTS_IN_ALL.scalar(self.connection, {"since": since, "at_most": at_most}))

    def already_on_case(self, case_id: int, message_id: str) -> bool:
        """An incoming message with this Message-ID is on the case (through any mailbox)."""
        if not message_id:
            return False
        params = {"case_id": case_id, "message_id": message_id}
        return _ON_CASE.first(self.connection, params) is not None

    def addresses_on_case(self, case_id: int) -> frozenset[str]:
        """Everyone a message of the case came from or went to: who may take part in it."""
        found: set[str] = set()
        for row in _ADDRESSES_ON_CASE.all(self.connection, {"case_id": case_id}):
            found.add(row.from_addr)
            found.update(row.to_addrs)
            found.update(row.cc_addrs)
        return frozenset(a.lower() for a in found if a)

    def messages_from(self, case_id: int, address: str, since: datetime | None, at_most: int) -> int:
        """This sender's incoming messages on the case (since then), counted up to `at_most`."""
        params = {"case_id": case_id, "address": address, "since": since or _EPOCH, "at_most": at_most}
        return int(_MESSAGES_FROM.scalar(self.connection, params))

    def acknowledgements_to(self, address: str, since: datetime, at_most: int) -> int:
        """Acknowledgements queued since then for this sender's cases, counted up to `at_most`: a
        sender over its limit costs no more to check than one under it."""
        params = {"address": address, "since": since, "at_most": at_most}
        return int(_ACKNOWLEDGEMENTS_SINCE.scalar(self.connection, params))


def next_case_number(session: Session, prefix: str) -> str:
    """The next number for the prefix, unique and never reused: it rolls back with its case."""
    return f"{prefix}-{_NEXT_NUMBER.scalar(session.connection(), {'for_prefix': prefix})}"


def apply(session: Session, plan: Plan) -> None:
    """Write a plan: raw copy, customer, case, status changes, next-response clocks, message,
    bounces, queued mail, events, checkpoint.
    Core statements built once, on the session's connection: ORM objects for each row cost more
    than the rest of a message's registration (bench/RESULTS.md)."""
    connection = session.connection()
    if plan.raw is not None:
        keep_raw(session, plan.raw)
    case_id = plan.case.id if plan.case else None
    if plan.case is not None and case_id is None:
        case_id = _insert_case(connection, plan.case, _customer_id(connection, plan))
    elif plan.changes:
        values = {key: list(value) if key == "tags" else value for key, value in plan.changes.items()}
        _UPDATE_CASE.rowcount(connection, {**values, "where_case": case_id})
    if plan.transitions:
        assert case_id is not None, "a status changes on a case"
        _INSERT_STATUS_CHANGE.many(
            connection,
            [
                {"case_id": case_id, "at": t.at, "from_status": t.from_status, "to_status": t.to_status}
                for t in plan.transitions
            ],
        )
    for clock in plan.next_responses:
        assert case_id is not None, "a next-response clock runs on a case"
        if isinstance(clock, ClockStarted):
            _START_CLOCK.rowcount(connection, {"case_id": case_id, "started_at": clock.at, "due": clock.due})
        else:
            _SETTLE_CLOCK.rowcount(connection, {"case": case_id, "at": clock.at, "met": clock.met})
    message_id = None
    if plan.incoming is not None:
        message_id = _insert_incoming(connection, plan.incoming, case_id if plan.incoming.on_case else None)
    for bounce in plan.bounces:
        _MARK_BOUNCED.rowcount(connection, {"row": bounce.outbox_id, "error": bounce.error})
    if plan.mail:
        assert plan.case is not None and case_id is not None, "mail is queued on a case"
        for mail in plan.mail:
            _queue(connection, case_id, plan.case, mail, plan.raw)
    for planned in plan.events:
        record(
            session,
            planned.kind,
            planned.detail,
            case_id=case_id if planned.on_case else planned.case_id,
            message_id=message_id if planned.about_message else None,
            mailbox=planned.mailbox,
            **planned.data,
        )
    if plan.checkpoint is not None:
        advance_checkpoint(session, plan.checkpoint)


def _customer_id(connection: Connection, plan: Plan) -> int | None:
    assert plan.case is not None
    known = plan.case.customer
    if known is None or plan.customer is None:
        return None
    if known.id is None:
        values = {"address": known.address, "name": known.name, "organisation": known.organisation}
        customer_id: int = _INSERT_CUSTOMER_RETURNING_ID.scalar(
            connection, {**values, "created_at": plan.case.created_at}
        )
        return customer_id
    if plan.customer.name:
        _FILL_CUSTOMER_NAME.rowcount(connection, {"customer": known.id, "name": plan.customer.name})
    return known.id


def _insert_case(connection: Connection, case: CaseView, customer_id: int | None) -> int:
    values = {
        "number": case.number,
        "department": case.department,
        "subject": case.subject,
        "status": case.status,
        "priority": case.priority,
        "category": case.category,
        "group": case.group,
        "assignee": case.assignee,
        "tags": list(case.tags),
        "language": case.language,
        "customer_id": customer_id,
        "created_at": case.created_at,
        "updated_at": case.updated_at,
        "first_response_at": case.first_response_at,
        "resolved_at": case.resolved_at,
        "follow_up_at": case.follow_up_at,
        "related_case_id": case.related_case_id,
        "sensitive": case.sensitive,
        **{
            column: getattr(case, column)
            for column in (*SLA_COLUMNS, *CUSTOMER_UPDATE_COLUMNS, *REPORT_COLUMNS)
        },
    }
    case_id: int = _INSERT_CASE_RETURNING_ID.scalar(connection, values)
    return case_id


def _insert_incoming(connection: Connection, incoming: Incoming, case_id: int | None) -> int:
    """An incoming message and its attachments; returns the message's id."""
    inbound, origin = incoming.inbound, incoming.origin
    message_id: int = _INSERT_MESSAGE_RETURNING_ID.scalar(
        connection,
        {
            "case_id": case_id,
            "direction": Direction.IN,
            "author_role": incoming.role,
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
    if inbound.attachments:
        _INSERT_ATTACHMENT.many(
            connection,
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


def _queue(connection: Connection, case_id: int, case: CaseView, mail: QueuedMail, raw: Raw | None) -> None:
    """The outbox row and the matching outgoing Message, so replies to it thread by Message-ID.
    An attached original is the plan's own raw message: the row refers to it, not a copy."""
    customer = case.customer
    domain = customer.domain if mail.kind is OutboxKind.ACKNOWLEDGEMENT and customer is not None else None
    outgoing = mail.outgoing
    data, original_sha256 = outgoing.data, None
    if outgoing.original_at is not None:
        assert raw is not None, "the attached original is the plan's raw message"
        data = without_original(outgoing.data, outgoing.original_at, raw.data)
        original_sha256 = raw.sha256
    _INSERT_MESSAGE.rowcount(
        connection,
        {
            "case_id": case_id,
            "direction": Direction.OUT,
            "author_role": mail.role,
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
    _INSERT_OUTBOX.rowcount(
        connection,
        {
            "case_id": case_id,
            "kind": mail.kind,
            "mail_from": outgoing.mail_from,
            "rcpt_to": list(outgoing.rcpt_to),
            "message_id": outgoing.message_id,
            "data": data,
            "original_sha256": original_sha256,
            "original_at": outgoing.original_at,
            "domain": domain,
        },
    )


def without_original(data: bytes, at: int, raw: bytes) -> bytes:
    part = original_part(raw)
    assert data[at : at + len(part)] == part, "the original sits where compose said"
    return data[:at] + data[at + len(part) :]


def with_original(data: bytes, at: int, raw: bytes) -> bytes:
    """The letter as composed: its original back in place."""
    return data[:at] + original_part(raw) + data[at:]


def queue_letter(
    session: Session, kind: OutboxKind, mail_from: str, rcpt_to: list[str], message_id: str, data: bytes
) -> None:
    """A letter about the installation itself (an alert to ops, a scheduled report), not a case."""
    _INSERT_OUTBOX.rowcount(
        session.connection(),
        {
            "case_id": None,
            "kind": kind,
            "mail_from": mail_from,
            "rcpt_to": rcpt_to,
            "message_id": message_id,
            "data": data,
        },
    )


def claim_report_slot(session: Session, report: str, slot_at: datetime, instance: str) -> bool:
    """Take a report's slot for this instance, in the session's transaction; False when another
    instance has it (or had it, before a restart). On PostgreSQL a second instance's insert waits
    for the first one's transaction, and then finds the slot taken."""
    statement = _CLAIM_REPORT_SLOT[session.get_bind().dialect.name]
    claimed = session.connection().execute(
        statement, {"report": report, "slot_at": slot_at, "claimed_by": instance, "created_at": utcnow()}
    )
    return claimed.first() is not None


def release_report_slot(session: Session, report: str, slot_at: datetime, instance: str) -> None:
    """Give back a slot this instance took for work that then failed, so that it is tried again."""
    session.connection().execute(
        delete(REPORT_SLOT).where(
            REPORT_SLOT.c.report == report,
            REPORT_SLOT.c.slot_at == slot_at,
            REPORT_SLOT.c.claimed_by == instance,
        )
    )


def latest_report_slot(session: Session, report: str) -> datetime | None:
    """The report's last slot taken, sent or recorded as missed; None for a report never run."""
    statement = select(func.max(REPORT_SLOT.c.slot_at)).where(REPORT_SLOT.c.report == report)
    latest = session.connection().execute(statement).scalar_one()
    return _aware(latest) if latest is not None else None


def report_slot_taken(session: Session, report: str, slot_at: datetime) -> str | None:
    """The instance that took the slot, if one did: a report is not drawn again for nothing."""
    return session.connection().execute(_REPORT_SLOT, {"report": report, "slot_at": slot_at}).scalar()


def keep_raw(session: Session, raw: Raw) -> None:
    """Content-addressed: the same bytes seen again (a duplicate, a retry) are kept once."""
    connection = session.connection()
    dialect = connection.dialect.name
    if dialect == "sqlite" and len(raw.data) >= STREAMED_RAW:
        kept = connection.execute(
            _KEEP_RAW_STREAMED, {"sha256": raw.sha256, "size": len(raw.data), "length": len(raw.data)}
        )
        if kept.rowcount:
            sqlite = connection.connection.driver_connection
            assert sqlite is not None, "a connection in a transaction has its driver's connection"
            with sqlite.blobopen(RAW_MESSAGE.name, "data", kept.lastrowid) as blob:
                blob.write(raw.data)
        return
    _KEEP_RAW[dialect].rowcount(connection, {"sha256": raw.sha256, "size": len(raw.data), "data": raw.data})


def due_follow_ups(session: Session, now: datetime) -> list[tuple[int, datetime]]:
    return [(row.id, row.follow_up_at) for row in session.connection().execute(_DUE_FOLLOW_UPS, {"now": now})]


def claim_follow_up(session: Session, case_id: int, due: datetime) -> bool:
    """Take a due follow-up for this instance; False when another instance, or an agent's
    change, came first."""
    claimed = session.connection().execute(_CLAIM_FOLLOW_UP, {"case_id": case_id, "due": due})
    return bool(claimed.rowcount == 1)


def claim_credential_warning(session: Session, credential: str, since: datetime) -> bool:
    """Take the warning about credential's expiry for the window that began `since`; False when
    an instance has given it already. On PostgreSQL a transaction-level advisory lock makes the
    instances ask one after another, each seeing the others' committed events (SQLite has one)."""
    if session.get_bind().dialect.name == "postgresql":
        key = lock_key(credential, "credential-warning")
        session.connection().execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": key})
    given = session.exec(
        sql_select(Event.id).where(
            Event.kind == EventKind.CREDENTIAL_EXPIRING,
            col(Event.created_at) >= since,
            col(Event.detail).startswith(f"oauth2.{credential}:"),
        )
    ).first()
    return given is None


def _sla_running(target: Target) -> list[Any]:
    """The conditions under which a case's target is running (its clock not stopped, not met)."""
    conditions = [CASE.c.status.in_(list(CLOCK_RUNS)), CASE.c[f"{target.column}_due"].is_not(None)]
    if target == Target.FIRST_RESPONSE:
        conditions.append(CASE.c.first_response_at.is_(None))
    return conditions


def _sla_due(target: Target, stage: Stage, now: datetime) -> list[Any]:
    """The conditions under which a target's warning or breach is due and not yet taken."""
    column = target.column
    due, breached = CASE.c[f"{column}_due"], CASE.c[f"breached_{column}_at"]
    conditions = [*_sla_running(target), breached.is_(None)]
    if stage == Stage.BREACH:
        return [*conditions, due <= now]
    warn, warned = CASE.c[f"{column}_warn"], CASE.c[f"warned_{column}_at"]
    return [*conditions, warned.is_(None), warn <= now, due > now]


def due_sla(session: Session, now: datetime) -> list[tuple[int, Target, Stage]]:
    """Every warning and breach that has fallen due, breaches first."""
    connection = session.connection()
    return [
        (case_id, target, stage)
        for stage in (Stage.BREACH, Stage.WARNING)
        for target in Target
        for case_id in connection.execute(select(CASE.c.id).where(*_sla_due(target, stage, now))).scalars()
    ]


@dataclass(frozen=True)
class Watched:
    """A case whose SLA target is the nearest to falling due, or past it: what a wall screen may
    show of it (nothing a customer wrote)."""

    number: str
    department: str
    priority: str
    owner: str  # the assignee, else the group
    target: Target
    due: datetime


def sla_watch(session: Session, departments: Sequence[str], limit: int) -> tuple[list[Watched], int]:
    """The `limit` running targets due soonest (overdue ones first, being the soonest) in these
    departments, one query per target on its due-time index; sensitive cases are not listed, only
    counted (the second value: those with a running target)."""
    connection = session.connection()
    found = []
    for target in Target:
        due = CASE.c[f"{target.column}_due"]
        statement = (
            select(CASE.c.number, CASE.c.department, CASE.c.priority, CASE.c.assignee, CASE.c.group, due)
            .where(*_sla_running(target), CASE.c.department.in_(departments), CASE.c.sensitive.is_(False))
            .order_by(due)
            .limit(limit)
        )
        found += [
            Watched(row.number, row.department, row.priority, row.assignee or row.group, target, row[5])
            for row in connection.execute(statement)
        ]
    running = or_(*(and_(*_sla_running(t)) for t in Target))
    sensitive = select(func.count()).where(running, CASE.c.department.in_(departments), CASE.c.sensitive)
    return sorted(found, key=lambda watched: watched.due)[:limit], int(
        connection.execute(sensitive).scalar_one()
    )


def sla_late(session: Session, departments: Sequence[str], now: datetime) -> dict[str, int]:
    """Per department, the cases with a running target past its due time."""
    late = or_(*(and_(*_sla_running(t), CASE.c[f"{t.column}_due"] <= now) for t in Target))
    statement = (
        select(CASE.c.department, func.count())
        .where(late, CASE.c.department.in_(departments))
        .group_by(CASE.c.department)
    )
    return {department: count for department, count in session.connection().execute(statement)}


def claim_sla(session: Session, case_id: int, target: Target, stage: Stage, now: datetime) -> bool:
    """Take a due warning or breach for this instance, compare-and-set on its still being due
    and untaken: another instance, or an agent's answer meanwhile, makes it False. A breach
    marks the target warned too: it is past warning."""
    column = target.column
    warned = CASE.c[f"warned_{column}_at"]
    values: dict[str, Any] = {warned.name: func.coalesce(warned, now)}
    if stage == Stage.BREACH:
        values[f"breached_{column}_at"] = now
    statement = update(CASE).where(CASE.c.id == case_id, *_sla_due(target, stage, now)).values(**values)
    return bool(session.connection().execute(statement).rowcount == 1)


# --- the customer hears how it goes: quiet spells, auto-resolve, auto-close --------------------------
# Each job's cases are found per department (each has its own limits), and each is claimed with a
# compare-and-set in the transaction that applies its plan, so several instances act on it once.


def _quiet(department: str, cutoff: datetime) -> list[Any]:
    """Waiting on us (not on the customer), untold since before `cutoff`, not reminded yet."""
    heard = func.coalesce(CASE.c.customer_heard_at, CASE.c.created_at)
    return [
        CASE.c.department == department,
        CASE.c.status.in_(list(CLOCK_RUNS)),
        CASE.c.quiet_reminded_at.is_(None),
        heard <= cutoff,
    ]


def due_quiet(session: Session, cutoffs: dict[str, datetime]) -> list[tuple[int, str]]:
    """(case, department) of the cases whose customer has heard nothing since their department's cutoff."""
    connection = session.connection()
    return [
        (case_id, department)
        for department, cutoff in cutoffs.items()
        for case_id in connection.execute(select(CASE.c.id).where(*_quiet(department, cutoff))).scalars()
    ]


def claim_quiet(session: Session, case_id: int, department: str, cutoff: datetime, now: datetime) -> bool:
    """Take a quiet case's reminder: once per silence (mail to the customer clears the mark)."""
    statement = (
        update(CASE).where(CASE.c.id == case_id, *_quiet(department, cutoff)).values(quiet_reminded_at=now)
    )
    return bool(session.connection().execute(statement).rowcount == 1)


def due_auto_resolve(session: Session, cutoffs: dict[str, datetime]) -> list[tuple[int, str, datetime]]:
    """(case, department, pending since) of the cases pending since before their department's cutoff."""
    connection = session.connection()
    return [
        (row.id, department, row.pending_since)
        for department, cutoff in cutoffs.items()
        for row in connection.execute(
            select(CASE.c.id, CASE.c.pending_since).where(
                CASE.c.department == department,
                CASE.c.status == CaseStatus.PENDING,
                CASE.c.pending_since <= cutoff,
            )
        )
    ]


def claim_auto_resolve(session: Session, case_id: int, pending_since: datetime) -> bool:
    """Compare-and-set on the case being pending since then still: another instance, or the
    customer's answer meanwhile, makes it False."""
    statement = (
        update(CASE)
        .where(
            CASE.c.id == case_id,
            CASE.c.status == CaseStatus.PENDING,
            CASE.c.pending_since == pending_since,
        )
        .values(pending_since=None)
    )
    return bool(session.connection().execute(statement).rowcount == 1)


def due_auto_close(session: Session, cutoffs: dict[str, datetime]) -> list[tuple[int, datetime]]:
    """(case, last change) of the cases resolved since before their department's cutoff."""
    connection = session.connection()
    return [
        (row.id, row.updated_at)
        for department, cutoff in cutoffs.items()
        for row in connection.execute(
            select(CASE.c.id, CASE.c.updated_at).where(
                CASE.c.department == department,
                CASE.c.status == CaseStatus.RESOLVED,
                CASE.c.resolved_at <= cutoff,
            )
        )
    ]


def claim_auto_close(session: Session, case_id: int, updated_at: datetime, now: datetime) -> bool:
    """Compare-and-set on the case being resolved and unchanged since it was found: another
    instance, or anything happening on it meanwhile (a survey answer), makes it False."""
    statement = (
        update(CASE)
        .where(
            CASE.c.id == case_id,
            CASE.c.status == CaseStatus.RESOLVED,
            CASE.c.updated_at == updated_at,
        )
        .values(updated_at=now)
    )
    return bool(session.connection().execute(statement).rowcount == 1)


def record(
    session: Session,
    kind: EventKind,
    detail: str,
    *,
    case_id: int | None = None,
    message_id: int | None = None,
    mailbox: str = "",
    at: datetime | None = None,
    **data: Any,
) -> None:
    """An event of the session's transaction: written with the transaction's other events, in one
    statement as it commits, and gone with it if it rolls back. A message records several;
    nothing reads them before the commit. `at` dates an event a scheduled job decides for its own
    clock (now, unless given)."""
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
            "created_at": at or utcnow(),
        }
    )


@event.listens_for(OrmSession, "before_commit")
def _write_events(session: Session) -> None:
    if events := session.info.pop(_EVENTS, None):
        _INSERT_EVENT.many(session.connection(), events)


@event.listens_for(OrmSession, "after_transaction_end")
def _forget_events(session: Session, transaction: SessionTransaction) -> None:
    if transaction.parent is None:  # the session's own transaction, not a savepoint
        session.info.pop(_EVENTS, None)


def advance_checkpoint(session: Session, origin: Origin) -> None:
    if origin.uidvalidity == DELIVERED:
        return  # handed over by an MTA: not a position in the mailbox's folder
    params = {"box": origin.mailbox, "validity": origin.uidvalidity, "uid": origin.uid, "now": utcnow()}
    if _ADVANCE_CHECKPOINT.rowcount(session.connection(), params) == 1:
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
        sql_select(MessageAttempt).where(
            MessageAttempt.mailbox == mailbox,
            MessageAttempt.uidvalidity == uidvalidity,
            col(MessageAttempt.uid).in_(list(uids)),
        )
    ).all()
    return {row.uid: row.attempts for row in rows}


def _count_attempt_statement(dialect: str) -> Prepared:
    insert_for = postgresql_insert if dialect == "postgresql" else sqlite_insert
    statement = insert_for(MESSAGE_ATTEMPT).values(
        mailbox=bindparam("mailbox"),
        uidvalidity=bindparam("uidvalidity"),
        uid=bindparam("uid"),
        attempts=bindparam("more"),
        updated_at=bindparam("now"),
    )
    return Prepared(
        statement.on_conflict_do_update(
            index_elements=["mailbox", "uidvalidity", "uid"],
            set_={"attempts": MESSAGE_ATTEMPT.c.attempts + bindparam("more"), "updated_at": bindparam("now")},
        ).returning(MESSAGE_ATTEMPT.c.attempts)
    )


# One statement per try, built once: counting a try with the ORM cost a millisecond a message.
_COUNT_ATTEMPT = {dialect: _count_attempt_statement(dialect) for dialect in ("sqlite", "postgresql")}


def count_attempt(connection: Connection, origin: Origin, more: int = 1) -> int:
    """A try of this message begins: `more` is 1, or 0 where the previous one does not count;
    returns how many tries have begun, this one included. On a bare connection: it commits on
    its own before every message, where a session's bookkeeping cost more than the statement."""
    params = {
        "mailbox": origin.mailbox,
        "uidvalidity": origin.uidvalidity,
        "uid": origin.uid,
        "more": more,
        "now": utcnow(),
    }
    attempts: int = _COUNT_ATTEMPT[connection.dialect.name].scalar(connection, params)
    return attempts


def forget_attempts(session: Session, mailbox: str, uidvalidity: int, up_to_uid: int) -> None:
    """The attempts of messages the checkpoint has passed (registered or set aside), and of
    any earlier UIDVALIDITY."""
    session.connection().execute(
        MESSAGE_ATTEMPT.delete().where(
            MESSAGE_ATTEMPT.c.mailbox == mailbox,
            (MESSAGE_ATTEMPT.c.uidvalidity != uidvalidity) | (MESSAGE_ATTEMPT.c.uid <= up_to_uid),
        )
    )


# --- read queries for the CLI's listings and `status` ----------------------------------------


@dataclass(frozen=True)
class CaseRow:
    number: str
    department: str
    status: CaseStatus
    priority: str
    assignee: str
    group: str
    customer: str
    subject: str
    created_at: datetime


def list_cases(
    session: Session,
    *,
    limit: int,
    status: CaseStatus | None = None,
    department: str | None = None,
    assignee: str | None = None,
    older_than: timedelta | None = None,
) -> list[CaseRow]:
    """The newest cases that pass every filter given, oldest of them first."""
    statement = select(CASE, CUSTOMER.c.address).join(CUSTOMER, isouter=True)
    if status is not None:
        statement = statement.where(CASE.c.status == status)
    if department is not None:
        statement = statement.where(CASE.c.department == department)
    if assignee is not None:
        statement = statement.where(CASE.c.assignee == assignee)
    if older_than is not None:
        statement = statement.where(CASE.c.created_at <= utcnow() - older_than)
    rows = session.connection().execute(statement.order_by(CASE.c.id.desc()).limit(limit)).all()
    return [
        CaseRow(
            number=row.number,
            department=row.department,
            status=CaseStatus(row.status),
            priority=row.priority,
            assignee=row.assignee,
            group=row.group,
            customer=row.address or "",
            subject=row.subject,
            created_at=_aware(row.created_at),
        )
        for row in reversed(rows)
    ]


@dataclass(frozen=True)
class MailboxRecord:
    """What the database knows of a mailbox: its checkpoint and the latest event about it."""

    mailbox: str
    uidvalidity: int | None
    last_uid: int | None
    last_poll_at: datetime | None
    last_event: str  # "kind: detail", or "" when there is none
    last_event_at: datetime | None


def mailbox_records(session: Session, mailboxes: Sequence[str]) -> list[MailboxRecord]:
    records = []
    for name in mailboxes:
        state = session.get(MailboxState, name)
        latest = (
            session.connection()
            .execute(
                select(EVENT.c.kind, EVENT.c.detail, EVENT.c.created_at)
                .where(EVENT.c.mailbox == name, EVENT.c.case_id.is_(None))
                .order_by(EVENT.c.id.desc())
                .limit(1)
            )
            .first()
        )
        records.append(
            MailboxRecord(
                mailbox=name,
                uidvalidity=state.uidvalidity if state else None,
                last_uid=state.last_uid if state else None,
                last_poll_at=_aware(state.last_poll_at) if state and state.last_poll_at else None,
                last_event=f"{latest.kind}: {latest.detail}" if latest else "",
                last_event_at=_aware(latest.created_at) if latest else None,
            )
        )
    return records


def next_follow_up(session: Session) -> datetime | None:
    """When the scheduler's follow-up job next has a reminder to send."""
    due = session.connection().execute(select(func.min(CASE.c.follow_up_at))).scalar_one()
    return _aware(due) if due is not None else None


def _aware(moment: datetime) -> datetime:
    """SQLite returns the stored UTC time without its zone."""
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def next_delivery_uid(engine: Engine, mailbox: str) -> int:
    """A UID for mail an MTA hands over to this mailbox: from a counter of its own (beside the
    case numbers', under a name no case prefix can have), committed at once, so deliveries
    running side by side never share one. A delivery that fails leaves a gap, nothing more."""
    counter = CaseCounter.__table__  # type: ignore[attr-defined]
    prefix = f"deliver:{mailbox}"
    new_counter = (
        postgresql_insert(counter).on_conflict_do_nothing()
        if engine.dialect.name == "postgresql"
        else sqlite_insert(counter).on_conflict_do_nothing()
    )
    with engine.begin() as connection:
        connection.execute(new_counter.values(prefix=prefix, last_number=0))
        uid: int = connection.execute(
            update(counter)
            .where(counter.c.prefix == prefix)
            .values(last_number=counter.c.last_number + 1)
            .returning(counter.c.last_number)
        ).scalar_one()
    return uid


@dataclass(frozen=True)
class CaseRecord:
    """A case with everything on it, for a person to read (`mailrouter show`)."""

    case: Case
    messages: list[Message]
    outbox: list[OutboxMessage]
    events: list[Event]


def case_record(session: Session, number: str) -> CaseRecord | None:
    case = session.exec(sql_select(Case).where(Case.number == number)).first()
    if case is None:
        return None
    return CaseRecord(
        case,
        list(session.exec(sql_select(Message).where(Message.case_id == case.id).order_by(col(Message.id)))),
        list(
            session.exec(
                sql_select(OutboxMessage)
                .where(OutboxMessage.case_id == case.id)
                .order_by(col(OutboxMessage.id))
            )
        ),
        list(session.exec(sql_select(Event).where(Event.case_id == case.id).order_by(col(Event.id)))),
    )


def screened_messages(session: Session, limit: int) -> list[tuple[Message, Event]]:
    """Incoming mail screening kept out of any case, with the event that says why, newest first."""
    rows = session.exec(
        sql_select(Message, Event)
        .join(Event, col(Event.message_id) == Message.id)
        .where(
            col(Message.case_id).is_(None),
            Message.direction == Direction.IN,
            Event.kind == EventKind.SCREENED,
        )
        .order_by(col(Message.id).desc())
        .limit(limit)
    ).all()
    return [(message, event) for message, event in rows]


def set_aside_events(session: Session) -> list[Event]:
    """Quarantine and refusal events that no successful retry has released, oldest first."""
    events = session.exec(
        sql_select(Event).where(col(Event.kind).in_(SET_ASIDE)).order_by(col(Event.id))
    ).all()
    released = {
        e.data.get("quarantine_event")
        for e in session.exec(sql_select(Event).where(Event.kind == EventKind.QUARANTINE_RELEASED)).all()
    }
    return [e for e in events if e.id not in released]


def kept_bytes(session: Session, sha256: str) -> bytes | None:
    raw = session.get(RawMessage, sha256)
    return raw.data if raw is not None else None
