"""One message's journey: parse → screen → thread → route → store, in one transaction.

The fetch worker calls `Intake.process` off the event loop; the CLI uses the same object, so
the daemon and `mailrouter` commands can never disagree about what a message means.
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass
from datetime import timedelta
from enum import StrEnum

from sqlalchemy import Engine
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session

from mailrouter import store
from mailrouter.agents import AgentDirectory
from mailrouter.casework import Casework
from mailrouter.config import Config
from mailrouter.db import next_case_number
from mailrouter.errors import ParseError
from mailrouter.models import Case, Customer, utcnow
from mailrouter.parse import Inbound, parse
from mailrouter.route import Decision, Rule, route
from mailrouter.screen import Kind, Verdict, screen
from mailrouter.store import Origin
from mailrouter.templates import Templates
from mailrouter.thread import ThreadMatch, case_tag_pattern, thread
from mailrouter.vocabulary import AuthorRole, CaseStatus, EventKind, OutboxState

log = logging.getLogger(__name__)

# What an oversized message leaves in the audit trail: enough headers to find and judge it.
OVERSIZED_HEADER_BYTES = 16 * 1024
_DSN_STATUS = re.compile(r"^.*\b[45]\.\d{1,3}\.\d{1,3}\b.*$", re.MULTILINE)
RACE_ATTEMPTS = 3


class OutcomeKind(StrEnum):
    NEW_CASE = "new-case"
    FOLLOW_UP = "follow-up"
    SCREENED = "screened"
    DUPLICATE = "duplicate"
    REFUSED = "refused"
    QUARANTINED = "quarantined"
    BOUNCED = "bounced"


@dataclass(frozen=True)
class Outcome:
    kind: OutcomeKind
    case_number: str | None
    summary: str
    queued_mail: int = 0


class Intake:
    def __init__(
        self,
        config: Config,
        rules: tuple[Rule, ...],
        templates: Templates,
        engine: Engine,
        agents: AgentDirectory,
    ) -> None:
        self.config = config
        self.rules = rules
        self.engine = engine
        self.agents = agents
        self.casework = Casework(config, templates, agents)
        self.own_addresses = config.own_addresses()
        self.tag_pattern = case_tag_pattern(m.prefix for m in config.mailboxes.values())

    def process(self, raw: bytes, origin: Origin, parsed: Inbound | ParseError | None = None) -> Outcome:
        """Register one message; commits once. Raises only for failures worth retrying.
        `parsed`: what parse(raw) gave elsewhere (a worker process), so it is not parsed again."""
        if len(raw) > self.config.limits.max_message_size:
            return self.refuse_oversized(raw, len(raw), origin)
        if isinstance(parsed, ParseError):
            return self._refuse(raw, origin, parsed)
        try:
            inbound = parsed or parse(raw)
        except ParseError as exc:
            return self._refuse(raw, origin, exc)
        for attempt in range(1, RACE_ATTEMPTS + 1):
            try:
                with Session(self.engine, expire_on_commit=False) as session:
                    outcome = self._register(session, raw, origin, inbound)
                    store.advance_checkpoint(session, origin)
                    session.commit()
                return outcome
            except IntegrityError as exc:
                # Another instance (or a worker that lost its mailbox lock) committed the same
                # message, or the same new customer, a moment before us: our transaction rolled
                # back whole. Look again; the message is then a duplicate, or simply retried.
                log.info(
                    "mailbox=%s uid=%s lost a race (attempt %s): %s",
                    origin.mailbox,
                    origin.uid,
                    attempt,
                    exc.orig,
                )
                if attempt == RACE_ATTEMPTS:
                    raise
        raise AssertionError("unreachable")

    def _register(self, session: Session, raw: bytes, origin: Origin, inbound: Inbound) -> Outcome:
        key = store.dedupe_key(origin.mailbox, inbound)
        earlier = store.already_registered(session, key)
        if earlier is not None:
            return Outcome(OutcomeKind.DUPLICATE, None, f"already registered as message {earlier} ({key})")
        store.keep_raw(session, raw, inbound.sha256)
        verdict = screen(inbound, self.own_addresses)
        if verdict.kind == Kind.BOUNCE:
            bounced = self._bounce(session, origin, inbound, verdict)
            if bounced is not None:
                return bounced
        match = thread(inbound, self.tag_pattern, store.SqlCaseLookup(session), self.agents)
        case = session.get(Case, match.case.id) if match.case else None
        for warning in match.warnings:
            store.record(
                session,
                EventKind.SECURITY_WARNING,
                warning,
                case_id=case.id if case else None,
                mailbox=origin.mailbox,
            )
        if case is not None and not self._too_late(case, match, verdict):
            return self._follow_up(session, origin, inbound, raw, verdict, match, case)
        if match.tampered:
            return self._keep_without_case(
                session, origin, inbound, "a forged or tampered signed reply address"
            )
        if not verdict.may_open_case:
            return self._keep_without_case(session, origin, inbound, verdict.explanation, verdict.kind.value)
        decision = route(inbound, origin.mailbox, self.config.mailboxes, self.rules)
        return self._new_case(session, origin, inbound, raw, verdict, decision, earlier_case=case)

    def _keep_without_case(
        self, session: Session, origin: Origin, inbound: Inbound, why: str, verdict: str = "rejected"
    ) -> Outcome:
        """Kept and findable, but no case and no answer."""
        message_id = store.add_incoming(session, origin, inbound, None, AuthorRole.CUSTOMER)
        store.record(
            session,
            EventKind.SCREENED,
            f"no case opened: {why}",
            message_id=message_id,
            mailbox=origin.mailbox,
            verdict=verdict,
        )
        return Outcome(OutcomeKind.SCREENED, None, why)

    def _too_late(self, case: Case, match: ThreadMatch, verdict: Verdict) -> bool:
        """A customer's reply to a case finished longer ago than the reopen window opens a new one."""
        if case.status not in (CaseStatus.RESOLVED, CaseStatus.CLOSED) or not verdict.may_reopen:
            return False
        if match.author_role not in (AuthorRole.CUSTOMER, AuthorRole.PARTICIPANT):
            return False
        finished = case.resolved_at or case.updated_at
        return utcnow() - finished > timedelta(days=self.config.file.agents.reopen_days)

    def _follow_up(
        self,
        session: Session,
        origin: Origin,
        inbound: Inbound,
        raw: bytes,
        verdict: Verdict,
        match: ThreadMatch,
        case: Case,
    ) -> Outcome:
        message_id = store.add_incoming(session, origin, inbound, case.id, match.author_role)
        store.record(
            session,
            EventKind.THREADED,
            match.reason,
            case_id=case.id,
            message_id=message_id,
            mailbox=origin.mailbox,
        )
        if verdict.kind != Kind.NORMAL:
            store.record(
                session,
                EventKind.SCREENED,
                f"{verdict.kind.value}: {verdict.explanation}"
                + ("" if verdict.may_reopen else "; never acknowledged, never reopens the case"),
                case_id=case.id,
                message_id=message_id,
                mailbox=origin.mailbox,
                verdict=verdict.kind.value,
            )
        case.updated_at = utcnow()
        session.add(case)
        role = match.author_role
        if role == AuthorRole.AGENT:
            done = self.casework.agent_reply(session, case, inbound, raw)
            return Outcome(OutcomeKind.FOLLOW_UP, case.number, done.summary, done.queued)
        if role == AuthorRole.EXTERNAL or not verdict.may_reopen:
            # Forged agents, automatic and bulk mail are on record, and change nothing.
            return Outcome(OutcomeKind.FOLLOW_UP, case.number, match.reason)
        sender = inbound.sender.address if inbound.sender else "someone"
        if case.status in (CaseStatus.RESOLVED, CaseStatus.CLOSED):
            self.casework.reopen(session, case, sender)
        elif case.status == CaseStatus.PENDING:
            self.casework.set_status(session, case, CaseStatus.OPEN, sender, "the customer answered")
        done = self.casework.notify(session, case, inbound, raw, f"Reply from {sender}")
        return Outcome(OutcomeKind.FOLLOW_UP, case.number, match.reason, done.queued)

    def _new_case(
        self,
        session: Session,
        origin: Origin,
        inbound: Inbound,
        raw: bytes,
        verdict: Verdict,
        decision: Decision,
        earlier_case: Case | None,
    ) -> Outcome:
        department = self.config.mailboxes[decision.department]
        sender = inbound.sender
        customer = store.customer_for(session, sender) if sender else None
        now = utcnow()  # given, not left to the defaults: pydantic inspects a default factory each time
        case = Case(
            number=next_case_number(session, department.prefix),
            department=decision.department,
            subject=inbound.subject or "(no subject)",
            priority=decision.priority,
            category=decision.category,
            group=decision.group,
            assignee=decision.assignee,
            tags=list(decision.tags),
            language=decision.language,
            customer_id=customer.id if customer else None,
            status=CaseStatus.NEW,
            related_case_id=earlier_case.id if earlier_case else None,
            created_at=now,
            updated_at=now,
        )
        store.add_case(session, case)
        message_id = store.add_incoming(session, origin, inbound, case.id, AuthorRole.CUSTOMER)
        store.record(
            session,
            EventKind.CASE_CREATED,
            f"{case.number} opened in {decision.department} from mail to {origin.mailbox}",
            case_id=case.id,
            message_id=message_id,
            mailbox=origin.mailbox,
        )
        if earlier_case is not None:
            store.record(
                session,
                EventKind.LINKED,
                f"a reply to {earlier_case.number}, finished more than "
                f"{self.config.file.agents.reopen_days:g} days ago: a new case, linked to it",
                case_id=case.id,
                related_case=earlier_case.number,
            )
        store.record(
            session,
            EventKind.ROUTED,
            decision.explanation,
            case_id=case.id,
            mailbox=origin.mailbox,
            rules=list(decision.matched_rules),
            department=decision.department,
            priority=decision.priority,
            category=decision.category,
            group=decision.group,
            assignee=decision.assignee,
            tags=list(decision.tags),
            template=decision.template,
        )
        if verdict.kind != Kind.NORMAL:
            store.record(
                session, EventKind.SCREENED, verdict.explanation, case_id=case.id, mailbox=origin.mailbox
            )

        queued = 0
        if decision.template is None:
            store.record(
                session, EventKind.NOT_ACKNOWLEDGED, "routing said: do not acknowledge", case_id=case.id
            )
        elif not verdict.may_acknowledge:
            store.record(
                session, EventKind.NOT_ACKNOWLEDGED, f"screening: {verdict.explanation}", case_id=case.id
            )
        elif customer is None:
            store.record(
                session, EventKind.NOT_ACKNOWLEDGED, "the message has no sender address", case_id=case.id
            )
        elif (stale := self._too_old_to_acknowledge(origin)) is not None:
            store.record(session, EventKind.NOT_ACKNOWLEDGED, stale, case_id=case.id)
        elif (limited := self._over_acknowledgement_limit(session, customer)) is not None:
            store.record(session, EventKind.NOT_ACKNOWLEDGED, limited, case_id=case.id, rate_limited=True)
        else:
            queued += self.casework.acknowledge(session, case, inbound, decision.template).queued
        queued += self.casework.notify(session, case, inbound, raw, "New case").queued
        return Outcome(OutcomeKind.NEW_CASE, case.number, decision.explanation, queued)

    def _too_old_to_acknowledge(self, origin: Origin) -> str | None:
        """Why mail that arrived long before we read it (a migration, an outage) gets no answer."""
        mailbox = self.config.mailboxes.get(origin.mailbox)
        if origin.received_at is None or mailbox is None:
            return None
        if utcnow() - origin.received_at <= mailbox.acknowledge_max_age:
            return None
        return (
            f"arrived in {origin.mailbox} at {origin.received_at:%Y-%m-%d %H:%M %z}, longer ago "
            f"than its acknowledge_max_age ({mailbox.acknowledge_max_age})"
        )

    def _over_acknowledgement_limit(self, session: Session, customer: Customer) -> str | None:
        """Why this sender gets no more acknowledgements for now, or None while under the limit."""
        limits = self.config.limits
        since = utcnow() - timedelta(seconds=limits.acknowledgement_window)
        assert customer.id is not None  # inserted by customer_for
        sent = store.acknowledgements_to(session, customer.id, since, limits.acknowledgements_per_sender)
        if sent < limits.acknowledgements_per_sender:
            return None
        # The count stops at the limit, so it tells no more than that the limit is reached.
        return (
            f"rate limit: {customer.address} has had the most acknowledgements allowed "
            f"({limits.acknowledgements_per_sender}) in the last {limits.acknowledgement_window:.0f}s"
        )

    def _bounce(self, session: Session, origin: Origin, inbound: Inbound, verdict: Verdict) -> Outcome | None:
        """A bounce of mail we sent: attach it to that mail's case and mark the mail bounced.
        None when it names none of our mail; then it is screened like any other bounce."""
        rows = [r for r in store.outbox_by_message_ids(session, inbound.quoted_message_ids) if r.case_id]
        if not rows:
            return None
        case = session.get(Case, rows[0].case_id)
        assert case is not None
        message_id = store.add_incoming(session, origin, inbound, case.id, AuthorRole.SYSTEM)
        status = _DSN_STATUS.search(inbound.text)
        why = " ".join(status.group(0).split()) if status else verdict.explanation
        for row in rows:
            row.state = OutboxState.BOUNCED
            row.last_error = f"bounced: {why}"[:1000]
            session.add(row)
            store.record(
                session,
                EventKind.BOUNCED,
                f"{row.kind} to {', '.join(row.rcpt_to)} bounced: {why}",
                case_id=row.case_id,
                message_id=message_id,
                mailbox=origin.mailbox,
                outbox_id=row.id,
                message_id_header=row.message_id,
            )
        return Outcome(OutcomeKind.BOUNCED, case.number, f"bounce of {rows[0].message_id}: {why}")

    def refuse_oversized(self, start: bytes, size: int, origin: Origin) -> Outcome:
        """Too large to read: `start` is the message's beginning (the fetch worker downloads only
        its header), `size` its size. The bytes stay on the IMAP server (moved to the quarantine
        folder), not in our database: a size limit that still stored the bytes would protect
        nothing. The headers and size are recorded so a person can find it and decide."""
        limit = self.config.limits.max_message_size
        reason = f"{size} bytes, more than max_message_size ({limit} bytes); not read"
        head = start[:OVERSIZED_HEADER_BYTES].split(b"\r\n\r\n", 1)[0].split(b"\n\n", 1)[0]
        headers = head.decode("utf-8", "replace")
        self._set_aside(head, origin, "refused", reason, keep_raw=False, size=size, headers=headers)
        return Outcome(OutcomeKind.REFUSED, None, reason)

    def _refuse(self, raw: bytes, origin: Origin, error: ParseError) -> Outcome:
        """Not an email at all: keep the bytes and say why, so a person can look at it."""
        self._set_aside(raw, origin, "refused", str(error))
        return Outcome(OutcomeKind.REFUSED, None, str(error))

    def quarantine(self, raw: bytes, origin: Origin, error: Exception) -> Outcome:
        """Processing failed again and again: keep the bytes and the error, let the mailbox flow on."""
        reason = f"{type(error).__name__}: {error}"
        self._set_aside(raw, origin, "quarantined", reason)
        return Outcome(OutcomeKind.QUARANTINED, None, reason)

    def _set_aside(
        self, raw: bytes, origin: Origin, kind: str, reason: str, *, keep_raw: bool = True, **data: object
    ) -> None:
        with Session(self.engine) as session:
            sha256 = hashlib.sha256(raw).hexdigest() if keep_raw else None
            if sha256 is not None:
                store.keep_raw(session, raw, sha256)
            store.record(
                session,
                kind,
                f"message UID {origin.uid} in {origin.mailbox} {kind}: {reason}",
                mailbox=origin.mailbox,
                uid=origin.uid,
                uidvalidity=origin.uidvalidity,
                raw_sha256=sha256,
                reason=reason,
                **data,
            )
            store.advance_checkpoint(session, origin)
            session.commit()
