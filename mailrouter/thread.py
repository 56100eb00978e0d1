"""thread: does this message belong to a case we already have, and who wrote it?

A valid signed reply address is tried first (only we can make one), then threading headers
(they survive any subject edit), then the case tag in the subject (it survives clients that
drop the headers, and any Re:/SV:/VS:/AW:/Fwd: prefix). Who wrote it decides what it may do:
an agent needs proof (see agents.py), a From header alone is not.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

from mailrouter.agents import AgentDirectory
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


def case_tag_pattern(prefixes: Iterable[str]) -> re.Pattern[str]:
    alternatives = "|".join(sorted((re.escape(p) for p in prefixes), key=len, reverse=True))
    return re.compile(rf"\[((?:{alternatives})-\d+)\]")


def strip_reply_prefixes(subject: str) -> str:
    return _REPLY_PREFIX.sub("", subject).strip()


def thread(
    inbound: Inbound, tag_pattern: re.Pattern[str], lookup: CaseLookup, agents: AgentDirectory
) -> ThreadMatch:
    sender = inbound.sender.address if inbound.sender else ""
    signed = agents.signed_addresses(inbound)
    warnings = [f"signed reply address {s.address} has a wrong MAC: rejected" for s in signed if not s.valid]
    valid = {s.case_number for s in signed if s.valid}

    tampered = any(not s.valid for s in signed)
    case, why = _find_case(inbound, tag_pattern, lookup, valid)
    if case is None:
        return ThreadMatch(None, AuthorRole.CUSTOMER, why, tuple(warnings), tampered)
    role, proof = _author(inbound, sender, case, agents, valid)
    if role == AuthorRole.EXTERNAL:
        warnings.append(
            f"From claims agent {sender}, but the message has neither a valid signed reply address "
            "nor trusted Authentication-Results: recorded as external, not relayed, not obeyed"
        )
    who = f"the {role.value}" + (f" ({proof})" if proof else "")
    return ThreadMatch(case, role, f"joins {case.number}: {why}; written by {who}", tuple(warnings), tampered)


def _find_case(
    inbound: Inbound, tag_pattern: re.Pattern[str], lookup: CaseLookup, signed_cases: set[str]
) -> tuple[CaseRef | None, str]:
    for number in sorted(signed_cases):
        case = lookup.case_by_number(number)
        if case is not None:
            return case, "sent to the case's signed reply address"
    if inbound.thread_ids:
        case = lookup.case_by_message_ids(inbound.thread_ids)
        if case is not None:
            return case, "In-Reply-To/References name a message of the case"
    for number in tag_pattern.findall(inbound.subject):
        case = lookup.case_by_number(number)
        if case is not None:
            return case, f"the subject carries the case tag [{number}]"
    return None, "no case tag or known Message-ID: a new conversation"


def _author(
    inbound: Inbound, sender: str, case: CaseRef, agents: AgentDirectory, signed_cases: set[str]
) -> tuple[AuthorRole, str]:
    if agents.is_agent(sender):
        if case.number in signed_cases:
            return AuthorRole.AGENT, "proven by the signed reply address"
        authenticated = agents.authenticated(inbound, sender)
        if authenticated:
            return AuthorRole.AGENT, f"proven by {authenticated}"
        return AuthorRole.EXTERNAL, ""
    if sender == case.customer_address:
        return AuthorRole.CUSTOMER, ""
    return AuthorRole.PARTICIPANT, ""
