"""Who the agents are, and what proves that a message really comes from one.

A From header is not proof. Agent powers (relaying to the customer, commands) need either the
per-case signed reply address that notifications carry in Reply-To, or an
Authentication-Results header from a server we trust showing DKIM or SPF pass for the agent's
domain. Without either, a message with an agent's From is an external message, and flagged.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from collections.abc import Iterable
from dataclasses import dataclass

from mailrouter.parse import Inbound

_DETAIL = re.compile(r"^(?P<local>[^+@]+)\+(?P<case>[a-z][a-z0-9]*-\d+)\.(?P<mac>[a-z2-7]+)@(?P<domain>.+)$")
MAC_LENGTH = 16  # base32 characters: 80 bits, far beyond guessing by mail


class ReplySigner:
    """Per-case reply addresses (it-support+it-1042.<mac>@example.test) that a stranger cannot forge.

    Lower case throughout: mail systems may change the case of a local part on the way back.
    """

    def __init__(self, secret: bytes) -> None:
        self._secret = secret

    def _mac(self, case_number: str) -> str:
        digest = hmac.new(self._secret, case_number.lower().encode(), hashlib.sha256).digest()
        return base64.b32encode(digest).decode().lower()[:MAC_LENGTH]

    def address(self, department_address: str, case_number: str) -> str:
        local, _, domain = department_address.partition("@")
        return f"{local}+{case_number.lower()}.{self._mac(case_number)}@{domain}"

    def read(self, address: str, department_addresses: frozenset[str]) -> SignedAddress | None:
        """The case a signed address names, and whether its MAC is right; None if not one of ours."""
        match = _DETAIL.match(address.lower())
        if match is None or f"{match['local']}@{match['domain']}" not in department_addresses:
            return None
        number = match["case"].upper()
        valid = hmac.compare_digest(match["mac"], self._mac(number))
        return SignedAddress(address=address.lower(), case_number=number, valid=valid)


@dataclass(frozen=True)
class SignedAddress:
    address: str
    case_number: str
    valid: bool


@dataclass(frozen=True)
class AgentDirectory:
    """The agents and groups of config.toml, and the means to tell a real agent from a forged one."""

    groups: dict[str, tuple[str, ...]]
    signer: ReplySigner | None
    trusted_authserv_ids: frozenset[str]
    department_addresses: frozenset[str]

    @property
    def agents(self) -> frozenset[str]:
        return frozenset(member for members in self.groups.values() for member in members)

    def is_agent(self, address: str) -> bool:
        return address in self.agents

    def members(self, group: str) -> tuple[str, ...]:
        return self.groups.get(group, ())

    def signed_addresses(self, inbound: Inbound) -> list[SignedAddress]:
        if self.signer is None:
            return []
        candidates = [a.address for a in (*inbound.to, *inbound.cc)]
        for name in ("delivered-to", "x-original-to"):
            candidates.extend(v.strip().strip("<>").lower() for v in inbound.headers.get(name, ()))
        found = (self.signer.read(a, self.department_addresses) for a in dict.fromkeys(candidates))
        return [s for s in found if s is not None]

    def authenticated(self, inbound: Inbound, address: str) -> str | None:
        """Why the sender's domain is vouched for by a trusted server, or None if it is not."""
        domain = address.rpartition("@")[2]
        for value in inbound.headers.get("authentication-results", ()):
            head, _, results = value.partition(";")
            authserv_id = head.split()[0].lower() if head.split() else ""
            if authserv_id in self.trusted_authserv_ids:
                reason = _passing(results, domain)
                if reason:
                    return f"{reason} according to {authserv_id}"
        return None


def _passing(results: str, domain: str) -> str | None:
    """'dkim=pass' for the domain (header.d or header.i), or 'spf=pass' for it (smtp.mailfrom)."""
    for clause in results.split(";"):
        words = clause.strip().lower().split()
        if not words:
            continue
        method, _, result = words[0].partition("=")
        properties = dict(w.split("=", 1) for w in words[1:] if "=" in w)
        if result != "pass":
            continue
        if method == "dkim":
            signer = properties.get("header.d") or properties.get("header.i", "").rpartition("@")[2]
            if signer == domain:
                return f"DKIM pass for {domain}"
        if method == "spf":
            mailfrom = properties.get("smtp.mailfrom", "")
            if mailfrom.rpartition("@")[2] == domain:
                return f"SPF pass for {domain}"
    return None


def directory_from(
    groups: dict[str, list[str]],
    secret: bytes | None,
    trusted_authserv_ids: Iterable[str],
    department_addresses: frozenset[str],
) -> AgentDirectory:
    return AgentDirectory(
        groups={name: tuple(m.lower() for m in members) for name, members in groups.items()},
        signer=ReplySigner(secret) if secret else None,
        trusted_authserv_ids=frozenset(s.lower() for s in trusted_authserv_ids),
        department_addresses=department_addresses,
    )
