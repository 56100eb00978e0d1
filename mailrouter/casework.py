"""What a message does to its case: acknowledgements, notifications, agent replies and commands.

Everything here runs inside the intake's transaction and only writes rows: outgoing mail goes to
the outbox, every change is an event naming who did it and why.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import Row, bindparam, exists
from sqlmodel import Session, col, func, or_, select

from mailrouter import store
from mailrouter.agents import AgentDirectory
from mailrouter.commands import Command, parse_duration, read_agent_reply
from mailrouter.compose import compose, tagged_subject
from mailrouter.config import Config, MailboxSettings
from mailrouter.models import AuthorRole, Case, CaseStatus, Customer, Direction, Message, utcnow
from mailrouter.parse import Inbound
from mailrouter.quoting import MARKER
from mailrouter.store import CASE, CUSTOMER
from mailrouter.templates import Rendered, Templates

RECENT = timedelta(days=90)
# An agent needs to know that the customer's organisation has many open cases, not how many:
# the count stops here, so that a backlog from one organisation (a whole company's staff after
# an outage) costs each notification no more than a few cases would.
ORGANISATION_CASES_COUNTED = 50
# The notification's look-ups, built once (composing a statement costs more than running it).
_OTHER_CASES = (
    select(CASE.c.number, CASE.c.status, CASE.c.subject)
    .where(CASE.c.customer_id == bindparam("customer_id"), CASE.c.id != bindparam("case_id"))
    .where(or_(CASE.c.status != CaseStatus.CLOSED, CASE.c.created_at > bindparam("recent")))
    .order_by(CASE.c.id.desc())
    .limit(10)
)
# From the open cases, not from the organisation's customers: those have every case they ever
# opened, and the open ones are what is counted (the correlated EXISTS keeps SQLite to that order).
_ORGANISATION_OPEN_CASES = select(func.count()).select_from(
    select(CASE.c.id)
    .where(
        or_(*(CASE.c.status == status for status in (CaseStatus.NEW, CaseStatus.OPEN, CaseStatus.PENDING)))
    )
    .where(CASE.c.id != bindparam("case_id"))
    .where(
        exists().where(
            CUSTOMER.c.id == CASE.c.customer_id, CUSTOMER.c.organisation == bindparam("organisation")
        )
    )
    .limit(ORGANISATION_CASES_COUNTED)
    .subquery()
)
COMMAND_HELP = (
    "Commands stand on their own lines at the top of your reply:\n"
    "  #note              internal: recorded on the case, never sent to the customer\n"
    "  #close  #resolve  #pending\n"
    "  #assign <agent address or group>\n"
    "  #priority <low|normal|high|urgent>\n"
    "  #tag <tag>\n"
    "  #followup <30m|4h|2d|1w>\n"
)


@dataclass(frozen=True)
class Done:
    summary: str
    queued: int = 0


class Casework:
    def __init__(self, config: Config, templates: Templates, agents: AgentDirectory) -> None:
        self.config = config
        self.templates = templates
        self.agents = agents

    def _department(self, case: Case) -> MailboxSettings:
        return self.config.mailboxes[case.department]

    def _reply_to(self, case: Case) -> str | None:
        signer = self.agents.signer
        return signer.address(self._department(case).address, case.number) if signer else None

    def acknowledge(self, session: Session, case: Case, inbound: Inbound, template: str) -> Done:
        department = self._department(case)
        customer = session.get(Customer, case.customer_id) if case.customer_id else None
        assert customer is not None, "acknowledge only cases with a sender"
        rendered = self.templates.render(
            case.department,
            template,
            (case.language, department.language),
            {"case": case, "customer": customer, "department": department, "message": inbound},
        )
        outgoing = compose(
            case_number=case.number,
            from_address=department.address,
            from_name=department.display_name,
            to=(customer.address,),
            subject=tagged_subject(case.number, inbound.subject),
            body=rendered,
            in_reply_to=inbound.message_id,
            references=inbound.references,
            auto_submitted="auto-replied",
        )
        store.queue_outgoing(session, case, outgoing, "acknowledgement", AuthorRole.SYSTEM)
        store.record(
            session,
            "acknowledgement-queued",
            f"acknowledgement to {customer.address} from template {case.department}/{template} "
            f"({case.language})",
            case_id=case.id,
            message_id_header=outgoing.message_id,
        )
        return Done("acknowledged", 1)

    def notify(
        self, session: Session, case: Case, inbound: Inbound, raw: bytes, why: str, exclude: str = ""
    ) -> Done:
        """Tell whoever has the case about a message: the case, the customer, the original attached."""

        def context() -> dict[str, object]:
            customer = session.get(Customer, case.customer_id) if case.customer_id else None
            return {
                "message": inbound,
                "why": why,
                "other_cases": self._other_cases(session, case),
                "organisation_open_cases": (count := self._organisation_open_cases(session, case, customer)),
                "organisation_open_cases_or_more": count == ORGANISATION_CASES_COUNTED,
            }

        return self._mail_agents(
            session, case, "notification", "notify", why, context, exclude=exclude, attach=raw
        )

    def remind(self, session: Session, case: Case) -> Done:
        """The follow-up an agent asked for with #followup is due: tell whoever has the case."""
        return self._mail_agents(session, case, "reminder", "remind", "Follow-up due", dict)

    def _mail_agents(
        self,
        session: Session,
        case: Case,
        kind: str,
        template: str,
        why: str,
        context: Callable[[], dict[str, object]],
        *,
        exclude: str = "",
        attach: bytes | None = None,
    ) -> Done:
        """Mail the assignee, or else the case's group, or else the department's group, with the
        signed Reply-To that lets them answer and command from their mail client. The context is
        looked up only when someone is to be told: it costs queries on every new case."""
        if self.agents.signer is None:
            return Done("no agents configured")
        department = self._department(case)
        group = case.group or department.group
        recipients = [case.assignee] if case.assignee else list(self.agents.members(group))
        recipients = [r for r in recipients if r != exclude]
        if not recipients:
            store.record(session, "not-notified", f"{why}: no assignee and no group members", case_id=case.id)
            return Done("nobody to tell")
        customer = session.get(Customer, case.customer_id) if case.customer_id else None
        rendered = self.templates.render(
            case.department,
            template,
            (department.language,),
            {"case": case, "customer": customer, "department": department, **context()},
        )
        outgoing = compose(
            case_number=case.number,
            from_address=department.address,
            from_name=department.display_name,
            to=tuple(recipients),
            subject=f"[{case.number}] {why}: {case.subject}",
            body=rendered,
            auto_submitted="auto-generated",
            reply_to=self._reply_to(case),
            attach_original=attach,
        )
        store.queue_outgoing(session, case, outgoing, kind, AuthorRole.SYSTEM)
        store.record(session, "notified", f"{why}: {kind} to {', '.join(recipients)}", case_id=case.id)
        return Done(f"{kind} to {', '.join(recipients)}", 1)

    def _other_cases(self, session: Session, case: Case) -> Sequence[Row]:
        """The customer's other open cases, and their recent closed ones."""
        if case.customer_id is None:
            return []
        params = {"customer_id": case.customer_id, "case_id": case.id, "recent": utcnow() - RECENT}
        return session.connection().execute(_OTHER_CASES, params).all()

    def _organisation_open_cases(self, session: Session, case: Case, customer: Customer | None) -> int:
        """Counted up to ORGANISATION_CASES_COUNTED."""
        if customer is None or not customer.organisation:
            return 0
        params = {"case_id": case.id, "organisation": customer.organisation}
        return session.connection().execute(_ORGANISATION_OPEN_CASES, params).scalar_one()

    def agent_reply(self, session: Session, case: Case, inbound: Inbound, raw: bytes) -> Done:
        """Obey the commands, then relay the answer or record the note. Any bad command: neither."""
        agent = inbound.sender.address if inbound.sender else ""
        assignable = self.agents.agents | frozenset(self.agents.groups)
        reply = read_agent_reply(inbound.text, assignable)
        if reply.errors:
            return self._reject_commands(session, case, inbound, agent, reply.errors)
        status_before = case.status
        queued = 0
        for command in reply.commands:
            queued += self._obey(session, case, command, agent, inbound, raw)
        if reply.is_note:
            store.record(session, "note", reply.answer or "(empty note)", case_id=case.id, agent=agent)
            return Done(f"note by {agent}", queued)
        if reply.answer:
            queued += self._relay(session, case, reply.answer, agent)
            if case.first_response_at is None:
                case.first_response_at = utcnow()
            if case.status == status_before and case.status in (CaseStatus.NEW, CaseStatus.PENDING):
                self.set_status(session, case, CaseStatus.OPEN, agent, "answered the customer")
        session.add(case)
        done = ", ".join(str(c) for c in reply.commands) or "no commands"
        return Done(f"agent {agent}: {done}{'; answer relayed' if reply.answer else ''}", queued)

    def _relay(self, session: Session, case: Case, answer: str, agent: str) -> int:
        customer = session.get(Customer, case.customer_id) if case.customer_id else None
        if customer is None:
            store.record(
                session,
                "not-relayed",
                f"answer from {agent}: the case has no customer address",
                case_id=case.id,
            )
            return 0
        last = session.exec(
            select(Message)
            .where(Message.case_id == case.id, Message.direction == Direction.IN)
            .where(Message.author_role == AuthorRole.CUSTOMER)
            .order_by(col(Message.id).desc())
        ).first()
        department = self._department(case)
        outgoing = compose(
            case_number=case.number,
            from_address=department.address,
            from_name=department.display_name,
            to=(customer.address,),
            subject=tagged_subject(case.number, case.subject),
            body=Rendered(answer + "\n", None),
            in_reply_to=last.message_id if last else "",
            references=tuple(last.references) if last else (),
        )
        store.queue_outgoing(session, case, outgoing, "agent-reply", AuthorRole.AGENT)
        store.record(
            session,
            "relayed",
            f"answer from {agent} relayed to {customer.address} as {department.address}",
            case_id=case.id,
            agent=agent,
        )
        return 1

    def _reject_commands(
        self, session: Session, case: Case, inbound: Inbound, agent: str, errors: tuple[str, ...]
    ) -> Done:
        department = self._department(case)
        text = (
            f"{MARKER}\n\n"
            f"Your reply to {case.number} was not sent to the customer, and none of its commands were "
            "carried out:\n\n"
            + "".join(f"  - {e}\n" for e in errors)
            + "\n"
            + COMMAND_HELP
            + "\nCorrect the command and reply again.\n"
        )
        outgoing = compose(
            case_number=case.number,
            from_address=department.address,
            from_name=department.display_name,
            to=(agent,),
            subject=tagged_subject(case.number, inbound.subject),
            body=Rendered(text, None),
            in_reply_to=inbound.message_id,
            references=inbound.references,
            auto_submitted="auto-replied",
            reply_to=self._reply_to(case),
        )
        store.queue_outgoing(session, case, outgoing, "command-error", AuthorRole.SYSTEM)
        store.record(session, "commands-rejected", f"from {agent}: {'; '.join(errors)}", case_id=case.id)
        return Done(f"commands from {agent} rejected: {'; '.join(errors)}", 1)

    def _obey(
        self, session: Session, case: Case, command: Command, agent: str, inbound: Inbound, raw: bytes
    ) -> int:
        name, argument = command.name, command.argument
        if name == "note":
            return 0
        if name in ("close", "resolve", "pending"):
            status = {
                "close": CaseStatus.CLOSED,
                "resolve": CaseStatus.RESOLVED,
                "pending": CaseStatus.PENDING,
            }
            self.set_status(session, case, status[name], agent, str(command))
            return 0
        if name == "assign":
            target = argument.lower()
            if target in self.agents.groups:
                case.group, case.assignee = target, ""
            else:
                case.assignee = target
            store.record(
                session, "assigned", f"{agent} assigned the case to {target} ({command})", case_id=case.id
            )
            return self.notify(
                session, case, inbound, raw, f"Assigned to you by {agent}", exclude=agent
            ).queued
        if name == "priority":
            self._changed(session, case, "priority", argument.lower(), agent, command)
        elif name == "tag":
            if argument not in case.tags:
                case.tags = [*case.tags, argument]
                store.record(session, "tagged", f"{agent} added tag {argument} ({command})", case_id=case.id)
        elif name == "followup":
            duration = parse_duration(argument)
            assert duration is not None, "checked by read_agent_reply"
            case.follow_up_at = utcnow() + duration
            store.record(
                session,
                "follow-up-set",
                f"{agent} set a follow-up for {case.follow_up_at:%Y-%m-%d %H:%M} UTC ({command})",
                case_id=case.id,
            )
        return 0

    def _changed(
        self, session: Session, case: Case, field: str, value: str, agent: str, command: Command
    ) -> None:
        before = getattr(case, field)
        setattr(case, field, value)
        store.record(
            session,
            f"{field}-changed",
            f"{agent} changed {field} {before} → {value} ({command})",
            case_id=case.id,
        )

    def set_status(self, session: Session, case: Case, status: CaseStatus, who: str, why: str) -> None:
        before = case.status
        case.status = status
        if status in (CaseStatus.RESOLVED, CaseStatus.CLOSED):
            case.resolved_at = case.resolved_at or utcnow()
        else:
            case.resolved_at = None
        case.updated_at = utcnow()
        store.record(session, "status-changed", f"{who}: {before} → {status} ({why})", case_id=case.id)

    def reopen(self, session: Session, case: Case, who: str) -> None:
        self.set_status(session, case, CaseStatus.OPEN, who, "replied to a finished case: reopened")
