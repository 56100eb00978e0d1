"""The tables. Only the storage layer (store, send, fetch checkpoints, CLI reports) touches them.

Times are timezone-aware UTC everywhere.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, Column, Index, LargeBinary, UniqueConstraint
from sqlalchemy.schema import Table
from sqlmodel import Field, SQLModel

from mailrouter.vocabulary import (
    AuthorRole,
    CaseStatus,
    Direction,
    EventKind,
    OutboxKind,
    OutboxState,
    Vocabulary,
)


def utcnow() -> datetime:
    return datetime.now(UTC)


# Python functions, not the builtins list and dict: pydantic inspects a default factory's signature
# on every instantiation, and for a builtin that means parsing its text signature (~0.2 ms each;
# an outgoing Message cost 0.55 ms to construct instead of 0.08 ms).
def _empty_list() -> list[str]:
    return []


def _empty_dict() -> dict[str, Any]:
    return {}


class CaseCounter(SQLModel, table=True):
    """The last number handed out per prefix; incremented inside the registering transaction."""

    prefix: str = Field(primary_key=True)
    last_number: int


class Customer(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    address: str = Field(unique=True, index=True)
    name: str = ""
    organisation: str = Field(default="", index=True)
    created_at: datetime = Field(default_factory=utcnow)


class Case(SQLModel, table=True):
    # A sender's recent cases, for the acknowledgement rate limit, without reading their history.
    __table_args__ = (Index("ix_case_customer_id_created_at", "customer_id", "created_at"),)

    id: int | None = Field(default=None, primary_key=True)
    number: str = Field(unique=True, index=True)
    department: str = Field(index=True)
    subject: str
    status: CaseStatus = Field(
        default=CaseStatus.NEW,
        sa_column=Column(Vocabulary(CaseStatus), nullable=False, index=True, default=CaseStatus.NEW),
    )
    priority: str = "normal"
    category: str = ""
    group: str = ""
    assignee: str = ""
    tags: list[str] = Field(default_factory=_empty_list, sa_column=Column(JSON, nullable=False))
    language: str = "en"
    customer_id: int | None = Field(default=None, foreign_key="customer.id", index=True)
    created_at: datetime = Field(default_factory=utcnow, index=True)
    updated_at: datetime = Field(default_factory=utcnow)
    first_response_at: datetime | None = Field(default=None, index=True)
    resolved_at: datetime | None = None
    follow_up_at: datetime | None = Field(default=None, index=True)  # set by #followup, for the scheduler
    related_case_id: int | None = Field(
        default=None, foreign_key="case.id"
    )  # reopened too late: the old case
    # SLA: the policy, each target's due time and the time its warning falls due (business time
    # counted in the department's calendar), and when the scheduler warned of and escalated it.
    sla: str = ""
    first_response_due: datetime | None = Field(default=None, index=True)
    first_response_warn: datetime | None = None
    warned_first_response_at: datetime | None = None
    breached_first_response_at: datetime | None = None
    next_response_due: datetime | None = Field(default=None, index=True)
    next_response_warn: datetime | None = None
    warned_next_response_at: datetime | None = None
    breached_next_response_at: datetime | None = None
    resolution_due: datetime | None = Field(default=None, index=True)
    resolution_warn: datetime | None = None
    warned_resolution_at: datetime | None = None
    breached_resolution_at: datetime | None = None
    # Waiting on the customer stops the clock: since when, and the business time so far.
    sla_paused_at: datetime | None = None
    sla_paused_seconds: float = 0.0
    # The customer hears how it goes: since when the case waits on them (auto-resolve), our last
    # mail to them and whether the agents were told of the silence since (quiet reminders).
    pending_since: datetime | None = None
    customer_heard_at: datetime | None = None
    quiet_reminded_at: datetime | None = None
    # Satisfaction: the survey's Message-ID (only a reply to it is an answer), when it went, and
    # the answer (score 1-5 and what else the customer wrote), for the reports.
    survey_message_id: str = ""
    survey_sent_at: datetime | None = Field(default=None, index=True)
    survey_answered_at: datetime | None = Field(default=None, index=True)
    satisfaction_score: int | None = None
    satisfaction_comment: str = ""
    # The reports' history, written once as it happens and never cleared by a reopen: the first
    # answer's and the first resolution's durations (calendar seconds, and business seconds less
    # the time spent waiting on the customer), whether each met its SLA target, and at the first
    # resolution the agent answers so far and whether that one answer settled it.
    agent_replies: int = 0
    customer_replied_at: datetime | None = None  # the customer's latest follow-up
    first_response_seconds: float | None = None
    first_response_business_seconds: float | None = None
    first_response_met: bool | None = None
    first_resolved_at: datetime | None = Field(default=None, index=True)
    resolution_seconds: float | None = None
    resolution_business_seconds: float | None = None
    resolution_met: bool | None = None
    resolution_replies: int | None = None
    first_contact_resolution: bool | None = None
    closed_at: datetime | None = Field(default=None, index=True)  # first closed
    # Health data, say (HR's sick leave): agents' mail carries number, category and an excerpt,
    # and reports show the case only as a count, never with its subject or customer.
    sensitive: bool = False
    # When retention or an erasure took its mail and personal data (what the reports count stays).
    anonymised_at: datetime | None = Field(default=None, index=True)


class StatusChange(SQLModel, table=True):
    """Every status transition of a case with its time: the history the reports count, which a
    reopen adds to and never rewrites."""

    __table_args__ = (
        Index("ix_statuschange_case_id_at", "case_id", "at"),
        # The reports' kinds of change, with what they read of them (migration 0014).
        Index(
            "ix_statuschange_from_status_to_status_at_case_id", "from_status", "to_status", "at", "case_id"
        ),
        Index(
            "ix_statuschange_to_status_at_from_status_case_id", "to_status", "at", "from_status", "case_id"
        ),
    )

    id: int | None = Field(default=None, primary_key=True)
    case_id: int = Field(foreign_key="case.id")
    at: datetime = Field(index=True)
    from_status: CaseStatus = Field(sa_column=Column(Vocabulary(CaseStatus), nullable=False))
    to_status: CaseStatus = Field(sa_column=Column(Vocabulary(CaseStatus), nullable=False))


class NextResponse(SQLModel, table=True):
    """One next-response clock of a case: from a customer's message that found none running to
    the agent's answer that settled it (met or not), or to the case ceasing to wait on us
    (settled with no outcome). The reports count these; a reopen adds to them, never rewrites."""

    id: int | None = Field(default=None, primary_key=True)
    case_id: int = Field(foreign_key="case.id", index=True)
    started_at: datetime = Field(index=True)
    due: datetime
    settled_at: datetime | None = Field(default=None, index=True)
    met: bool | None = None  # within the target; None: no answer settled it (or not yet)


class RawMessage(SQLModel, table=True):
    """The bytes as received, content-addressed, so any message can be audited or re-processed."""

    sha256: str = Field(primary_key=True)
    size: int
    data: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    created_at: datetime = Field(default_factory=utcnow)


class Message(SQLModel, table=True):
    """One incoming or outgoing message. Incoming mail that screening kept out of a case has no case."""

    __table_args__ = (UniqueConstraint("mailbox", "uidvalidity", "uid"),)

    id: int | None = Field(default=None, primary_key=True)
    case_id: int | None = Field(default=None, foreign_key="case.id", index=True)
    direction: Direction = Field(sa_column=Column(Vocabulary(Direction), nullable=False))
    author_role: AuthorRole = Field(sa_column=Column(Vocabulary(AuthorRole), nullable=False))
    mailbox: str = Field(index=True)
    uidvalidity: int | None = None
    uid: int | None = None
    # "<mailbox>:<Message-ID or sha256>" for incoming mail: the same message is never registered twice.
    dedupe_key: str | None = Field(default=None, unique=True)
    message_id: str = Field(index=True)
    in_reply_to: str = ""
    references: list[str] = Field(default_factory=_empty_list, sa_column=Column(JSON, nullable=False))
    from_addr: str = Field(default="", index=True)
    from_name: str = ""
    to_addrs: list[str] = Field(default_factory=_empty_list, sa_column=Column(JSON, nullable=False))
    cc_addrs: list[str] = Field(default_factory=_empty_list, sa_column=Column(JSON, nullable=False))
    subject: str = ""
    text: str = ""
    html: str = ""
    raw_sha256: str | None = Field(default=None, foreign_key="rawmessage.sha256")
    sent_at: datetime | None = None
    received_at: datetime = Field(default_factory=utcnow)


class Attachment(SQLModel, table=True):
    """Metadata only: the content stays inside the raw message it came in."""

    id: int | None = Field(default=None, primary_key=True)
    message_id: int = Field(foreign_key="message.id", index=True)
    filename: str
    content_type: str
    size: int
    sha256: str


class Event(SQLModel, table=True):
    """The audit trail: what happened and why, in words a person can read."""

    id: int | None = Field(default=None, primary_key=True)
    case_id: int | None = Field(default=None, foreign_key="case.id", index=True)
    message_id: int | None = Field(default=None, foreign_key="message.id", index=True)
    mailbox: str = ""
    kind: EventKind = Field(sa_column=Column(Vocabulary(EventKind), nullable=False, index=True))
    detail: str
    data: dict[str, Any] = Field(default_factory=_empty_dict, sa_column=Column(JSON, nullable=False))
    created_at: datetime = Field(default_factory=utcnow, index=True)


class OutboxMessage(SQLModel, table=True):
    """Rendered mail waiting for the relay; written in the same transaction that caused it."""

    # The acknowledgement budgets count the window's acknowledgements, in all and to a domain,
    # from these indexes alone: their cost is a range of index entries, not a row per case.
    __table_args__ = (
        Index("ix_outboxmessage_created_at_kind", "created_at", "kind"),
        Index("ix_outboxmessage_domain_created_at_kind", "domain", "created_at", "kind"),
    )

    id: int | None = Field(default=None, primary_key=True)
    case_id: int | None = Field(default=None, foreign_key="case.id", index=True)
    kind: OutboxKind = Field(sa_column=Column(Vocabulary(OutboxKind), nullable=False))
    mail_from: str
    rcpt_to: list[str] = Field(sa_column=Column(JSON, nullable=False))
    message_id: str = Field(index=True)
    # The letter as sent, except the customer's original when it attaches one: that stays in the
    # raw store, once (`original_sha256`), and goes back in at `original_at` when it is sent.
    # Emptied a while after it was sent ([privacy] sent_body_days).
    data: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    original_sha256: str | None = Field(default=None, foreign_key="rawmessage.sha256")
    original_at: int | None = None
    # An acknowledgement's customer's mail domain, which that domain's budget counts; None on
    # other mail.
    domain: str | None = None
    state: OutboxState = Field(
        default=OutboxState.QUEUED,
        sa_column=Column(Vocabulary(OutboxState), nullable=False, index=True, default=OutboxState.QUEUED),
    )
    attempts: int = 0
    next_attempt_at: datetime = Field(default_factory=utcnow, index=True)
    last_error: str = ""
    # Which instance holds the row and until when: a row claimed by a dead instance is due again
    # once its lease has run out.
    claimed_by: str = ""
    claimed_until: datetime | None = None
    created_at: datetime = Field(default_factory=utcnow)
    sent_at: datetime | None = None


class MailboxState(SQLModel, table=True):
    """The fetch checkpoint: only UIDs above last_uid under this UIDVALIDITY are new."""

    mailbox: str = Field(primary_key=True)
    uidvalidity: int = 0
    last_uid: int = 0
    last_poll_at: datetime | None = None


class MessageAttempt(SQLModel, table=True):
    """How often processing of one message began: written before each try, so a message that
    kills or hangs the process is counted across restarts. Rows at or below the mailbox's
    checkpoint are finished with (registered or set aside) and are removed."""

    mailbox: str = Field(primary_key=True)
    uidvalidity: int = Field(primary_key=True)
    uid: int = Field(primary_key=True)
    attempts: int = 0
    updated_at: datetime = Field(default_factory=utcnow)


class ReportSlot(SQLModel, table=True):
    """A scheduled report's slot, taken by the instance that queues its mail in the same
    transaction: the primary key lets one instance, once, have each slot of each report."""

    report: str = Field(primary_key=True)
    slot_at: datetime = Field(primary_key=True)
    claimed_by: str
    created_at: datetime = Field(default_factory=utcnow)


# The tables, for Core statements (store's writes, kpi's aggregates).
# SQLModel's classes do not declare the `__table__` SQLAlchemy gives every table class.
MESSAGE: Table = Message.__table__  # type: ignore[attr-defined]
ATTACHMENT: Table = Attachment.__table__  # type: ignore[attr-defined]
RAW_MESSAGE: Table = RawMessage.__table__  # type: ignore[attr-defined]
OUTBOX: Table = OutboxMessage.__table__  # type: ignore[attr-defined]
EVENT: Table = Event.__table__  # type: ignore[attr-defined]
CASE: Table = Case.__table__  # type: ignore[attr-defined]
CUSTOMER: Table = Customer.__table__  # type: ignore[attr-defined]
MAILBOX_STATE: Table = MailboxState.__table__  # type: ignore[attr-defined]
MESSAGE_ATTEMPT: Table = MessageAttempt.__table__  # type: ignore[attr-defined]
REPORT_SLOT: Table = ReportSlot.__table__  # type: ignore[attr-defined]
STATUS_CHANGE: Table = StatusChange.__table__  # type: ignore[attr-defined]
NEXT_RESPONSE: Table = NextResponse.__table__  # type: ignore[attr-defined]
CASE_COUNTER: Table = CaseCounter.__table__  # type: ignore[attr-defined]
