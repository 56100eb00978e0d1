"""The words mailrouter writes into its tables and reads back: states, roles and kinds, defined once.

Every value is a StrEnum, so a row written by an older version (a plain string) reads back as the
same member, and nothing anywhere compares against a string literal of them.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from sqlalchemy import String
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator


class CaseStatus(StrEnum):
    NEW = "new"
    OPEN = "open"
    PENDING = "pending"
    RESOLVED = "resolved"
    CLOSED = "closed"


FINISHED = frozenset({CaseStatus.RESOLVED, CaseStatus.CLOSED})
WAITING_ON_US = frozenset({CaseStatus.NEW, CaseStatus.OPEN, CaseStatus.PENDING})
# The SLA clock runs while the case is with us: `pending` waits on the customer and stops it.
CLOCK_RUNS = frozenset({CaseStatus.NEW, CaseStatus.OPEN})


class Direction(StrEnum):
    IN = "in"
    OUT = "out"


class AuthorRole(StrEnum):
    CUSTOMER = "customer"
    AGENT = "agent"
    PARTICIPANT = "participant"
    EXTERNAL = "external"  # claims to be an agent without proof
    STRANGER = "stranger"  # wrote on a case they are not part of (a guessed tag)
    SYSTEM = "system"


class OutboxState(StrEnum):
    QUEUED = "queued"
    # The whole message is on the wire and only the relay's final answer is missing: a crash now
    # must not send it again (see send.py).
    SENDING = "sending"
    SENT = "sent"
    FAILED = "failed"
    # Accepted by the relay, then returned by a delivery status notification (a bounce).
    BOUNCED = "bounced"


class OutboxKind(StrEnum):
    """What a letter in the outbox is, and so who it goes to."""

    ACKNOWLEDGEMENT = "acknowledgement"  # to the customer of a new case
    NOTIFICATION = "notification"  # to the agents: a new case or a message on one
    REMINDER = "reminder"  # to the agents: a follow-up set with #followup is due
    AGENT_REPLY = "agent-reply"  # an agent's answer, relayed to the customer
    COMMAND_ERROR = "command-error"  # to an agent whose commands were refused
    CASE_SHOWN = "case-shown"  # #show: a sensitive case's mail, to the agent who asked
    UNSENT_ANSWER = "unsent-answer"  # to an agent whose answer lacked proof: how to answer
    ALERT = "alert"  # to ops ([alerts] to): a mailbox stopped working; no case
    SLA_WARNING = "sla-warning"  # to the agents: a target is near
    SLA_ESCALATION = "sla-escalation"  # to the escalation group or lead: a target is breached
    STATUS_UPDATE = "status-update"  # to the customer: waiting for you, resolved, how it goes
    SURVEY = "survey"  # to the customer: how satisfied are you, 1 to 5
    QUIET_REMINDER = "quiet-reminder"  # to the agents: the customer has heard nothing for days
    REPORT = "report"  # to the people in charge: a scheduled report ([[reports]]); no case


# What the customer receives: any of it ends a quiet spell (casework's quiet reminders).
TO_CUSTOMER = frozenset(
    {OutboxKind.ACKNOWLEDGEMENT, OutboxKind.AGENT_REPLY, OutboxKind.STATUS_UPDATE, OutboxKind.SURVEY}
)


class EventKind(StrEnum):
    """The audit trail's vocabulary: one kind per decision or happening a person may ask about."""

    # registration
    CASE_CREATED = "case-created"
    THREADED = "threaded"
    ROUTED = "routed"
    LINKED = "linked"
    SCREENED = "screened"
    SECURITY_WARNING = "security-warning"
    PARSED_DEGRADED = "parsed-degraded"
    BOUNCED = "bounced"
    DUPLICATE_COPY = "duplicate-copy"
    MESSAGE_ID_REUSED = "message-id-reused"
    STRANGER_ON_CASE = "stranger-on-case"
    AGENT_ANSWER_NOT_SENT = "agent-answer-not-sent"
    # set aside, and released again
    REFUSED = "refused"
    QUARANTINED = "quarantined"
    QUARANTINE_RELEASED = "quarantine-released"
    QUARANTINE_RETRY_FAILED = "quarantine-retry-failed"
    # what the case queued, or why it did not
    ACKNOWLEDGEMENT_QUEUED = "acknowledgement-queued"
    NOT_ACKNOWLEDGED = "not-acknowledged"
    NOTIFIED = "notified"
    NOT_NOTIFIED = "not-notified"
    RELAYED = "relayed"
    NOT_RELAYED = "not-relayed"
    # agents' work
    RETENTION_RUN = "retention-run"  # counts only: what a retention run deleted and anonymised
    ERASED = "erased"  # a person's data erased on request: counts and a salted hash, no address
    NOTE = "note"
    CASE_SHOWN = "case-shown"  # #show: a sensitive case's mail sent to the agent who asked
    COMMANDS_REJECTED = "commands-rejected"
    ASSIGNED = "assigned"
    PRIORITY_CHANGED = "priority-changed"
    TAGGED = "tagged"
    PARTICIPANT_REMOVED = "participant-removed"
    FOLLOW_UP_SET = "follow-up-set"
    STATUS_CHANGED = "status-changed"
    # the customer hears how it goes
    CUSTOMER_TOLD = "customer-told"  # a status update queued to the customer
    CUSTOMER_NOT_TOLD = "customer-not-told"  # and why none was
    CUSTOMER_QUIET = "customer-quiet"  # waiting on us, and the customer has heard nothing for days
    SURVEY_SENT = "survey-sent"
    SATISFACTION_ANSWERED = "satisfaction-answered"
    # SLA
    SLA_SET = "sla-set"
    SLA_WARNING = "sla-warning"
    SLA_BREACHED = "sla-breached"
    # scheduled reports
    REPORT_QUEUED = "report-queued"  # a slot's report mail queued, by which instance
    REPORT_MISSED = "report-missed"  # slots past their grace while no instance ran: never sent
    REPORT_REPLIED = "report-replied"  # a recipient answered a report mail: kept, no case
    # the outbox
    MAIL_SENT = "mail-sent"
    MAIL_SENT_UNCONFIRMED = "mail-sent-unconfirmed"
    DELIVERY_FAILED = "delivery-failed"
    RECIPIENT_REFUSED = "recipient-refused"  # one recipient of a letter; the others got it
    MAIL_REQUEUED = "mail-requeued"  # a failed or bounced letter queued again by a person
    # mailboxes
    MAILBOX_READ_ONLY = "mailbox-read-only"
    MAILBOX_FIRST_START = "mailbox-first-start"
    UIDVALIDITY_CHANGED = "uidvalidity-changed"
    # supervision
    TASK_RESTARTED = "task-restarted"
    TASK_FAILED_REPEATEDLY = "task-failed-repeatedly"
    MESSAGE_VANISHED = "message-vanished"
    # OAuth2 credentials
    TOKEN_REFUSED = "token-refused"  # the identity provider refused a token: the mailbox stops
    TOKEN_RECOVERED = "token-recovered"
    CREDENTIAL_EXPIRING = "credential-expiring"  # a client secret or certificate runs out soon


SET_ASIDE = frozenset({EventKind.QUARANTINED, EventKind.REFUSED})

# What stands for a sensitive case's subject wherever it is shown beyond the case itself.
SENSITIVE_SUBJECT = "(sensitive)"


class PeriodName(StrEnum):
    """The periods a report may name (`--period`, `[[reports]] period`): kpi.named_period."""

    TODAY = "today"
    YESTERDAY = "yesterday"
    THIS_WEEK = "this-week"
    LAST_WEEK = "last-week"
    THIS_MONTH = "this-month"
    LAST_MONTH = "last-month"
    THIS_YEAR = "this-year"
    LAST_YEAR = "last-year"


class Vocabulary(TypeDecorator[StrEnum]):
    """A column of one of these enums, stored as its plain string: no database enum type to
    migrate when a word is added, and rows read back as members."""

    impl = String
    cache_ok = True

    def __init__(self, enum: type[StrEnum]) -> None:
        super().__init__()
        self.enum = enum

    def process_bind_param(self, value: Any, dialect: Dialect) -> str | None:
        return None if value is None else str(value)

    def process_result_value(self, value: Any, dialect: Dialect) -> StrEnum | None:
        return None if value is None else self.enum(value)
