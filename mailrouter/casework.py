"""casework: what a message does to its case (new case, follow-up, reopen, agent reply and
commands, screened, bounce), decided as a Plan.

Pure: it reads what it needs through CaseFacts and writes nothing; store.apply writes the plan
in the message's transaction. Every change is an event naming who did it and why.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Protocol

from mailrouter import sla
from mailrouter.agents import AgentDirectory, Authentication
from mailrouter.commands import Command, parse_duration, read_agent_reply
from mailrouter.compose import FileAttachment
from mailrouter.config import Config
from mailrouter.notices import Notices
from mailrouter.parse import Address, Inbound, file_attachments
from mailrouter.plan import (
    Bounce,
    CaseView,
    ClockSettled,
    ClockStarted,
    CustomerView,
    Incoming,
    Origin,
    Outcome,
    OutcomeKind,
    Plan,
    PlannedEvent,
    QueuedMail,
    Raw,
    ShownMessage,
    Transition,
)
from mailrouter.route import Decision
from mailrouter.satisfaction import Answer, answers_survey, read_answer
from mailrouter.screen import PERSON_MAYBE, Kind, Verdict, is_own_address
from mailrouter.thread import ThreadMatch
from mailrouter.vocabulary import (
    CLOCK_RUNS,
    FINISHED,
    TO_CUSTOMER,
    AuthorRole,
    CaseStatus,
    EventKind,
    OutboxKind,
)

RECENT = timedelta(days=90)
ZERO = timedelta(0)
# An agent needs to know that the customer's organisation has many open cases, not how many:
# the count stops here, so that a backlog from one organisation (a whole company's staff after
# an outage) costs each notification no more than a few cases would.
ORGANISATION_CASES_COUNTED = 50
# How often in an acknowledgement window an agent hears that an unproven answer was not sent:
# enough for a person, and a forged From cannot flood the real agent.
UNSENT_NOTICES = 3
# The status changes the customer hears of, and the template that tells them.
STATUS_TEMPLATES = {CaseStatus.PENDING: "status-pending", CaseStatus.RESOLVED: "status-resolved"}
_DSN_STATUS = re.compile(r"^.*\b[45]\.\d{1,3}\.\d{1,3}\b.*$", re.MULTILINE)


@dataclass(frozen=True)
class OtherCase:
    number: str
    status: CaseStatus
    subject: str


@dataclass(frozen=True)
class SentMail:
    """Our outgoing mail, as a bounce names it."""

    outbox_id: int
    case_id: int
    kind: OutboxKind
    rcpt_to: tuple[str, ...]
    message_id: str


@dataclass(frozen=True)
class SentReport:
    """A report mail we sent, as a reply names it."""

    outbox_id: int
    rcpt_to: tuple[str, ...]
    message_id: str


class CaseFacts(Protocol):
    """What deciding reads of the stored desk; the store implements it."""

    def other_cases(self, customer_id: int, case_id: int | None, since: datetime) -> Sequence[OtherCase]: ...

    def organisation_open_cases(self, organisation: str, case_id: int | None, at_most: int) -> int: ...

    def conversation(self, case_id: int) -> Sequence[ShownMessage]: ...

    def last_customer_message(self, case_id: int) -> tuple[str, tuple[str, ...], tuple[str, ...]] | None:
        """(Message-ID, References, everyone it went to) of the customer's last message."""
        ...

    def removed_participants(self, case_id: int) -> frozenset[str]: ...

    def acknowledgements_to(self, address: str, since: datetime, at_most: int) -> int: ...

    def acknowledgements_to_domain(self, domain: str, since: datetime, at_most: int) -> int: ...

    def acknowledgements_since(self, since: datetime, at_most: int) -> int: ...

    def already_on_case(self, case_id: int, message_id: str) -> bool: ...

    def addresses_on_case(self, case_id: int) -> frozenset[str]: ...

    def messages_from(self, case_id: int, address: str, since: datetime | None, at_most: int) -> int: ...


@dataclass
class _Draft:
    """A plan being decided: the case as it becomes, and what is to be recorded and sent."""

    case: CaseView
    now: datetime
    changes: dict[str, Any] = field(default_factory=dict)
    events: list[PlannedEvent] = field(default_factory=list)
    mail: list[QueuedMail] = field(default_factory=list)
    transitions: list[Transition] = field(default_factory=list)
    next_responses: list[ClockStarted | ClockSettled] = field(default_factory=list)

    def change(self, **values: Any) -> None:
        self.case = dataclasses.replace(self.case, **values)
        self.changes.update(values)

    def record(self, kind: EventKind, detail: str, **data: Any) -> None:
        self.events.append(PlannedEvent(kind, detail, data))

    def plan(self, outcome: Outcome, **parts: Any) -> Plan:
        if any(mail.kind in TO_CUSTOMER for mail in self.mail):
            # The customer heard from us: a new quiet spell begins.
            self.change(customer_heard_at=self.now, quiet_reminded_at=None)
        return Plan(
            outcome=outcome,
            case=self.case,
            changes=self.changes,
            events=tuple(self.events),
            mail=tuple(self.mail),
            transitions=tuple(self.transitions),
            next_responses=tuple(self.next_responses),
            **parts,
        )


class Casework:
    def __init__(self, config: Config, notices: Notices, agents: AgentDirectory) -> None:
        self.config = config
        self.notices = notices
        self.agents = agents
        self._effects: dict[str, Callable[[_Draft, Command, str, Inbound, bytes, CaseFacts], None]] = {
            "note": lambda *_: None,
            "close": self._set_status_by_command,
            "resolve": self._set_status_by_command,
            "pending": self._set_status_by_command,
            "assign": self._assign,
            "priority": self._priority,
            "tag": self._tag,
            "followup": self._follow_up_at,
            "uncc": self._uncc,
            "show": self._show,
        }

    # --- which course a message takes -----------------------------------------------------------

    def too_late(
        self, case: CaseView, inbound: Inbound, match: ThreadMatch, verdict: Verdict, now: datetime
    ) -> bool:
        """A customer's reply to a case finished longer ago than the reopen window opens a new one
        (an answer to its satisfaction survey, however late, stays on it)."""
        if case.status not in FINISHED or not verdict.may_reopen:
            return False
        if answers_survey(case.survey_message_id, inbound.in_reply_to, inbound.references):
            return False
        if match.author_role not in (AuthorRole.CUSTOMER, AuthorRole.PARTICIPANT):
            return False
        finished = case.resolved_at or case.updated_at
        return now - finished > timedelta(days=self.config.file.agents.reopen_days)

    def warnings(self, match: ThreadMatch, origin: Origin) -> tuple[PlannedEvent, ...]:
        """Forged agents and tampered addresses, on the case they tried to reach."""
        case_id = match.case.id if match.case else None
        return tuple(
            PlannedEvent(
                EventKind.SECURITY_WARNING, w, on_case=False, case_id=case_id, mailbox=origin.mailbox
            )
            for w in match.warnings
        )

    def parse_notes(
        self, inbound: Inbound, origin: Origin, reused_by: int | None
    ) -> tuple[PlannedEvent, ...]:
        """What a person should know of how the message was read: only in part (its parse ran out
        of time), or under a Message-ID another, different message of the mailbox carries."""
        notes = []
        if inbound.degraded:
            detail = f"the message was read in part, {inbound.degraded}"
            notes.append(
                PlannedEvent(EventKind.PARSED_DEGRADED, detail, about_message=True, mailbox=origin.mailbox)
            )
        if reused_by is not None:
            detail = (
                f"Message-ID {inbound.message_id} is also on message {reused_by}, whose content differs: "
                "registered as a message of its own"
            )
            notes.append(
                PlannedEvent(
                    EventKind.MESSAGE_ID_REUSED,
                    detail,
                    {"other_message": reused_by},
                    about_message=True,
                    mailbox=origin.mailbox,
                )
            )
        return tuple(notes)

    # --- plans for incoming mail ------------------------------------------------------------------

    def duplicate(self, origin: Origin, earlier: int, identity: str) -> Plan:
        outcome = Outcome(
            OutcomeKind.DUPLICATE, None, f"already registered as message {earlier} ({identity})"
        )
        return Plan(outcome=outcome, checkpoint=origin)

    def without_case(
        self, inbound: Inbound, origin: Origin, raw: bytes, why: str, verdict: str = "rejected"
    ) -> Plan:
        """Kept and findable, but no case and no answer."""
        event = PlannedEvent(
            EventKind.SCREENED,
            f"no case opened: {why}",
            {"verdict": verdict},
            about_message=True,
            mailbox=origin.mailbox,
        )
        return Plan(
            outcome=Outcome(OutcomeKind.SCREENED, None, why),
            incoming=Incoming(inbound, origin, AuthorRole.CUSTOMER, on_case=False),
            raw=Raw(inbound.sha256, raw),
            events=(event,),
            checkpoint=origin,
        )

    def report_reply(
        self, inbound: Inbound, origin: Origin, raw: bytes, sent: Sequence[SentReport]
    ) -> Plan | None:
        """A report's recipient answering it (In-Reply-To/References name its Message-ID): the
        lead talks to the report, not to the desk, so no case and no acknowledgement; the mail is
        kept and the event says who answered which report. None: the sender is not one of its
        recipients (a report forwarded to a customer, say), and the mail takes its usual course."""
        sender = inbound.sender.address.lower() if inbound.sender else ""
        report = next((r for r in sent if sender in (a.lower() for a in r.rcpt_to)), None)
        if report is None:
            return None
        event = PlannedEvent(
            EventKind.REPORT_REPLIED,
            f"{sender} answered the report mail {report.message_id}: kept, no case opened, nobody answered",
            {"outbox_id": report.outbox_id, "message_id_header": report.message_id},
            about_message=True,
            mailbox=origin.mailbox,
        )
        return Plan(
            outcome=Outcome(OutcomeKind.REPORT_REPLY, None, f"{sender} answered report {report.message_id}"),
            incoming=Incoming(inbound, origin, AuthorRole.CUSTOMER, on_case=False),
            raw=Raw(inbound.sha256, raw),
            events=(event,),
            checkpoint=origin,
        )

    def bounce(
        self,
        inbound: Inbound,
        origin: Origin,
        raw: bytes,
        verdict: Verdict,
        case: CaseView,
        sent: Sequence[SentMail],
    ) -> Plan:
        """A bounce of mail we sent: attached to that mail's case, the mail marked bounced."""
        status = _DSN_STATUS.search(inbound.text)
        why = " ".join(status.group(0).split()) if status else verdict.explanation
        events = tuple(
            PlannedEvent(
                EventKind.BOUNCED,
                f"{row.kind} to {', '.join(row.rcpt_to)} bounced: {why}",
                {"outbox_id": row.outbox_id, "message_id_header": row.message_id},
                on_case=False,
                case_id=row.case_id,
                about_message=True,
                mailbox=origin.mailbox,
            )
            for row in sent
        )
        return Plan(
            outcome=Outcome(OutcomeKind.BOUNCED, case.number, f"bounce of {sent[0].message_id}: {why}"),
            case=case,
            incoming=Incoming(inbound, origin, AuthorRole.SYSTEM),
            raw=Raw(inbound.sha256, raw),
            events=events,
            bounces=tuple(Bounce(row.outbox_id, f"bounced: {why}"[:1000]) for row in sent),
            checkpoint=origin,
        )

    def follow_up(
        self,
        inbound: Inbound,
        origin: Origin,
        raw: bytes,
        verdict: Verdict,
        match: ThreadMatch,
        case: CaseView,
        now: datetime,
        facts: CaseFacts,
    ) -> Plan:
        draft = _Draft(case, now)
        draft.events.append(
            PlannedEvent(EventKind.THREADED, match.reason, about_message=True, mailbox=origin.mailbox)
        )
        if verdict.kind != Kind.NORMAL:
            draft.events.append(
                PlannedEvent(
                    EventKind.SCREENED,
                    f"{verdict.kind.value}: {verdict.explanation}"
                    + ("" if verdict.may_reopen else "; never acknowledged, never reopens the case"),
                    {"verdict": verdict.kind.value},
                    about_message=True,
                    mailbox=origin.mailbox,
                )
            )
        draft.change(updated_at=now)
        role = match.author_role
        parts: dict[str, Any] = {
            "incoming": Incoming(inbound, origin, role),
            "raw": Raw(inbound.sha256, raw),
            "checkpoint": origin,
        }
        sender = inbound.sender.address if inbound.sender else "someone"
        if facts.already_on_case(case.id or 0, inbound.message_id):
            # The same message reached a second watched mailbox (Cc hr@): acted on once.
            outcome = Outcome(
                OutcomeKind.DUPLICATE, case.number, f"{inbound.message_id} is on {case.number} already"
            )
            return Plan(
                outcome=outcome,
                raw=Raw(inbound.sha256, raw),
                checkpoint=origin,
                events=(
                    PlannedEvent(
                        EventKind.DUPLICATE_COPY,
                        f"another copy of {inbound.message_id}, received by {origin.mailbox} too: "
                        "recorded once, acted on once",
                        {"uid": origin.uid},
                        case_id=case.id,
                        on_case=False,
                        mailbox=origin.mailbox,
                    ),
                ),
            )
        if role == AuthorRole.AGENT and verdict.kind != Kind.NORMAL:
            draft.record(
                EventKind.NOT_RELAYED,
                f"automatic mail from agent {sender} ({verdict.kind.value}): recorded, never relayed, "
                "no answer to the customer",
            )
            return draft.plan(Outcome(OutcomeKind.FOLLOW_UP, case.number, match.reason), **parts)
        if role == AuthorRole.AGENT:
            summary = self._agent_reply(draft, inbound, raw, facts)
            return draft.plan(Outcome(OutcomeKind.FOLLOW_UP, case.number, summary, len(draft.mail)), **parts)
        if match.unproven_agent_answer and verdict.kind == Kind.NORMAL:
            since = now - timedelta(seconds=self.config.limits.acknowledgement_window)
            tell = (
                facts.messages_from(case.id or 0, sender, since=since, at_most=UNSENT_NOTICES)
                < UNSENT_NOTICES
            )
            if tell:
                draft.mail.append(self.notices.unsent_answer(case, inbound, sender))
            draft.record(
                EventKind.AGENT_ANSWER_NOT_SENT,
                f"{sender} answered without proof (not to the signed reply address): nothing relayed"
                + ("; they were told at their own address how to answer" if tell else ""),
            )
            return draft.plan(
                Outcome(OutcomeKind.FOLLOW_UP, case.number, match.reason, len(draft.mail)), **parts
            )
        if role == AuthorRole.EXTERNAL or verdict.kind not in (Kind.NORMAL, *PERSON_MAYBE):
            # Forged agents and automatic mail are on record, and change nothing.
            return draft.plan(Outcome(OutcomeKind.FOLLOW_UP, case.number, match.reason), **parts)
        if role == AuthorRole.PARTICIPANT and sender not in facts.addresses_on_case(case.id or 0):
            self._stranger(draft, inbound, sender, facts)
            parts["incoming"] = Incoming(inbound, origin, AuthorRole.STRANGER)
            return draft.plan(
                Outcome(OutcomeKind.FOLLOW_UP, case.number, match.reason, len(draft.mail)), **parts
            )
        if (answer := self._survey_answer(case, inbound, verdict, role)) is not None:
            self._record_satisfaction(draft, answer, sender)
            if (limited := self._over_follow_up_limit(case, sender, now, facts)) is not None:
                draft.record(EventKind.NOT_NOTIFIED, limited, rate_limited=True)
            else:
                self._notify(draft, f"Satisfaction {answer.score}/5 from {sender}", facts, inbound=inbound)
            summary = f"satisfaction {answer.score}/5 from {sender}"
            return draft.plan(Outcome(OutcomeKind.FOLLOW_UP, case.number, summary, len(draft.mail)), **parts)
        if verdict.kind == Kind.NORMAL:
            draft.change(customer_replied_at=now)
            if case.status in FINISHED:
                self._set_status(draft, CaseStatus.OPEN, sender, "replied to a finished case: reopened")
            elif case.status == CaseStatus.PENDING:
                self._set_status(draft, CaseStatus.OPEN, sender, "the customer answered")
        self._sla_customer_replied(draft)
        if (limited := self._over_follow_up_limit(case, sender, now, facts)) is not None:
            draft.record(EventKind.NOT_NOTIFIED, limited, rate_limited=True)
        else:
            self._notify(draft, f"Reply from {sender}", facts, inbound=inbound, raw=raw)
        return draft.plan(Outcome(OutcomeKind.FOLLOW_UP, case.number, match.reason, len(draft.mail)), **parts)

    @staticmethod
    def _survey_answer(case: CaseView, inbound: Inbound, verdict: Verdict, role: AuthorRole) -> Answer | None:
        """The customer's own reply to the survey of a finished case, beginning with a score."""
        if role != AuthorRole.CUSTOMER or verdict.kind != Kind.NORMAL or case.status not in FINISHED:
            return None
        if not answers_survey(case.survey_message_id, inbound.in_reply_to, inbound.references):
            return None
        return read_answer(inbound.text)

    @staticmethod
    def _record_satisfaction(draft: _Draft, answer: Answer, sender: str) -> None:
        """On the case, never reopening it; a later answer replaces an earlier one."""
        earlier = draft.case.satisfaction_score
        draft.change(
            survey_answered_at=draft.now,
            satisfaction_score=answer.score,
            satisfaction_comment=answer.comment,
        )
        draft.record(
            EventKind.SATISFACTION_ANSWERED,
            f"{sender} is satisfied {answer.score} of 5"
            + (f" (in place of {earlier})" if earlier is not None else "")
            + (f": {answer.comment}" if answer.comment else "")
            + "; the case stays "
            + str(draft.case.status),
            score=answer.score,
            comment=answer.comment,
        )

    def _stranger(self, draft: _Draft, inbound: Inbound, sender: str, facts: CaseFacts) -> None:
        """Someone not on the case wrote on its tag (case numbers are guessable): on record for
        review, the agents told once per sender and without the mail attached; never reopens."""
        case = draft.case
        first = facts.messages_from(case.id or 0, sender, since=None, at_most=1) == 0
        draft.record(
            EventKind.STRANGER_ON_CASE,
            f"{sender} is neither the customer nor on the case: recorded for review, not reopened"
            + ("; the agents are told once" if first else "; the agents were told already"),
            sender=sender,
        )
        if first:
            self._notify(draft, f"Mail from {sender}, who is not on the case", facts, inbound=inbound)

    def _over_follow_up_limit(
        self, case: CaseView, sender: str, now: datetime, facts: CaseFacts
    ) -> str | None:
        limit = self.config.limits.follow_up_notifications_per_sender
        since = now - timedelta(seconds=self.config.limits.acknowledgement_window)
        if facts.messages_from(case.id or 0, sender, since=since, at_most=limit) < limit:
            return None
        return (
            f"rate limit: {sender} has written {limit} times on {case.number} in the last "
            f"{self.config.limits.acknowledgement_window:.0f}s; recorded, the agents not told again"
        )

    def new_case(
        self,
        inbound: Inbound,
        origin: Origin,
        raw: bytes,
        verdict: Verdict,
        decision: Decision,
        number: str,
        customer: CustomerView | None,
        earlier: CaseView | None,
        authentication: Authentication | None,
        now: datetime,
        facts: CaseFacts,
    ) -> Plan:
        case = CaseView(
            id=None,
            number=number,
            department=decision.department,
            subject=inbound.subject or "(no subject)",
            status=CaseStatus.NEW,
            priority=decision.priority,
            category=decision.category,
            group=decision.group,
            assignee=decision.assignee,
            tags=decision.tags,
            language=decision.language,
            created_at=now,
            updated_at=now,
            related_case_id=earlier.id if earlier else None,
            customer=customer,
            sensitive=decision.sensitive,
        )
        draft = _Draft(case, now)
        self._start_sla(draft, decision)
        draft.events.append(
            PlannedEvent(
                EventKind.CASE_CREATED,
                f"{number} opened in {decision.department} from mail to {origin.mailbox}",
                about_message=True,
                mailbox=origin.mailbox,
            )
        )
        if earlier is not None:
            draft.record(
                EventKind.LINKED,
                f"a reply to {earlier.number}, finished more than "
                f"{self.config.file.agents.reopen_days:g} days ago: a new case, linked to it",
                related_case=earlier.number,
            )
        draft.events.append(
            PlannedEvent(
                EventKind.ROUTED,
                decision.explanation,
                {
                    "rules": list(decision.matched_rules),
                    "department": decision.department,
                    "priority": decision.priority,
                    "category": decision.category,
                    "group": decision.group,
                    "assignee": decision.assignee,
                    "tags": list(decision.tags),
                    "template": decision.template,
                    "sensitive": decision.sensitive,
                },
                mailbox=origin.mailbox,
            )
        )
        if verdict.kind != Kind.NORMAL:
            draft.events.append(PlannedEvent(EventKind.SCREENED, verdict.explanation, mailbox=origin.mailbox))
        self._acknowledge(draft, inbound, origin, verdict, decision, authentication, facts)
        self._notify(draft, "New case", facts, inbound=inbound, raw=raw)
        return draft.plan(
            Outcome(OutcomeKind.NEW_CASE, number, decision.explanation, len(draft.mail)),
            customer=Address(customer.address, customer.name) if customer else None,
            incoming=Incoming(inbound, origin, AuthorRole.CUSTOMER),
            raw=Raw(inbound.sha256, raw),
            checkpoint=origin,
        )

    def set_aside(
        self,
        raw: bytes,
        origin: Origin,
        kind: OutcomeKind,
        reason: str,
        *,
        keep_raw: bool = True,
        **data: Any,
    ) -> Plan:
        """Refused or quarantined: no case; the bytes (unless too large to keep) and the reason on
        record so a person can find, judge and retry it; the mailbox moves past it."""
        raw_copy = Raw(hashlib.sha256(raw).hexdigest(), raw) if keep_raw else None
        event_kind = EventKind.QUARANTINED if kind == OutcomeKind.QUARANTINED else EventKind.REFUSED
        event = PlannedEvent(
            event_kind,
            f"message UID {origin.uid} in {origin.mailbox} {event_kind.value}: {reason}",
            {
                "uid": origin.uid,
                "uidvalidity": origin.uidvalidity,
                "raw_sha256": raw_copy.sha256 if raw_copy else None,
                "reason": reason,
                **data,
            },
            mailbox=origin.mailbox,
        )
        return Plan(outcome=Outcome(kind, None, reason), raw=raw_copy, events=(event,), checkpoint=origin)

    # --- plans for scheduled work -----------------------------------------------------------------

    def reminder(self, case: CaseView, now: datetime, facts: CaseFacts) -> Plan:
        """The follow-up an agent asked for with #followup is due: tell whoever has the case."""
        draft = _Draft(case, now)
        self._notify(draft, "Follow-up due", facts, kind=OutboxKind.REMINDER)
        return draft.plan(Outcome(OutcomeKind.REMINDED, case.number, "follow-up due", len(draft.mail)))

    def sla_warning(self, case: CaseView, target: sla.Target, now: datetime, facts: CaseFacts) -> Plan:
        """A target is near (its policy's warn_at share has passed): tell whoever has the case."""
        due = getattr(case, f"{target.column}_due")
        left = sla.remaining(self.config, case.department, due, now)
        draft = _Draft(case, now)
        draft.record(
            EventKind.SLA_WARNING,
            f"{target} target of sla {case.sla} due {due:%Y-%m-%d %H:%M:%S} UTC: "
            f"{sla.duration_text(left)} of business time left",
            target=str(target),
            due=due.isoformat(),
            remaining_seconds=left.total_seconds(),
        )
        why = f"SLA {target} due in {sla.duration_text(left)}"
        self._notify(draft, why, facts, kind=OutboxKind.SLA_WARNING)
        return draft.plan(Outcome(OutcomeKind.SLA_WARNED, case.number, why, len(draft.mail)))

    def sla_breach(self, case: CaseView, target: sla.Target, now: datetime, facts: CaseFacts) -> Plan:
        """A target is missed: escalate as the policy says (tell the escalation group or lead,
        raise the priority, move the case), all recorded on the case."""
        policy = sla.policy(self.config, case.sla)
        due = getattr(case, f"{target.column}_due")
        over = -sla.remaining(self.config, case.department, due, now)
        draft = _Draft(case, now)
        draft.record(
            EventKind.SLA_BREACHED,
            f"{target} target of sla {case.sla} was due {due:%Y-%m-%d %H:%M:%S} UTC: "
            f"overshot by {sla.duration_text(over)} of business time",
            target=str(target),
            due=due.isoformat(),
            overshoot_seconds=over.total_seconds(),
        )
        why = f"SLA {target} breached by {sla.duration_text(over)}"
        if policy is not None and policy.raise_priority and sla.raised(case.priority) != case.priority:
            before = case.priority
            draft.change(priority=sla.raised(before), updated_at=now)
            draft.record(
                EventKind.PRIORITY_CHANGED,
                f"sla {case.sla}: priority {before} → {draft.case.priority} ({why})",
            )
        if policy is not None and policy.reassign_to:
            self._move(draft, policy.reassign_to)
            draft.record(EventKind.ASSIGNED, f"sla {case.sla}: moved to {policy.reassign_to} ({why})")
        escalate_to = policy.escalate_to if policy is not None else ""
        recipients = (escalate_to,) if "@" in escalate_to else tuple(self.agents.members(escalate_to))
        if not recipients:
            self._notify(draft, why, facts, kind=OutboxKind.SLA_ESCALATION)
        elif self.agents.signer is not None:
            draft.mail.extend(self.notices.to_agents(OutboxKind.SLA_ESCALATION, draft.case, recipients, why))
            draft.record(EventKind.NOTIFIED, f"{why}: {OutboxKind.SLA_ESCALATION} to {', '.join(recipients)}")
        return draft.plan(Outcome(OutcomeKind.SLA_BREACHED, case.number, why, len(draft.mail)))

    def quiet_reminder(self, case: CaseView, days: int, now: datetime, facts: CaseFacts) -> Plan:
        """The case waits on us and the customer has heard nothing for `days` business days: tell
        whoever has it, and the customer too where the department sends them a status update."""
        draft = _Draft(case, now)
        heard = case.customer_heard_at
        draft.record(
            EventKind.CUSTOMER_QUIET,
            f"the customer has had no mail from us for {days} business day(s)"
            + (f", since {heard:%Y-%m-%d %H:%M} UTC" if heard else ", nor since the case opened"),
            days=days,
            since=heard.isoformat() if heard else None,
        )
        why = f"The customer has heard nothing for {days} business day(s)"
        self._notify(draft, why, facts, kind=OutboxKind.QUIET_REMINDER)
        if self.config.mailboxes[case.department].quiet_status_mail:
            self._tell_status(draft, "status-quiet", facts)
        return draft.plan(Outcome(OutcomeKind.QUIET, case.number, why, len(draft.mail)))

    def auto_resolve(self, case: CaseView, after: timedelta, now: datetime, facts: CaseFacts) -> Plan:
        """Pending for `after` with no answer from the customer: resolved, and the customer told."""
        draft = _Draft(case, now)
        why = f"no answer from the customer in {sla.duration_text(after)}"
        self._set_status(draft, CaseStatus.RESOLVED, "mailrouter", why)
        self._tell_status(draft, "status-auto-resolved", facts)
        return draft.plan(Outcome(OutcomeKind.AUTO_RESOLVED, case.number, why, len(draft.mail)))

    def auto_close(self, case: CaseView, after: timedelta, now: datetime) -> Plan:
        draft = _Draft(case, now)
        why = f"resolved for {sla.duration_text(after)}"
        self._set_status(draft, CaseStatus.CLOSED, "mailrouter", why)
        return draft.plan(Outcome(OutcomeKind.AUTO_CLOSED, case.number, why))

    # --- the parts ---------------------------------------------------------------------------------

    def _acknowledge(
        self,
        draft: _Draft,
        inbound: Inbound,
        origin: Origin,
        verdict: Verdict,
        decision: Decision,
        authentication: Authentication | None,
        facts: CaseFacts,
    ) -> None:
        case = draft.case
        if decision.template is None:
            draft.record(EventKind.NOT_ACKNOWLEDGED, "routing said: do not acknowledge")
        elif not verdict.may_acknowledge:
            draft.record(EventKind.NOT_ACKNOWLEDGED, f"screening: {verdict.explanation}")
        elif case.customer is None:
            draft.record(EventKind.NOT_ACKNOWLEDGED, "the message has no sender address")
        elif (stale := self._too_old_to_acknowledge(origin, draft.now)) is not None:
            draft.record(EventKind.NOT_ACKNOWLEDGED, stale)
        elif (refused := self._unauthenticated(origin, authentication)) is not None:
            draft.record(EventKind.NOT_ACKNOWLEDGED, refused)
        elif (
            limited := self._over_acknowledgement_budget(case.customer, authentication, draft.now, facts)
        ) is not None:
            draft.record(EventKind.NOT_ACKNOWLEDGED, limited, rate_limited=True)
        else:
            echo = authentication is None or not authentication.trusted or authentication.dmarc_pass
            mail = self.notices.acknowledgement(case, inbound, decision.template, echo=echo)
            draft.mail.append(mail)
            draft.record(
                EventKind.ACKNOWLEDGEMENT_QUEUED,
                f"acknowledgement to {case.customer.address} from template "
                f"{case.department}/{decision.template} ({case.language})"
                + ("" if echo else "; without the sender's name and subject: DMARC did not pass"),
                message_id_header=mail.outgoing.message_id,
                echoed=echo,
            )

    def _unauthenticated(self, origin: Origin, authentication: Authentication | None) -> str | None:
        mailbox = self.config.mailboxes.get(origin.mailbox)
        if mailbox is None or mailbox.acknowledge_senders != "authenticated":
            return None
        if authentication is not None and authentication.authenticated:
            return None
        why = authentication.reason if authentication is not None else "no Authentication-Results of ours"
        return f"{origin.mailbox} acknowledges only authenticated senders, and this one is not ({why})"

    def _too_old_to_acknowledge(self, origin: Origin, now: datetime) -> str | None:
        """Why mail that arrived long before we read it (a migration, an outage) gets no answer."""
        mailbox = self.config.mailboxes.get(origin.mailbox)
        if origin.received_at is None or mailbox is None:
            return None
        if now - origin.received_at <= mailbox.acknowledge_max_age:
            return None
        return (
            f"arrived in {origin.mailbox} at {origin.received_at:%Y-%m-%d %H:%M %z}, longer ago "
            f"than its acknowledge_max_age ({mailbox.acknowledge_max_age})"
        )

    def _over_acknowledgement_budget(
        self, customer: CustomerView, authentication: Authentication | None, now: datetime, facts: CaseFacts
    ) -> str | None:
        """Why no acknowledgement may go now: the sender's, their domain's or the whole desk's
        budget for the window is spent (rotating forged senders spend the latter two; a sender
        our border MTA authenticated cannot be forged, and spends only its own); None while under
        them. Each count stops at its limit, so the check costs no more when flooded."""
        limits = self.config.limits
        window = limits.acknowledgement_window
        since = now - timedelta(seconds=window)
        domain = customer.domain
        if customer.id is not None and (
            facts.acknowledgements_to(customer.address, since, limits.acknowledgements_per_sender)
            >= limits.acknowledgements_per_sender
        ):
            return (
                f"rate limit: {customer.address} has had the most acknowledgements allowed "
                f"({limits.acknowledgements_per_sender}) in the last {window:.0f}s"
            )
        if authentication is not None and authentication.authenticated:
            return None
        if (
            facts.acknowledgements_to_domain(domain, since, limits.acknowledgements_per_domain)
            >= limits.acknowledgements_per_domain
        ):
            return (
                f"rate limit: senders at {domain} have had the most acknowledgements allowed "
                f"({limits.acknowledgements_per_domain}) in the last {window:.0f}s"
            )
        if (
            facts.acknowledgements_since(since, limits.acknowledgements_total)
            >= limits.acknowledgements_total
        ):
            return (
                f"rate limit: the desk has sent the most acknowledgements allowed "
                f"({limits.acknowledgements_total}) in the last {window:.0f}s"
            )
        return None

    def _notify(
        self,
        draft: _Draft,
        why: str,
        facts: CaseFacts,
        *,
        kind: OutboxKind = OutboxKind.NOTIFICATION,
        inbound: Inbound | None = None,
        raw: bytes | None = None,
        exclude: str = "",
    ) -> None:
        """Mail the assignee, or else the case's group, or else the department's group. The
        context is looked up only when someone is to be told: it costs queries on every new case."""
        if self.agents.signer is None:
            return  # no agents configured
        case = draft.case
        group = case.group or self.config.mailboxes[case.department].group
        recipients = [case.assignee] if case.assignee else list(self.agents.members(group))
        recipients = [r for r in recipients if r != exclude]
        if not recipients:
            draft.record(EventKind.NOT_NOTIFIED, f"{why}: no assignee and no group members")
            return
        if case.sensitive:
            why = why.partition(" from ")[0]  # a sensitive case's mail to agents names nobody
        context: dict[str, Any] = {}
        if kind == OutboxKind.NOTIFICATION:
            count = self._organisation_open_cases(case, facts)
            context = {
                "message": inbound,
                "other_cases": self._other_cases(case, draft.now, facts),
                "organisation_open_cases": count,
                "organisation_open_cases_or_more": count == ORGANISATION_CASES_COUNTED,
            }
        draft.mail.extend(self.notices.to_agents(kind, case, tuple(recipients), why, attach=raw, **context))
        draft.record(EventKind.NOTIFIED, f"{why}: {kind} to {', '.join(recipients)}")

    @staticmethod
    def _other_cases(case: CaseView, now: datetime, facts: CaseFacts) -> Sequence[OtherCase]:
        """The customer's other open cases, and their recent closed ones."""
        if case.customer is None or case.customer.id is None:
            return []
        return facts.other_cases(case.customer.id, case.id, now - RECENT)

    @staticmethod
    def _organisation_open_cases(case: CaseView, facts: CaseFacts) -> int:
        """Counted up to ORGANISATION_CASES_COUNTED."""
        if case.customer is None or not case.customer.organisation:
            return 0
        return facts.organisation_open_cases(case.customer.organisation, case.id, ORGANISATION_CASES_COUNTED)

    def _agent_reply(self, draft: _Draft, inbound: Inbound, raw: bytes, facts: CaseFacts) -> str:
        """Obey the commands, then relay the answer or record the note. Any bad command: neither."""
        agent = inbound.sender.address if inbound.sender else ""
        reply = read_agent_reply(inbound.text, self.agents.agents | frozenset(self.agents.groups))
        if reply.errors:
            draft.mail.append(self.notices.command_error(draft.case, inbound, agent, reply.errors))
            draft.record(EventKind.COMMANDS_REJECTED, f"from {agent}: {'; '.join(reply.errors)}")
            return f"commands from {agent} rejected: {'; '.join(reply.errors)}"
        status_before = draft.case.status
        answering = bool(reply.answer) and not reply.is_note
        if answering:
            # Counted before the commands: "#resolve" with an answer resolves after that answer.
            self._count_answer(draft)
        for command in reply.commands:
            self._effects[command.name](draft, command, agent, inbound, raw, facts)
        told = draft.case.status != status_before and draft.case.status in STATUS_TEMPLATES
        if reply.is_note:
            if told:
                draft.record(
                    EventKind.CUSTOMER_NOT_TOLD,
                    f"{draft.case.status} by an internal note of {agent}: the customer is not told",
                )
            draft.record(EventKind.NOTE, reply.answer or "(empty note)", agent=agent)
            return f"note by {agent}"
        if reply.answer:
            self._relay(draft, inbound, raw, reply.answer, agent, facts)
            if draft.case.status == status_before and draft.case.status in (
                CaseStatus.NEW,
                CaseStatus.PENDING,
            ):
                self._set_status(draft, CaseStatus.OPEN, agent, "answered the customer")
        if told:  # after the answer, which the customer reads first
            self._tell_status(draft, STATUS_TEMPLATES[draft.case.status], facts)
        done = ", ".join(str(c) for c in reply.commands) or "no commands"
        return f"agent {agent}: {done}{'; answer relayed' if reply.answer else ''}"

    def _relay(
        self, draft: _Draft, inbound: Inbound, raw: bytes, answer: str, agent: str, facts: CaseFacts
    ) -> None:
        case = draft.case
        if case.customer is None or case.id is None:
            draft.record(EventKind.NOT_RELAYED, f"answer from {agent}: the case has no customer address")
            return
        last = facts.last_customer_message(case.id)
        in_reply_to, references, conversation = last or ("", (), ())
        removed = facts.removed_participants(case.id) | {
            str(e.data["address"]) for e in draft.events if e.kind == EventKind.PARTICIPANT_REMOVED
        }
        cc = tuple(
            dict.fromkeys(
                a
                for a in conversation
                if a != case.customer.address
                and a not in removed
                and not self.agents.is_agent(a)
                and not is_own_address(a, self.config.own_addresses())
            )
        )
        files, refused = self._files_to_send(raw)
        draft.mail.append(
            self.notices.relayed_answer(case, answer, in_reply_to, references, cc=cc, files=files)
        )
        department = self.config.mailboxes[case.department]
        draft.record(
            EventKind.RELAYED,
            f"answer from {agent} relayed to {case.customer.address}"
            + (f" (Cc {', '.join(cc)})" if cc else "")
            + f" as {department.address}"
            + (f", with {len(files)} attachment(s)" if files else ""),
            agent=agent,
        )
        if refused:
            draft.mail.append(self.notices.files_not_sent(case, inbound, agent, refused))
            draft.record(
                EventKind.NOT_RELAYED,
                f"attachments from {agent} not sent on (over {self.config.limits.relay_attachment_bytes} "
                f"bytes together): {', '.join(refused)}; the agent was told",
                agent=agent,
            )

    def _files_to_send(self, raw: bytes) -> tuple[tuple[FileAttachment, ...], tuple[str, ...]]:
        """The agent's attachments that fit the limit, in order, and the names of those that do not."""
        budget = self.config.limits.relay_attachment_bytes
        files: list[FileAttachment] = []
        refused: list[str] = []
        for name, content_type, data in file_attachments(raw):
            if name == "original.eml" and content_type == "message/rfc822":
                continue  # our notification's copy of the customer's mail, forwarded back
            if len(data) <= budget:
                files.append(FileAttachment(name, content_type, data))
                budget -= len(data)
            else:
                refused.append(name)
        return tuple(files), tuple(refused)

    def _set_status(self, draft: _Draft, status: CaseStatus, who: str, why: str) -> None:
        before = draft.case.status
        resolved_at = (draft.case.resolved_at or draft.now) if status in FINISHED else None
        pending_since = (draft.case.pending_since or draft.now) if status == CaseStatus.PENDING else None
        draft.change(
            status=status, resolved_at=resolved_at, pending_since=pending_since, updated_at=draft.now
        )
        draft.record(EventKind.STATUS_CHANGED, f"{who}: {before} → {status} ({why})")
        self._sla_status(draft, before, status)
        if status != before:
            draft.transitions.append(Transition(draft.now, before, status))
            self._history(draft, before, status)
        if status not in CLOCK_RUNS and draft.case.next_response_due is not None:
            # Pending or finished before an answer: the clock ends, neither met nor missed.
            draft.next_responses.append(ClockSettled(draft.now))
            draft.change(next_response_due=None, next_response_warn=None)

    # --- the reports' history: written once, as it happens, never cleared by a reopen ------------

    def _taken(self, draft: _Draft, target: sla.Target) -> dict[str, Any]:
        """How long the case took to this moment, for a target's columns: calendar seconds,
        business seconds less the waits on the customer, and whether its SLA target was met."""
        case = draft.case
        spent = sla.working_time(
            self.config,
            case.department,
            case.created_at,
            draft.now,
            case.sla_paused_seconds,
            case.sla_paused_at,
        )
        stem = target.column
        return {
            f"{stem}_seconds": (draft.now - case.created_at).total_seconds(),
            f"{stem}_business_seconds": spent.total_seconds(),
            f"{stem}_met": sla.met(self.config, case.sla, target, spent),
        }

    def _count_answer(self, draft: _Draft) -> None:
        """An answer relayed to the customer meets the first response, and the next response
        when one is running: met if it came by the due time (the breach's moment)."""
        case = draft.case
        draft.change(agent_replies=case.agent_replies + 1)
        if case.first_response_at is None:
            draft.change(first_response_at=draft.now, **self._taken(draft, sla.Target.FIRST_RESPONSE))
        if case.next_response_due is not None:
            draft.next_responses.append(ClockSettled(draft.now, met=draft.now <= case.next_response_due))
            draft.change(next_response_due=None, next_response_warn=None)

    def _history(self, draft: _Draft, before: CaseStatus, after: CaseStatus) -> None:
        case = draft.case
        if after in FINISHED and before not in FINISHED and case.first_resolved_at is None:
            answered = case.first_response_at
            wrote = case.customer_replied_at
            draft.change(
                first_resolved_at=draft.now,
                resolution_replies=case.agent_replies,
                first_contact_resolution=case.agent_replies == 1
                and (wrote is None or (answered is not None and wrote <= answered)),
                **self._taken(draft, sla.Target.RESOLUTION),
            )
        if after == CaseStatus.CLOSED and case.closed_at is None:
            draft.change(closed_at=draft.now)

    # --- the customer hears how it goes ---------------------------------------------------------------

    def _tell_status(self, draft: _Draft, template: str, facts: CaseFacts, **context: Any) -> None:
        """A status update to the customer, where the department sends them; resolving asks the
        satisfaction question too, where the department asks it."""
        case = draft.case
        department = self.config.mailboxes[case.department]
        if case.customer is None or case.id is None:
            draft.record(EventKind.CUSTOMER_NOT_TOLD, f"{template}: the case has no customer address")
            return
        last = facts.last_customer_message(case.id)
        in_reply_to, references, _ = last or ("", (), ())
        if department.status_mail:
            reopen_days = self.config.file.agents.reopen_days
            mail = self.notices.to_customer(
                OutboxKind.STATUS_UPDATE,
                case,
                template,
                in_reply_to,
                references,
                reopen_days=reopen_days,
                **context,
            )
            draft.mail.append(mail)
            draft.record(
                EventKind.CUSTOMER_TOLD,
                f"{template} to {case.customer.address} ({case.language}) from {department.address}",
                template=template,
                message_id_header=mail.outgoing.message_id,
            )
        else:
            draft.record(EventKind.CUSTOMER_NOT_TOLD, f"{template}: {case.department} sends no status mail")
        if case.status == CaseStatus.RESOLVED and department.satisfaction_survey:
            self._ask_satisfaction(draft, in_reply_to, references)

    def _ask_satisfaction(self, draft: _Draft, in_reply_to: str, references: tuple[str, ...]) -> None:
        """Once per case: a case resolved again after a reopening is not asked again, so each
        case counts once in the response rate."""
        case = draft.case
        assert case.customer is not None
        if case.survey_sent_at is not None:
            draft.record(
                EventKind.CUSTOMER_NOT_TOLD,
                f"no satisfaction survey: one went on {case.survey_sent_at:%Y-%m-%d %H:%M} UTC already",
            )
            return
        mail = self.notices.to_customer(OutboxKind.SURVEY, case, "survey", in_reply_to, references)
        draft.mail.append(mail)
        draft.change(survey_message_id=mail.outgoing.message_id, survey_sent_at=draft.now)
        draft.record(
            EventKind.SURVEY_SENT,
            f"satisfaction survey to {case.customer.address} ({case.language}): a reply to it that "
            "begins with 1 to 5 is its answer",
            message_id_header=mail.outgoing.message_id,
        )

    # --- the SLA clock -------------------------------------------------------------------------------

    def _start_sla(self, draft: _Draft, decision: Decision) -> None:
        case = draft.case
        choice = sla.choose(self.config, decision.sla, case.department, case.priority)
        if not choice.policy:
            return
        clock = sla.clock(self.config, case.department, choice.policy, case.created_at, ZERO)
        draft.change(sla=choice.policy, **clock)
        self._record_sla(draft, choice.why)

    def _record_sla(self, draft: _Draft, why: str) -> None:
        case = draft.case
        dues = {
            target: getattr(case, f"{target.column}_due")
            for target in (sla.Target.FIRST_RESPONSE, sla.Target.RESOLUTION)
        }
        draft.record(
            EventKind.SLA_SET,
            f"sla {case.sla or 'none'} ({why})"
            + "".join(f"; {target} due {due:%Y-%m-%d %H:%M} UTC" for target, due in dues.items() if due),
            sla=case.sla,
            **{f"{target.column}_due": due.isoformat() if due else None for target, due in dues.items()},
        )

    def _sla_status(self, draft: _Draft, before: CaseStatus, after: CaseStatus) -> None:
        """Waiting on the customer stops the clock, on every case (the reports count business
        time less the waits); leaving `pending` starts it again, an SLA's targets later by the
        business time it stood still."""
        case = draft.case
        if after == CaseStatus.PENDING and before != CaseStatus.PENDING:
            draft.change(sla_paused_at=draft.now)
        elif before == CaseStatus.PENDING and after != CaseStatus.PENDING and case.sla_paused_at is not None:
            waited = sla.paused_for(self.config, case.department, case.sla_paused_at, draft.now)
            paused = case.sla_paused_seconds + waited.total_seconds()
            draft.change(sla_paused_at=None, sla_paused_seconds=paused)
            if not case.sla:
                return
            clock = sla.clock(
                self.config, case.department, case.sla, case.created_at, timedelta(seconds=paused)
            )
            draft.change(**clock)
            self._record_sla(
                draft, f"the clock runs again after {sla.duration_text(waited)} waiting on the customer"
            )

    def _sla_priority(self, draft: _Draft, before: str) -> None:
        case = draft.case
        choice = sla.rechoose(self.config, case.sla, case.department, before, case.priority)
        if choice.policy == case.sla:
            return
        paused = timedelta(seconds=case.sla_paused_seconds)
        clock = sla.clock(self.config, case.department, choice.policy, case.created_at, paused)
        draft.change(sla=choice.policy, **clock)
        self._record_sla(draft, choice.why)

    def _sla_customer_replied(self, draft: _Draft) -> None:
        """The customer wrote again: the next response is due (where the policy has that target),
        counted from their oldest message not yet answered, so a second one moves nothing."""
        case = draft.case
        if case.sla and case.status in CLOCK_RUNS and case.next_response_due is None:
            draft.change(**sla.next_response(self.config, case.department, case.sla, draft.now))
            if draft.case.next_response_due is not None:
                draft.next_responses.append(ClockStarted(draft.now, draft.case.next_response_due))

    def _move(self, draft: _Draft, target: str) -> None:
        """To a group (nobody in it assigned yet) or to one agent."""
        if target in self.agents.groups:
            draft.change(group=target, assignee="")
        else:
            draft.change(assignee=target)

    # --- what each agent command does (commands.COMMANDS says how it is written) --------------------

    def _set_status_by_command(
        self, draft: _Draft, command: Command, agent: str, _inbound: Inbound, _raw: bytes, _facts: CaseFacts
    ) -> None:
        status = {"close": CaseStatus.CLOSED, "resolve": CaseStatus.RESOLVED, "pending": CaseStatus.PENDING}
        self._set_status(draft, status[command.name], agent, str(command))

    def _assign(
        self, draft: _Draft, command: Command, agent: str, inbound: Inbound, raw: bytes, facts: CaseFacts
    ) -> None:
        target = command.argument.lower()
        if target in self.agents.groups:
            draft.change(group=target, assignee="")
        else:
            draft.change(assignee=target)
        draft.record(EventKind.ASSIGNED, f"{agent} assigned the case to {target} ({command})")
        self._notify(draft, f"Assigned to you by {agent}", facts, inbound=inbound, raw=raw, exclude=agent)

    def _priority(
        self, draft: _Draft, command: Command, agent: str, _inbound: Inbound, _raw: bytes, _facts: CaseFacts
    ) -> None:
        before, value = draft.case.priority, command.argument.lower()
        draft.change(priority=value)
        draft.record(EventKind.PRIORITY_CHANGED, f"{agent} changed priority {before} → {value} ({command})")
        self._sla_priority(draft, before)

    def _tag(
        self, draft: _Draft, command: Command, agent: str, _inbound: Inbound, _raw: bytes, _facts: CaseFacts
    ) -> None:
        if command.argument not in draft.case.tags:
            draft.change(tags=(*draft.case.tags, command.argument))
            draft.record(EventKind.TAGGED, f"{agent} added tag {command.argument} ({command})")

    def _uncc(
        self, draft: _Draft, command: Command, agent: str, _inbound: Inbound, _raw: bytes, _facts: CaseFacts
    ) -> None:
        address = command.argument.lower()
        draft.record(
            EventKind.PARTICIPANT_REMOVED,
            f"{agent} stopped copying {address} on the answers ({command})",
            address=address,
        )

    def _show(
        self, draft: _Draft, _command: Command, agent: str, inbound: Inbound, _raw: bytes, facts: CaseFacts
    ) -> None:
        conversation = facts.conversation(draft.case.id or 0)
        draft.mail.append(self.notices.shown(draft.case, inbound, agent, conversation))
        draft.record(
            EventKind.CASE_SHOWN,
            f"{agent} asked for the case's mail (#show): {len(conversation)} message(s) sent to them alone",
            agent=agent,
        )

    def _follow_up_at(
        self, draft: _Draft, command: Command, agent: str, _inbound: Inbound, _raw: bytes, _facts: CaseFacts
    ) -> None:
        duration = parse_duration(command.argument)
        assert duration is not None, "checked by read_agent_reply"
        at = draft.now + duration
        draft.change(follow_up_at=at)
        draft.record(
            EventKind.FOLLOW_UP_SET, f"{agent} set a follow-up for {at:%Y-%m-%d %H:%M} UTC ({command})"
        )
