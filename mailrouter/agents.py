"""Who the agents are, and what proves that a message really comes from one.

A From header is not proof. Agent powers (relaying to the customer, commands) need either the
signed reply address a notification to that very agent carried in Reply-To, or DKIM/DMARC
results aligned with the From domain in an Authentication-Results header our own border MTA
added (RFC 8601 section 5: only those above its own Received header are its; anything below
came with the message and may be forged). SPF vouches for the envelope sender, not for From,
and is never proof.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date
from enum import StrEnum
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mailrouter.config import Config
    from mailrouter.parse import Inbound

# it-support+it-1042.<agent tag>.<key id><mac>@example.test
_DETAIL = re.compile(
    r"^(?P<local>[^+@]+)\+(?P<case>[a-z][a-z0-9]*-\d+)\.(?P<agent>[a-z2-7]{6})\."
    r"(?P<key>[a-z0-9]{1,3})(?P<mac>[a-z2-7]{16})@(?P<domain>.+)$"
)
MAC_LENGTH = 16  # base32 characters: 80 bits, far beyond guessing by mail
AGENT_TAG_LENGTH = 6  # tells the agents of a desk apart; the MAC, not the tag, is the secret
KEY_ID = re.compile(r"^[a-z0-9]{1,3}$")
MIN_SECRET_BYTES = 32
LOCAL_PART_MAX = 64  # RFC 5321 4.5.3.1.1


@dataclass(frozen=True)
class ReplyKey:
    """One reply secret. `until` (a retired key's grace period) is the first day it is refused."""

    id: str
    secret: bytes
    until: date | None = None


class Signature(StrEnum):
    VALID = "valid"
    FORGED = "forged"  # a wrong MAC, or a key id we never had
    EXPIRED = "expired"  # signed with a retired key after its grace period


@dataclass(frozen=True)
class SignedAddress:
    """A signed reply address as read back: which case, issued to which agent, with which key."""

    address: str
    case_number: str
    agent_tag: str
    key_id: str
    signature: Signature
    issued_to_sender: bool  # the MAC is valid and the tag is the sender's: proof for that sender

    @property
    def valid(self) -> bool:
        return self.signature == Signature.VALID


class ReplySigner:
    """Per-case, per-agent reply addresses that a stranger cannot forge and another agent cannot
    borrow. The first key signs; the others are only accepted, until their `until` day, so the
    secret can be rotated without breaking the notifications agents still have.

    Lower case throughout: mail systems may change the case of a local part on the way back.
    """

    def __init__(self, keys: Sequence[ReplyKey]) -> None:
        if not keys:
            raise ValueError("a ReplySigner needs at least one key")
        self._current = keys[0]
        self._keys = {key.id: key for key in keys}

    @staticmethod
    def _digest(key: ReplyKey, text: str) -> str:
        return base64.b32encode(hmac.new(key.secret, text.encode(), hashlib.sha256).digest()).decode().lower()

    def _agent_tag(self, key: ReplyKey, agent: str) -> str:
        return self._digest(key, f"agent:{agent.lower()}")[:AGENT_TAG_LENGTH]

    def _mac(self, key: ReplyKey, case_number: str, agent_tag: str) -> str:
        return self._digest(key, f"reply:{case_number.lower()}.{agent_tag}")[:MAC_LENGTH]

    def address(self, department_address: str, case_number: str, agent: str) -> str:
        """The Reply-To for a notification of case_number to agent (one address per recipient)."""
        local, _, domain = department_address.lower().partition("@")
        key = self._current
        tag = self._agent_tag(key, agent)
        detail = f"{case_number.lower()}.{tag}.{key.id}{self._mac(key, case_number, tag)}"
        return f"{local}+{detail}@{domain}"

    def read(
        self, address: str, department_addresses: frozenset[str], sender: str, today: date
    ) -> SignedAddress | None:
        """What a signed address says, checked against the sender; None if not one of ours."""
        match = _DETAIL.match(address.lower())
        if match is None or f"{match['local']}@{match['domain']}" not in department_addresses:
            return None
        number = match["case"].upper()
        key = self._keys.get(match["key"])
        if key is None or not hmac.compare_digest(match["mac"], self._mac(key, number, match["agent"])):
            signature = Signature.FORGED
        elif key.until is not None and today >= key.until:
            signature = Signature.EXPIRED
        else:
            signature = Signature.VALID
        issued_to_sender = (
            signature == Signature.VALID
            and key is not None
            and hmac.compare_digest(match["agent"], self._agent_tag(key, sender))
        )
        return SignedAddress(
            address.lower(), number, match["agent"], match["key"], signature, issued_to_sender
        )


def longest_signed_local_part(department_address: str, case_number: str, key_id: str) -> int:
    """The length of a signed address's local part, for checking it against RFC 5321's 64 octets."""
    local = department_address.partition("@")[0]
    return len(local) + 1 + len(case_number) + 1 + AGENT_TAG_LENGTH + 1 + len(key_id) + MAC_LENGTH


class AuthStatus(StrEnum):
    AUTHENTICATED = "authenticated"  # aligned DKIM or DMARC pass from our border MTA
    NOT_AUTHENTICATED = "not-authenticated"  # our border MTA judged it, and nothing aligned passed
    UNKNOWN = "unknown"  # no Authentication-Results of ours: nothing can be said either way


@dataclass(frozen=True)
class Authentication:
    """What our own border MTA's Authentication-Results say about the message's From domain."""

    status: AuthStatus
    dmarc_pass: bool
    dkim_aligned: bool
    reason: str

    @property
    def trusted(self) -> bool:
        """Our border MTA's results were found (whatever they said)."""
        return self.status != AuthStatus.UNKNOWN

    @property
    def authenticated(self) -> bool:
        return self.status == AuthStatus.AUTHENTICATED


_COMMENT = re.compile(r"\([^()]*\)")
_RECEIVED_BY = re.compile(r"\bby\s+([^\s;]+)", re.IGNORECASE)


def _uncomment(value: str) -> str:
    """A header value without its (comments), nested ones too: they may hold ';' and 'by'."""
    previous = None
    while previous != value:
        previous, value = value, _COMMENT.sub(" ", value)
    return value


def received_by(value: str) -> str:
    """The host a Received header says took the message ("by host"), lower case; "" if none."""
    match = _RECEIVED_BY.search(_uncomment(value))
    return match.group(1).lower().rstrip(".") if match else ""


def trusted_results(inbound: Inbound, trusted_authserv_ids: frozenset[str]) -> list[str]:
    """The Authentication-Results our border MTA added: those with a trusted authserv-id above
    the first Received header that MTA wrote ("by" one of the trusted names). Everything below
    it was in the message when the border received it, and proves nothing (RFC 8601 section 5).
    When no Received of the border is found, nothing is trusted: the results could be anywhere."""
    results = list(inbound.headers.get("authentication-results", ()))
    received = list(inbound.headers.get("received", ()))
    found: list[str] = []
    seen = {"authentication-results": 0, "received": 0}
    for name in inbound.header_names:
        if name not in seen:
            continue
        index = seen[name]
        seen[name] += 1
        if name == "received":
            if index < len(received) and received_by(received[index]) in trusted_authserv_ids:
                return found
        elif index < len(results) and _authserv_id(results[index]) in trusted_authserv_ids:
            found.append(results[index])
    return []


def _authserv_id(value: str) -> str:
    head = _uncomment(value).partition(";")[0].split()
    return head[0].lower() if head else ""


def aligned(signing_domain: str, from_domain: str) -> bool:
    """Relaxed alignment without a public-suffix list: the same domain, or one a subdomain of
    the other; a bare top-level domain never aligns."""
    signing_domain, from_domain = signing_domain.lower().rstrip("."), from_domain.lower().rstrip(".")
    if not signing_domain or "." not in signing_domain or "." not in from_domain:
        return False
    return (
        signing_domain == from_domain
        or from_domain.endswith("." + signing_domain)
        or signing_domain.endswith("." + from_domain)
    )


def authenticate(inbound: Inbound, trusted_authserv_ids: frozenset[str]) -> Authentication:
    """Whether the From domain of inbound is authenticated by our border MTA's results."""
    results = trusted_results(inbound, trusted_authserv_ids)
    if not results:
        return Authentication(AuthStatus.UNKNOWN, False, False, "no Authentication-Results of our border MTA")
    from_headers = inbound.headers.get("from", ())
    if len(from_headers) != 1 or inbound.sender is None:
        return Authentication(
            AuthStatus.NOT_AUTHENTICATED, False, False, f"{len(from_headers)} From headers: no single author"
        )
    domain = inbound.sender.domain
    dmarc = dkim = False
    for value in results:
        for method, result, properties in _clauses(value):
            if result != "pass":
                continue
            if method == "dmarc" and properties.get("header.from", "").rstrip(".") == domain:
                dmarc = True
            elif method == "dkim":
                signer = properties.get("header.d") or properties.get("header.i", "").rpartition("@")[2]
                dkim = dkim or aligned(signer, domain)
    authserv_id = _authserv_id(results[0])
    if dmarc or dkim:
        how = " and ".join(w for w, ok in (("DMARC pass", dmarc), ("aligned DKIM pass", dkim)) if ok)
        reason = f"{how} for {domain} according to {authserv_id}"
        return Authentication(AuthStatus.AUTHENTICATED, dmarc, dkim, reason)
    return Authentication(
        AuthStatus.NOT_AUTHENTICATED,
        False,
        False,
        f"no DMARC or aligned DKIM pass for {domain} according to {authserv_id}",
    )


def _clauses(value: str) -> Iterable[tuple[str, str, dict[str, str]]]:
    """(method, result, properties) of each resinfo, lower case, comments and quotes removed."""
    for clause in _uncomment(value).split(";")[1:]:
        words = clause.strip().lower().replace('"', "").split()
        if not words or "=" not in words[0]:
            continue
        method, _, result = words[0].partition("=")
        properties = dict(w.split("=", 1) for w in words[1:] if "=" in w)
        yield method, result, properties


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

    def signed_addresses(self, inbound: Inbound, today: date) -> list[SignedAddress]:
        if self.signer is None:
            return []
        sender = inbound.sender.address if inbound.sender else ""
        candidates = [a.address for a in (*inbound.to, *inbound.cc)]
        for name in ("delivered-to", "x-original-to"):
            candidates.extend(v.strip().strip("<>").lower() for v in inbound.headers.get(name, ()))
        found = (
            self.signer.read(a, self.department_addresses, sender, today) for a in dict.fromkeys(candidates)
        )
        return [s for s in found if s is not None]

    def authentication(self, inbound: Inbound) -> Authentication:
        """Whether the message's From domain is authenticated, for any sender (customer or agent)."""
        return authenticate(inbound, self.trusted_authserv_ids)


def reply_keys(config: Config) -> tuple[ReplyKey, ...]:
    """The resolved reply secrets, the current one first; () when secrets were not resolved."""
    settings = config.file.agents
    current = config.secret("reply")
    if current is None:
        return ()
    keys = [ReplyKey(settings.reply_key_id, current.get_secret_value().encode())]
    for retired in settings.previous_reply_secrets:
        secret = config.secret(f"reply.{retired.id}")
        if secret is not None:
            keys.append(ReplyKey(retired.id, secret.get_secret_value().encode(), retired.until))
    return tuple(keys)


def directory_from(
    groups: dict[str, list[str]],
    keys: Sequence[ReplyKey],
    trusted_authserv_ids: Iterable[str],
    department_addresses: frozenset[str],
) -> AgentDirectory:
    """`keys`: the current reply key first, then the retired ones still accepted."""
    return AgentDirectory(
        groups={name: tuple(m.lower() for m in members) for name, members in groups.items()},
        signer=ReplySigner(keys) if keys else None,
        trusted_authserv_ids=frozenset(s.lower() for s in trusted_authserv_ids),
        department_addresses=department_addresses,
    )
