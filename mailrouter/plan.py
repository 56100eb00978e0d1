"""plan: what one message (or one scheduled job) does to the desk, as plain data.

casework decides a Plan without touching the database; store.apply writes it, whole, inside the
message's one transaction. Tests and `rules explain` read plans; nothing else writes rows.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from mailrouter.compose import Outgoing
from mailrouter.parse import Address, Inbound
from mailrouter.vocabulary import SENSITIVE_SUBJECT, AuthorRole, CaseStatus, EventKind, OutboxKind


class OutcomeKind(StrEnum):
    NEW_CASE = "new-case"
    FOLLOW_UP = "follow-up"
    SCREENED = "screened"
    DUPLICATE = "duplicate"
    REFUSED = "refused"
    QUARANTINED = "quarantined"
    BOUNCED = "bounced"
    REPORT_REPLY = "report-reply"  # a recipient's answer to a report mail: kept, no case
    REMINDED = "reminded"  # a scheduled follow-up, not a message
    SLA_WARNED = "sla-warned"  # scheduled: a target is near
    SLA_BREACHED = "sla-breached"  # scheduled: a target is missed, the case escalated
    QUIET = "quiet"  # scheduled: the customer has heard nothing for days
    AUTO_RESOLVED = "auto-resolved"  # scheduled: pending with no answer from the customer
    AUTO_CLOSED = "auto-closed"  # scheduled: resolved long enough


SET_ASIDE_OUTCOMES = frozenset({OutcomeKind.REFUSED, OutcomeKind.QUARANTINED})


@dataclass(frozen=True)
class Outcome:
    """What happened to a message, in a line: for the log and the CLI."""

    kind: OutcomeKind
    case_number: str | None
    summary: str
    queued_mail: int = 0


# IMAP's UIDVALIDITY is never 0 (RFC 3501: nz-number), so delivered mail never collides with a
# fetched copy, and it moves no mailbox's checkpoint.
DELIVERED = 0


@dataclass(frozen=True)
class Origin:
    """Where an incoming message was found: the IMAP identity of that copy, or for mail an MTA
    handed over (`mailrouter deliver`) UIDVALIDITY `DELIVERED` and a UID from a counter of its own."""

    mailbox: str
    uidvalidity: int
    uid: int
    # When the copy arrived in the folder (IMAP INTERNALDATE), where known: not part of its identity.
    received_at: datetime | None = field(default=None, compare=False)


@dataclass(frozen=True)
class CustomerView:
    id: int | None  # None: not on record yet (its first mail)
    address: str
    name: str = ""
    organisation: str = ""

    @property
    def domain(self) -> str:
        """The customer's mail domain, which a domain's acknowledgement budget counts by."""
        return self.address.rpartition("@")[2]


@dataclass(frozen=True)
class CaseView:
    """What deciding needs of a case, read before deciding; also what templates see as `case`."""

    id: int | None  # None: the case this plan opens
    number: str
    department: str
    subject: str
    status: CaseStatus
    priority: str
    category: str
    group: str
    assignee: str
    tags: tuple[str, ...]
    language: str
    created_at: datetime
    updated_at: datetime
    first_response_at: datetime | None = None
    resolved_at: datetime | None = None
    follow_up_at: datetime | None = None
    related_case_id: int | None = None
    customer: CustomerView | None = None
    sla: str = ""
    first_response_due: datetime | None = None
    first_response_warn: datetime | None = None
    next_response_due: datetime | None = None
    next_response_warn: datetime | None = None
    resolution_due: datetime | None = None
    resolution_warn: datetime | None = None
    warned_first_response_at: datetime | None = None
    breached_first_response_at: datetime | None = None
    warned_next_response_at: datetime | None = None
    breached_next_response_at: datetime | None = None
    warned_resolution_at: datetime | None = None
    breached_resolution_at: datetime | None = None
    sla_paused_at: datetime | None = None
    sla_paused_seconds: float = 0.0
    pending_since: datetime | None = None
    customer_heard_at: datetime | None = None  # our last mail to the customer
    quiet_reminded_at: datetime | None = None  # the agents were told the customer heard nothing
    survey_message_id: str = ""
    survey_sent_at: datetime | None = None
    survey_answered_at: datetime | None = None
    satisfaction_score: int | None = None
    satisfaction_comment: str = ""
    agent_replies: int = 0
    customer_replied_at: datetime | None = None
    first_response_seconds: float | None = None
    first_response_business_seconds: float | None = None
    first_response_met: bool | None = None
    first_resolved_at: datetime | None = None
    resolution_seconds: float | None = None
    resolution_business_seconds: float | None = None
    resolution_met: bool | None = None
    resolution_replies: int | None = None
    first_contact_resolution: bool | None = None
    closed_at: datetime | None = None
    sensitive: bool = False


@dataclass(frozen=True)
class ShownMessage:
    """One incoming message of a case, as `#show` sends it to the agent who asked."""

    received_at: datetime
    author_role: AuthorRole
    from_addr: str
    from_name: str
    subject: str
    text: str
    attachments: tuple[str, ...]


def discreet(case: CaseView) -> CaseView:
    """A sensitive case as agents' mail shows it: its number and category, no subject and no
    customer; any other case as it is."""
    if not case.sensitive:
        return case
    label = f"{SENSITIVE_SUBJECT} {case.category}" if case.category else SENSITIVE_SUBJECT
    return dataclasses.replace(case, subject=label, customer=None, satisfaction_comment="")


@dataclass(frozen=True)
class Transition:
    """A status change of the plan's case, kept in its history for the reports."""

    at: datetime
    from_status: CaseStatus
    to_status: CaseStatus


@dataclass(frozen=True)
class ClockStarted:
    """A next-response clock of the plan's case begins: the customer wrote, none was running."""

    at: datetime
    due: datetime


@dataclass(frozen=True)
class ClockSettled:
    """The plan's case's running next-response clock ends: by an agent's answer (`met`: within
    the target or not), or with no outcome (None) when the case stopped waiting on us first."""

    at: datetime
    met: bool | None = None


@dataclass(frozen=True)
class PlannedEvent:
    kind: EventKind
    detail: str
    data: Mapping[str, Any] = field(default_factory=dict)
    on_case: bool = True  # about the plan's case (when it has one)
    case_id: int | None = None  # otherwise: about this case, or none
    about_message: bool = False  # about the plan's incoming message
    mailbox: str = ""


@dataclass(frozen=True)
class QueuedMail:
    kind: OutboxKind
    role: AuthorRole  # who the outgoing Message is recorded as written by
    outgoing: Outgoing


@dataclass(frozen=True)
class Incoming:
    """The incoming message to record; on the plan's case unless `on_case` is False."""

    inbound: Inbound
    origin: Origin
    role: AuthorRole
    on_case: bool = True


@dataclass(frozen=True)
class Raw:
    """The bytes as received, kept content-addressed."""

    sha256: str
    data: bytes = field(repr=False)


@dataclass(frozen=True)
class Bounce:
    outbox_id: int
    error: str


@dataclass(frozen=True)
class Plan:
    outcome: Outcome
    case: CaseView | None = None  # as it is after the plan: new (id None) or changed
    changes: Mapping[str, Any] = field(default_factory=dict)  # columns of an existing case
    customer: Address | None = None  # the new case's customer, recorded or updated by apply
    incoming: Incoming | None = None
    raw: Raw | None = None
    events: tuple[PlannedEvent, ...] = ()
    mail: tuple[QueuedMail, ...] = ()
    bounces: tuple[Bounce, ...] = ()
    transitions: tuple[Transition, ...] = ()
    next_responses: tuple[ClockStarted | ClockSettled, ...] = ()  # in the order they happened
    checkpoint: Origin | None = None  # the mailbox position this message moves past
