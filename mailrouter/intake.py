"""intake: one message's journey, orchestrated. parse → screen → thread → route, casework decides
a plan, store.apply writes it: one transaction per message.

The fetch worker calls `Intake.process` off the event loop; the CLI uses the same object, so
the daemon and `mailrouter` commands can never disagree about what a message means.
"""

from __future__ import annotations

import dataclasses
import logging

from sqlalchemy import Engine
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session

from mailrouter import store
from mailrouter.agents import AgentDirectory
from mailrouter.casework import Casework
from mailrouter.config import Config
from mailrouter.errors import ParseError
from mailrouter.models import utcnow
from mailrouter.notices import Notices
from mailrouter.parse import Address, Inbound, parse
from mailrouter.plan import Origin, Outcome, OutcomeKind, Plan, PlannedEvent
from mailrouter.route import Rule, route
from mailrouter.screen import is_own_address, screen
from mailrouter.templates import Templates
from mailrouter.thread import case_tags, thread

log = logging.getLogger(__name__)

# What an oversized message leaves in the audit trail: enough headers to find and judge it.
OVERSIZED_HEADER_BYTES = 16 * 1024
RACE_ATTEMPTS = 3


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
        notices = Notices(
            config.mailboxes,
            templates,
            agents.signer,
            config.daemon.instance_tag,
            config.limits.relay_attachment_bytes,
            config.file.privacy.excerpt_chars,
        )
        self.casework = Casework(config, notices, agents)
        self.own_addresses = config.own_addresses()
        self.tags = case_tags(
            (m.prefix for m in config.mailboxes.values()), self.own_addresses, config.daemon.instance_tag
        )

    def process(self, raw: bytes, origin: Origin, parsed: Inbound | ParseError | None = None) -> Outcome:
        """Register one message; commits once. Raises only for failures worth retrying.
        `parsed`: what parse(raw) gave elsewhere (a worker process), so it is not parsed again."""
        if len(raw) > self.config.limits.max_message_size:
            return self.refuse_oversized(raw, len(raw), origin)
        if isinstance(parsed, ParseError):
            return self._refuse(raw, origin, parsed)
        try:
            inbound = parsed or parse(raw, html_chars=self.config.limits.html_to_text_chars)
        except ParseError as exc:
            return self._refuse(raw, origin, exc)
        for attempt in range(1, RACE_ATTEMPTS + 1):
            try:
                with Session(self.engine, expire_on_commit=False) as session:
                    plan = self.plan(session, raw, origin, inbound)
                    store.apply(session, plan)
                    session.commit()
                return plan.outcome
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

    def plan(self, session: Session, raw: bytes, origin: Origin, inbound: Inbound) -> Plan:
        """What the message does, read from the database in `session` and decided by casework.
        The one write before the plan is applied: a new case draws its number (its mail carries
        it), which rolls back with the rest."""
        facts = store.SqlFacts(session)
        casework = self.casework
        earlier, reused_by = facts.identity(origin.mailbox, inbound)
        if earlier is not None:
            return casework.duplicate(origin, earlier, inbound.message_id or inbound.sha256)
        now = utcnow()
        verdict = screen(inbound, self.own_addresses)
        # Only a real delivery status notification may mark our mail bounced, and only mail the
        # relay took: anyone can send mail from mailer-daemon@ naming one of our Message-IDs.
        if verdict.dsn is not None and (sent := facts.sent_mail(verdict.dsn.original_message_ids)):
            return casework.bounce(inbound, origin, raw, verdict, facts.case(sent[0].case_id), sent)
        match = thread(inbound, self.tags, facts, self.agents)
        notes = casework.parse_notes(inbound, origin, reused_by)
        notes += casework.warnings(match, origin)
        case = facts.case(match.case.id) if match.case else None
        answered = facts.sent_reports(inbound.thread_ids) if case is None and inbound.thread_ids else []
        report_reply = casework.report_reply(inbound, origin, raw, answered) if answered else None
        if case is not None and not casework.too_late(case, inbound, match, verdict, now):
            plan = casework.follow_up(inbound, origin, raw, verdict, match, case, now, facts)
        elif report_reply is not None:
            plan = report_reply
        elif match.tampered:
            plan = casework.without_case(inbound, origin, raw, "a forged or tampered signed reply address")
        elif not verdict.may_open_case:
            plan = casework.without_case(inbound, origin, raw, verdict.explanation, verdict.kind.value)
        else:
            decision = route(
                inbound,
                origin.mailbox,
                self.config.mailboxes,
                self.rules,
                regex_chars=self.config.limits.regex_text_chars,
            )
            number = store.next_case_number(session, self.config.mailboxes[decision.department].prefix)
            addressee = answer_address(inbound, self.own_addresses)
            customer = facts.customer(addressee) if addressee else None
            plan = casework.new_case(
                inbound,
                origin,
                raw,
                verdict,
                decision,
                number,
                customer,
                case,
                match.authentication,
                now,
                facts,
            )
        return _with_events_first(plan, notes)

    def refuse_oversized(self, start: bytes, size: int, origin: Origin) -> Outcome:
        """Too large to read: `start` is the message's beginning (the fetch worker downloads only
        its header), `size` its size. The bytes stay on the IMAP server (moved to the quarantine
        folder), not in our database: a size limit that still stored the bytes would protect
        nothing. The headers and size are recorded so a person can find it and decide."""
        limit = self.config.limits.max_message_size
        reason = f"{size} bytes, more than max_message_size ({limit} bytes); not read"
        head = start[:OVERSIZED_HEADER_BYTES].split(b"\r\n\r\n", 1)[0].split(b"\n\n", 1)[0]
        plan = self.casework.set_aside(
            head,
            origin,
            OutcomeKind.REFUSED,
            reason,
            keep_raw=False,
            size=size,
            headers=head.decode("utf-8", "replace"),
        )
        return self._apply(plan)

    def _refuse(self, raw: bytes, origin: Origin, error: ParseError) -> Outcome:
        """Not an email at all: keep the bytes and say why, so a person can look at it."""
        return self._apply(self.casework.set_aside(raw, origin, OutcomeKind.REFUSED, str(error)))

    def quarantine(self, raw: bytes, origin: Origin, error: Exception) -> Outcome:
        """Processing failed again and again: keep the bytes and the error, let the mailbox flow on."""
        reason = f"{type(error).__name__}: {error}"
        return self._apply(self.casework.set_aside(raw, origin, OutcomeKind.QUARANTINED, reason))

    def _apply(self, plan: Plan) -> Outcome:
        with Session(self.engine) as session:
            store.apply(session, plan)
            session.commit()
        return plan.outcome


def _with_events_first(plan: Plan, events: tuple[PlannedEvent, ...]) -> Plan:
    if not events:
        return plan
    return dataclasses.replace(plan, events=events + plan.events)


def answer_address(inbound: Inbound, own_addresses: frozenset[str]) -> Address | None:
    """Who the case's customer is, so where answers go: the Reply-To a web form or a noreply
    sender names, else From. Never one of our own addresses."""
    for candidate in inbound.reply_to:
        if not is_own_address(candidate.address, own_addresses):
            return candidate
    return inbound.sender
