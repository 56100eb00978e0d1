"""thread: does this message belong to a case we already have, and who wrote it?

A valid signed reply address is tried first (only we can make one), then threading headers
(they survive any subject edit), then the case tag in the subject as people type it (`[IT-1042]`,
`it-1042`, `#IT-1042`, anywhere in the subject). A tag is only a number another desk may use too:
when the message answers another installation's mail about that number (see `ours`), the tag
does not thread it. Who wrote it decides what it may do: agent powers need proof (see agents.py),
the customer is whoever the case's customer is, agent or not.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Protocol

from mailrouter.agents import AgentDirectory, Authentication, Signature, SignedAddress
from mailrouter.parse import Inbound
from mailrouter.vocabulary import AuthorRole

# Reply and forward prefixes of the clients our customers use: English, Nordic, German, Dutch, ...
_REPLY_PREFIX = re.compile(
    r"^\s*((re|sv|vs|aw|antw|wg|fw|fwd|vb|vl|tr|ref|r)\s*(\[\d+\]|\(\d+\))?\s*[:：]\s*)+",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class CaseRef:
    id: int
    number: str
    department: str
    status: str
    customer_address: str


class CaseLookup(Protocol):
    """What threading needs to know of the stored cases; the store implements it."""

    def case_by_number(self, number: str) -> CaseRef | None: ...

    def case_by_message_ids(self, message_ids: Sequence[str]) -> CaseRef | None: ...


@dataclass(frozen=True)
class ThreadMatch:
    case: CaseRef | None
    author_role: AuthorRole
    reason: str
    warnings: tuple[str, ...] = ()  # for the audit trail: forged agents, tampered addresses
    tampered: bool = False  # sent to a signed reply address with a wrong MAC
    # An agent's answer without proof (their client ignored Reply-To and wrote to the plain
    # department address, or used a retired or another agent's signed address): nothing was
    # relayed or obeyed, and the agent, at their own address, should be told how to answer.
    # Never set for a forged signed address (tampered).
    unproven_agent_answer: bool = False
    authentication: Authentication | None = None  # of the From domain, for any sender


@dataclass(frozen=True)
class CaseTags:
    """How our case tags and our Message-IDs are recognised.

    Our outgoing Message-IDs name the case (`<…IT-1042@example.test>`, or `<…IT-1042.<instance>@…>`
    with `[daemon] instance_tag`) at a department's domain. A message whose In-Reply-To/References
    name a Message-ID about the tagged number that is not ours in that sense answers another
    installation's mail with the same prefix, and its tag is not our case's.
    """

    pattern: re.Pattern[str]
    domains: frozenset[str] = frozenset()
    instance_tag: str = ""

    def numbers(self, subject: str) -> list[str]:
        return list(dict.fromkeys((m[1] or m[2]).upper() for m in self.pattern.finditer(subject)))

    def names_case_elsewhere(self, message_id: str, number: str) -> bool:
        """A Message-ID about case `number` made by another installation than ours."""
        local, _, domain = message_id.strip("<>").lower().rpartition("@")
        tokens = local.split(".")
        number = number.lower()
        if number not in tokens:
            return False
        if domain not in self.domains:
            return True
        if not self.instance_tag:
            return False
        after = tokens.index(number) + 1
        return after >= len(tokens) or tokens[after] != self.instance_tag


def case_tag_pattern(prefixes: Iterable[str]) -> re.Pattern[str]:
    """`[IT-1042]` anywhere, or `IT-1042` standing on its own: after the start, a blank, `#`, `(`
    or `:`, and before a character that cannot continue a word, a number or an address (so not
    `WIFI-10423`, `IT-1042-b`, `IT-1042.pdf`, `IT-1042@host` or the path of a URL)."""
    alternatives = "|".join(sorted((re.escape(p) for p in prefixes), key=len, reverse=True))
    tag = rf"((?:{alternatives})-\d+)"
    return re.compile(
        rf"\[\s*{tag}\s*\]|(?:^|(?<=[\s#(:]))#?{tag}(?=$|[\s),;:!?\]]|\.(?:\s|$))", re.IGNORECASE
    )


def case_tags(
    prefixes: Iterable[str], department_addresses: Iterable[str], instance_tag: str = ""
) -> CaseTags:
    domains = frozenset(a.rpartition("@")[2].lower() for a in department_addresses)
    return CaseTags(case_tag_pattern(prefixes), domains, instance_tag.lower())


def message_id_idstring(case_number: str, instance_tag: str) -> str:
    """What compose puts before the @ of our Message-IDs, so that replies to them read as ours."""
    return f"{case_number}.{instance_tag}" if instance_tag else case_number


def strip_reply_prefixes(subject: str) -> str:
    return _REPLY_PREFIX.sub("", subject).strip()


def thread(
    inbound: Inbound,
    tags: CaseTags,
    lookup: CaseLookup,
    agents: AgentDirectory,
    today: date | None = None,
) -> ThreadMatch:
    sender = inbound.sender.address if inbound.sender else ""
    signed = agents.signed_addresses(inbound, today or datetime.now(UTC).date())
    warnings = [
        f"signed reply address {s.address} has a wrong MAC or an unknown key: rejected"
        for s in signed
        if s.signature == Signature.FORGED
    ]
    warnings += [
        f"signed reply address {s.address} uses key {s.key_id}, retired: not proof"
        for s in signed
        if s.signature == Signature.EXPIRED
    ]
    authentication = agents.authentication(inbound)
    tampered = any(s.signature == Signature.FORGED for s in signed)
    case, why = _find_case(inbound, tags, lookup, {s.case_number for s in signed if s.valid})
    if case is None:
        return ThreadMatch(None, AuthorRole.CUSTOMER, why, tuple(warnings), tampered, False, authentication)
    role, proof = _author(sender, case, agents, signed, authentication)
    unproven = False
    if role == AuthorRole.EXTERNAL:
        borrowed = any(s.valid and s.case_number == case.number for s in signed)
        unproven = not tampered
        warnings.append(
            f"From claims agent {sender}, but "
            + (
                "the signed reply address was issued to another agent"
                if borrowed
                else "the message has neither a signed reply address issued to them nor aligned "
                f"authentication ({authentication.reason})"
            )
            + ": recorded as external, not relayed, not obeyed"
        )
    who = f"the {role.value}" + (f" ({proof})" if proof else "")
    return ThreadMatch(
        case,
        role,
        f"joins {case.number}: {why}; written by {who}",
        tuple(warnings),
        tampered,
        unproven,
        authentication,
    )


def _find_case(
    inbound: Inbound, tags: CaseTags, lookup: CaseLookup, signed_cases: set[str]
) -> tuple[CaseRef | None, str]:
    for number in sorted(signed_cases):
        case = lookup.case_by_number(number)
        if case is not None:
            return case, "sent to the case's signed reply address"
    if inbound.thread_ids:
        case = lookup.case_by_message_ids(inbound.thread_ids)
        if case is not None:
            return case, "In-Reply-To/References name a message of the case"
    elsewhere = []
    for number in tags.numbers(inbound.subject):
        foreign = next((i for i in inbound.thread_ids if tags.names_case_elsewhere(i, number)), None)
        if foreign is not None:
            elsewhere.append(f"{number} (it answers {foreign}, another installation's message)")
            continue
        case = lookup.case_by_number(number)
        if case is not None:
            return case, f"the subject carries the case tag {number}"
    if elsewhere:
        return None, f"the subject's tag is another desk's: {', '.join(elsewhere)}; a new conversation"
    return None, "no case tag or known Message-ID: a new conversation"


def _author(
    sender: str,
    case: CaseRef,
    agents: AgentDirectory,
    signed: list[SignedAddress],
    authentication: Authentication,
) -> tuple[AuthorRole, str]:
    """Agent powers from a signed address issued to the sender, the customer role from being the
    case's customer (an agent with a problem of their own is a customer), agent powers otherwise
    from aligned authentication only."""
    is_agent = agents.is_agent(sender)
    if is_agent and any(s.issued_to_sender and s.case_number == case.number for s in signed):
        return AuthorRole.AGENT, "proven by the signed reply address issued to them"
    if sender == case.customer_address:
        return AuthorRole.CUSTOMER, ""
    if is_agent:
        if authentication.authenticated:
            return AuthorRole.AGENT, f"proven by {authentication.reason}"
        return AuthorRole.EXTERNAL, ""
    return AuthorRole.PARTICIPANT, ""
