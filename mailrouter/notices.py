"""notices: the mail a case queues (acknowledgement, notification, reminder, relayed answer,
status update and survey, command error), rendered and composed, never sent: the plan carries
it to the outbox.

From the department's address; to agents with the signed Reply-To that lets them answer and
command from their mail client.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping, Sequence
from typing import Any

from mailrouter.agents import ReplySigner
from mailrouter.commands import COMMAND_HELP
from mailrouter.compose import FileAttachment, compose, tagged_subject
from mailrouter.config import MailboxSettings
from mailrouter.parse import Inbound
from mailrouter.plan import CaseView, QueuedMail, ShownMessage, discreet
from mailrouter.quoting import MARKER
from mailrouter.templates import Rendered, Templates
from mailrouter.vocabulary import AuthorRole, OutboxKind


class Notices:
    def __init__(
        self,
        mailboxes: Mapping[str, MailboxSettings],
        templates: Templates,
        signer: ReplySigner | None,
        instance_tag: str = "",
        relay_attachment_bytes: int = 10 * 1024 * 1024,
        excerpt_chars: int = 120,
    ) -> None:
        self.relay_attachment_bytes = relay_attachment_bytes
        self.excerpt_chars = excerpt_chars
        self.mailboxes = mailboxes
        self.templates = templates
        self.signer = signer
        self.instance_tag = instance_tag

    def _mail(
        self,
        kind: OutboxKind,
        case: CaseView,
        to: tuple[str, ...],
        subject: str,
        body: Rendered,
        *,
        role: AuthorRole = AuthorRole.SYSTEM,
        answering: Inbound | None = None,
        in_reply_to: str = "",
        references: tuple[str, ...] = (),
        auto_submitted: str | None = None,
        signed_for: str | None = None,
        attach: bytes | None = None,
        cc: tuple[str, ...] = (),
        files: tuple[FileAttachment, ...] = (),
    ) -> QueuedMail:
        """`signed_for`: the agent whose signed reply address goes in Reply-To; it proves nobody else."""
        department = self.mailboxes[case.department]
        reply_to = None
        if signed_for is not None and self.signer is not None:
            reply_to = self.signer.address(department.address, case.number, signed_for)
        outgoing = compose(
            case_number=case.number,
            instance_tag=self.instance_tag,
            from_address=department.address,
            from_name=department.display_name,
            to=to,
            subject=subject,
            body=body,
            in_reply_to=answering.message_id if answering else in_reply_to,
            references=answering.references if answering else references,
            auto_submitted=auto_submitted,
            reply_to=reply_to,
            attach_original=attach,
            cc=cc,
            files=files,
        )
        return QueuedMail(kind, role, outgoing)

    def _render(self, case: CaseView, template: str, languages: tuple[str, ...], **context: Any) -> Rendered:
        department = self.mailboxes[case.department]
        return self.templates.render(
            case.department,
            template,
            languages,
            {"case": case, "customer": case.customer, "department": department, **context},
        )

    def acknowledgement(
        self, case: CaseView, inbound: Inbound, template: str, *, echo: bool = True
    ) -> QueuedMail:
        """`echo` False: nothing the sender wrote (name, subject) goes back to them, for senders whose
        domain our border MTA could not authenticate (a forged From would relay it as spam)."""
        assert case.customer is not None, "acknowledge only cases with a sender"
        customer = case.customer
        department = self.mailboxes[case.department]
        if not echo:
            neutral = f"your message to {department.display_name}"
            case = dataclasses.replace(case, subject=neutral, customer=dataclasses.replace(customer, name=""))
            inbound = dataclasses.replace(inbound, subject=neutral, text="", html="", attachments=())
        body = self._render(case, template, (case.language, department.language), message=inbound)
        return self._mail(
            OutboxKind.ACKNOWLEDGEMENT,
            case,
            (customer.address,),
            tagged_subject(case.number, inbound.subject),
            body,
            answering=inbound,
            auto_submitted="auto-replied",
        )

    def to_agents(
        self,
        kind: OutboxKind,
        case: CaseView,
        recipients: tuple[str, ...],
        why: str,
        *,
        attach: bytes | None = None,
        **context: Any,
    ) -> list[QueuedMail]:
        """A notification or reminder: the case, the customer, and (for a message) the original.
        One letter per agent, each with the reply address signed for that agent alone. Of a
        sensitive case only its number, category and an excerpt: the rest stays in the
        database, for `#show` to send to one agent who asks."""
        template = {
            OutboxKind.REMINDER: "remind",
            OutboxKind.SLA_WARNING: "sla",
            OutboxKind.SLA_ESCALATION: "sla",
            OutboxKind.QUIET_REMINDER: "quiet",
        }.get(kind, "notify")
        if case.sensitive:
            case, attach = discreet(case), None
            if template == "notify":
                message: Inbound | None = context.get("message")
                template = "notify-sensitive"
                context = {"excerpt": excerpt(message.text if message else "", self.excerpt_chars)}
        department = self.mailboxes[case.department]
        body = self._render(case, template, (department.language,), why=why, **context)
        return [
            self._mail(
                kind,
                case,
                (recipient,),
                f"[{case.number}] {why}: {case.subject}",
                body,
                auto_submitted="auto-generated",
                signed_for=recipient,
                attach=attach,
            )
            for recipient in recipients
        ]

    def shown(
        self, case: CaseView, inbound: Inbound, agent: str, conversation: Sequence[ShownMessage]
    ) -> QueuedMail:
        """`#show`: the case's mail, to the agent who asked and nobody else (their own address,
        Reply-To signed for them). The attachments stay in the database: their names only."""
        customer = case.customer
        lines = [
            f"{MARKER}\n",
            f"{case.number}: {case.subject}",
            "Sensitive: for you alone. Do not forward this mail; delete it when you are done.\n",
            f"Customer:  {customer.name} <{customer.address}>" if customer else "Customer:  (unknown)",
            f"Category:  {case.category or '-'}\n",
        ]
        for shown in conversation:
            sender = f"{shown.from_name} <{shown.from_addr}>" if shown.from_name else shown.from_addr
            lines.append(f"--- {shown.received_at:%Y-%m-%d %H:%M} UTC, {shown.author_role} {sender} ---")
            lines.append(f"Subject: {shown.subject}\n")
            lines.append(shown.text.rstrip() + "\n")
            if shown.attachments:
                lines.append(f"Attachments (kept by mailrouter): {', '.join(shown.attachments)}\n")
        return self._mail(
            OutboxKind.CASE_SHOWN,
            case,
            (agent,),
            tagged_subject(case.number, inbound.subject),
            Rendered("\n".join(lines) + "\n", None),
            answering=inbound,
            auto_submitted="auto-replied",
            signed_for=agent,
        )

    def to_customer(
        self,
        kind: OutboxKind,
        case: CaseView,
        template: str,
        in_reply_to: str,
        references: tuple[str, ...],
        **context: Any,
    ) -> QueuedMail:
        """A status update or the satisfaction survey: from the department, in the customer's
        language, threaded to their last message; automatic, so no responder answers it."""
        assert case.customer is not None, "tell only cases with a customer"
        department = self.mailboxes[case.department]
        body = self._render(case, template, (case.language, department.language), **context)
        return self._mail(
            kind,
            case,
            (case.customer.address,),
            tagged_subject(case.number, case.subject),
            body,
            in_reply_to=in_reply_to,
            references=references,
            auto_submitted="auto-generated",
        )

    def relayed_answer(
        self,
        case: CaseView,
        answer: str,
        in_reply_to: str,
        references: tuple[str, ...],
        *,
        cc: tuple[str, ...] = (),
        files: tuple[FileAttachment, ...] = (),
    ) -> QueuedMail:
        """An agent's answer, to the customer and the participants on the conversation, as the
        department, with the files the agent attached (not auto-submitted: a person wrote it)."""
        assert case.customer is not None, "relay only to cases with a customer"
        return self._mail(
            OutboxKind.AGENT_REPLY,
            case,
            (case.customer.address,),
            tagged_subject(case.number, case.subject),
            Rendered(answer + "\n", None),
            role=AuthorRole.AGENT,
            in_reply_to=in_reply_to,
            references=references,
            cc=cc,
            files=files,
        )

    def files_not_sent(
        self, case: CaseView, inbound: Inbound, agent: str, refused: tuple[str, ...]
    ) -> QueuedMail:
        limit = self.relay_attachment_bytes // (1024 * 1024)
        text = (
            f"{MARKER}\n\n"
            f"Your answer on {case.number} was sent to the customer WITHOUT these attachments, "
            f"together larger than the {limit} MiB mailrouter sends on:\n\n"
            + "".join(f"  - {name}\n" for name in refused)
            + "\nShare them another way (a link), and answer again.\n"
        )
        return self._mail(
            OutboxKind.COMMAND_ERROR,
            case,
            (agent,),
            tagged_subject(case.number, inbound.subject),
            Rendered(text, None),
            answering=inbound,
            auto_submitted="auto-replied",
            signed_for=agent,
        )

    def command_error(
        self, case: CaseView, inbound: Inbound, agent: str, errors: tuple[str, ...]
    ) -> QueuedMail:
        text = (
            f"{MARKER}\n\n"
            f"Your reply to {case.number} was not sent to the customer, and none of its commands were "
            "carried out:\n\n"
            + "".join(f"  - {e}\n" for e in errors)
            + "\n"
            + COMMAND_HELP
            + "\nCorrect the command and reply again.\n"
        )
        return self._mail(
            OutboxKind.COMMAND_ERROR,
            case,
            (agent,),
            tagged_subject(case.number, inbound.subject),
            Rendered(text, None),
            answering=inbound,
            auto_submitted="auto-replied",
            signed_for=agent,
        )

    def unsent_answer(self, case: CaseView, inbound: Inbound, agent: str) -> QueuedMail:
        """To an agent whose answer came without proof (their client ignored Reply-To): at their
        own configured address, so a forged From only ever warns the real agent."""
        department = self.mailboxes[case.department]
        text = (
            f"{MARKER}\n\n"
            f"Your answer on {case.number} was NOT sent to the customer: it came to "
            f"{department.address} directly, and only an answer to the case's own reply address "
            "proves it is yours.\n\n"
            "Answer with your mail client's Reply to a notification about the case: its reply "
            "address (in Reply-To) is made for you alone. If your client ignores Reply-To, "
            "copy that address into To.\n\n" + COMMAND_HELP
        )
        return self._mail(
            OutboxKind.UNSENT_ANSWER,
            case,
            (agent,),
            tagged_subject(case.number, inbound.subject),
            Rendered(text, None),
            answering=inbound,
            auto_submitted="auto-replied",
            signed_for=agent,
        )


def excerpt(text: str, chars: int) -> str:
    """The first `chars` characters of a text on one line, cut at a word, with an ellipsis if cut."""
    flat = re.sub(r"\s+", " ", text).strip()
    if len(flat) <= chars:
        return flat
    cut = flat[:chars].rsplit(" ", 1)[0] if " " in flat[:chars] else flat[:chars]
    return cut.rstrip() + " …"
