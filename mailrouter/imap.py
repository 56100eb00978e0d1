"""IMAP for the fetch workers: connecting (TLS implicit or STARTTLS), login, noticing a drop, and
the few commands a worker needs as a small typed API (select, search, sizes, fetch, mark, wait).

The fetch worker decides what to ask and what a message becomes; this module only knows how to
say it to a server and how to read the answer, including the fallbacks servers make necessary
(MOVE, else COPY + EXPUNGE, else flags).

aioimaplib 2.0.3 has no STARTTLS: `starttls` sends the command, upgrades the transport in place
with `loop.start_tls` and reads CAPABILITY again (RFC 3501 6.2.1: the pre-TLS list must be
discarded). A connection that dies while we wait (IDLE, a long FETCH) is noticed at once through
aioimaplib's connection-lost callback rather than at the next command's timeout.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import re
import socket
import ssl
from collections.abc import Awaitable, Iterable
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from typing import TypeVar

import aioimaplib
from pydantic import SecretStr

from mailrouter.config import ImapSettings
from mailrouter.errors import ConnectionLost, ImapError
from mailrouter.oauth import TokenSource, sasl_bearer

T = TypeVar("T")

log = logging.getLogger(__name__)

PROCESSED_KEYWORD = "$Registered"
QUARANTINE_KEYWORD = "$Quarantined"

_UIDVALIDITY = re.compile(rb"\[UIDVALIDITY (\d+)\]")
_PERMANENT_FLAGS = re.compile(rb"\[PERMANENTFLAGS \(([^)]*)\)\]")
_FETCH_UID = re.compile(rb"\bUID (\d+)")
_FETCH_SIZE = re.compile(rb"\bRFC822\.SIZE (\d+)")
_LITERAL = re.compile(rb"\{(\d+)\}$")
_UIDNEXT = re.compile(rb"\[UIDNEXT (\d+)\]")
_EXISTS = re.compile(rb"^\*? ?(\d+) EXISTS", re.MULTILINE)
_INTERNALDATE = re.compile(
    rb'\bINTERNALDATE "\s?(\d{1,2})-([A-Za-z]{3})-(\d{4}) (\d\d):(\d\d):(\d\d) ([+-])(\d\d)(\d\d)"'
)
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


@dataclass(frozen=True)
class Selected:
    """What SELECT told us about the folder."""

    uidvalidity: int
    keywords_allowed: bool
    read_only: bool = False
    exists: int = 0  # messages in the folder
    uidnext: int | None = None  # the UID the next message will get, where the server says


def quote(mailbox: str) -> str:
    return '"' + mailbox.replace("\\", "\\\\").replace('"', '\\"') + '"'


def parse_select(lines: Iterable[bytes | bytearray]) -> Selected | None:
    """Selected from a SELECT answer; None without UIDVALIDITY (then UIDs mean nothing)."""
    text = b"\n".join(bytes(line) for line in lines)
    uidvalidity = _UIDVALIDITY.search(text)
    if uidvalidity is None:
        return None
    flags = _PERMANENT_FLAGS.search(text)
    read_only = b"[READ-ONLY]" in text.upper()
    exists, uidnext = _EXISTS.search(text), _UIDNEXT.search(text)
    return Selected(
        int(uidvalidity.group(1)),
        bool(flags and b"\\*" in flags.group(1)),
        read_only,
        int(exists.group(1)) if exists else 0,
        int(uidnext.group(1)) if uidnext else None,
    )


def search_date(day: date) -> str:
    """A date as SEARCH SINCE/BEFORE want it (RFC 3501 date: 1-Nov-2026), whatever the locale."""
    return f"{day.day}-{_MONTHS[day.month - 1]}-{day.year}"


def parse_search(lines: list[bytes]) -> list[int]:
    """UIDs from a UID SEARCH answer. aioimaplib drops the SEARCH keyword of the untagged data
    (keep accepting it) and puts the tagged status text last (never read it: it has numbers)."""
    uids: list[int] = []
    for line in lines[:-1]:
        tokens = bytes(line).split()
        if tokens[:1] == [b"SEARCH"]:
            tokens = tokens[1:]
        uids.extend(int(token) for token in tokens if token.isdigit())
    return uids


def parse_sizes(lines: list[bytes | bytearray]) -> dict[int, int]:
    """{UID: size} from a UID FETCH (UID RFC822.SIZE) answer."""
    sizes = {}
    for line in lines:
        uid, size = _FETCH_UID.search(line), _FETCH_SIZE.search(line)
        if uid is not None and size is not None and b"FETCH" in line:
            sizes[int(uid.group(1))] = int(size.group(1))
    return sizes


def parse_answered(lines: list[bytes | bytearray]) -> list[int]:
    """The UIDs a UID FETCH answer has a FETCH line for (whatever items it gave)."""
    return [int(uid.group(1)) for line in lines if b"FETCH" in line and (uid := _FETCH_UID.search(line))]


def parse_internaldates(lines: list[bytes | bytearray]) -> dict[int, datetime]:
    """{UID: INTERNALDATE} (when the message arrived in the folder) from a UID FETCH answer."""
    dates = {}
    for line in lines:
        uid, found = _FETCH_UID.search(line), _INTERNALDATE.search(line)
        if uid is None or found is None or b"FETCH" not in line or found[2].decode() not in _MONTHS:
            continue
        day, month, year, hour, minute, second, sign, zone_h, zone_m = found.groups()
        offset = timedelta(hours=int(zone_h), minutes=int(zone_m)) * (-1 if sign == b"-" else 1)
        with contextlib.suppress(ValueError):  # a date no calendar has: as if the server sent none
            dates[int(uid.group(1))] = datetime(
                int(year),
                _MONTHS.index(month.decode()) + 1,
                int(day),
                int(hour),
                int(minute),
                int(second),
                tzinfo=timezone(offset),
            )
    return dates


def parse_fetch(lines: list[bytes | bytearray]) -> list[tuple[int, bytes]]:
    """(UID, message bytes) pairs from a UID FETCH (UID BODY.PEEK[]) answer, in server order."""
    found: list[tuple[int, bytes]] = []
    for index, line in enumerate(lines):
        if isinstance(line, bytearray) or not _LITERAL.search(line) or b"FETCH" not in line:
            continue
        if index + 1 >= len(lines):
            break
        literal = bytes(lines[index + 1])
        uid = _FETCH_UID.search(line)
        if uid is None and index + 2 < len(lines):
            uid = _FETCH_UID.search(bytes(lines[index + 2]))  # "UID n" after the literal
        if uid is not None:
            found.append((int(uid.group(1)), literal))
    return found


def uid_set(uids: Iterable[int]) -> str:
    return ",".join(map(str, uids))


def tls_context(ca_file: str | None, verify: bool) -> ssl.SSLContext:
    """Verifying (system CAs, or ca_file) unless verify is False, which is for test servers only."""
    context = ssl.create_default_context(cafile=ca_file)
    if not verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def ok(response: aioimaplib.Response, what: str) -> aioimaplib.Response:
    if response.result != "OK":
        text = b" ".join(bytes(line) for line in response.lines[-1:]).decode(errors="replace")
        raise ImapError(f"{what}: {response.result} {text}")
    return response


class Connection:
    """A logged-in client and a future that is done once the connection has gone."""

    def __init__(self, client: aioimaplib.IMAP4, lost: asyncio.Future[None], label: str = "") -> None:
        self.client = client
        self.lost = lost
        self.label = label  # who we are logged in as, for the log

    async def call(self, awaitable: Awaitable[T]) -> T:
        """Await an IMAP command, but give up the moment the connection drops."""
        task = asyncio.ensure_future(awaitable)
        await asyncio.wait((task, self.lost), return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            return task.result()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
        raise ConnectionLost("the IMAP server closed the connection")

    async def logout(self) -> None:
        if self.lost.done():
            return
        with contextlib.suppress(OSError, TimeoutError, aioimaplib.AioImapException, ConnectionLost):
            await asyncio.wait_for(self.call(self.client.logout()), timeout=5)

    async def create_folders(self, *folders: str) -> None:
        for folder in folders:
            await self.call(self.client.create(quote(folder)))  # NO when it exists already: fine

    async def select(self, folder: str) -> Selected:
        response = await self.call(self.client.select(quote(folder)))
        if response.result != "OK":
            text = b" ".join(bytes(line) for line in response.lines[-1:]).decode(errors="replace")
            raise ImapError(f"cannot select folder {folder!r} (missing, renamed or not permitted?): {text}")
        selected = parse_select(response.lines)
        if selected is None:
            raise ImapError(f"SELECT {folder}: the server sent no UIDVALIDITY")
        return selected

    async def search(self, criteria: str) -> list[int]:
        """The UIDs matching a UID SEARCH, ascending."""
        response = ok(await self.call(self.client.uid_search(criteria, charset=None)), "UID SEARCH")
        return sorted(parse_search(response.lines))

    async def search_new(self, after_uid: int, criteria: str = "") -> list[int]:
        """The UIDs above after_uid (that also match criteria), ascending."""
        # Dovecot looks for newly delivered mail after a UID SEARCH, not before it: without the
        # NOOP a poll finds only what arrived before the previous poll, a whole interval late.
        ok(await self.call(self.client.noop()), "NOOP")
        found = await self.search(f"UID {after_uid + 1}:* {criteria}".rstrip())
        return [uid for uid in found if uid > after_uid]

    async def describe(self, uids: list[int]) -> tuple[dict[int, int | None], dict[int, datetime]]:
        """({UID: RFC822.SIZE, None where the server gave no size}, {UID: INTERNALDATE}); a UID
        the server did not answer for at all is missing from both."""
        response = await self.call(self.client.uid("fetch", uid_set(uids), "(UID RFC822.SIZE INTERNALDATE)"))
        lines = ok(response, "UID FETCH").lines
        sizes: dict[int, int | None] = dict.fromkeys(parse_answered(lines))
        sizes.update(parse_sizes(lines))
        return sizes, parse_internaldates(lines)

    async def fetch(self, uids: list[int], *, header_only: bool = False) -> dict[int, bytes]:
        """{UID: bytes} without setting \\Seen; only the header with header_only. The answer is
        dropped before returning: aioimaplib's copy would hold every big message twice."""
        if not uids:
            return {}
        item = "BODY.PEEK[HEADER]" if header_only else "BODY.PEEK[]"
        response = await self.call(self.client.uid("fetch", uid_set(uids), f"(UID {item})"))
        return dict(parse_fetch(ok(response, "UID FETCH").lines))

    async def mark(self, selected: Selected, uids: list[int], *, keyword: str, move_to: str | None) -> None:
        """Move the messages to move_to; where that is not asked for or not possible, flag them
        \\Seen and keyword (the keyword only where the folder allows keywords)."""
        if move_to is not None and await self._move(uid_set(uids), move_to):
            return
        flags = f"(\\Seen {keyword})" if selected.keywords_allowed else "(\\Seen)"
        ok(await self.call(self.client.uid("store", uid_set(uids), "+FLAGS.SILENT", flags)), "UID STORE")

    async def _move(self, uids: str, folder: str) -> bool:
        """Move messages (a UID set); False where the server cannot, so the caller flags them instead."""
        client = self.client
        if client.has_capability("MOVE"):
            response = await self.call(client.uid("move", uids, quote(folder)))
            if response.result == "OK":
                return True
            log.warning("user=%s uid=%s cannot move to %s: %s", self.label, uids, folder, response.lines[-1:])
            return False
        if not client.has_capability("UIDPLUS"):
            return False
        if (await self.call(client.uid("copy", uids, quote(folder)))).result != "OK":
            return False
        ok(await self.call(client.uid("store", uids, "+FLAGS.SILENT", "(\\Deleted)")), "UID STORE")
        ok(await self.call(client.uid("expunge", uids)), "UID EXPUNGE")
        return True

    async def poll_wait(self, stop: asyncio.Event, interval: float) -> None:
        """Wait interval seconds, less when stopping; a connection that dies meanwhile raises."""
        stopping = asyncio.ensure_future(stop.wait())
        try:
            await asyncio.wait((stopping, self.lost), timeout=interval)
        finally:
            stopping.cancel()
        if self.lost.done():
            raise ConnectionLost("the IMAP server closed the connection while we waited to poll")

    async def idle_wait(self, stop: asyncio.Event, timeout: float) -> None:
        """Wait for the server to announce new mail, at most timeout seconds.

        aioimaplib ends the wait after timeout (< the 30 minutes RFC 2177 lets servers drop an
        idle client); the caller then looks for new mail and issues IDLE again. A connection
        that dies meanwhile (server restart, network) ends the wait at once.
        """
        client = self.client
        idle = await self.call(client.idle_start(timeout=timeout))
        push = asyncio.ensure_future(client.wait_server_push(timeout=timeout + 10))
        stopping = asyncio.ensure_future(stop.wait())
        try:
            await asyncio.wait({push, stopping, self.lost}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopping.cancel()
            push.cancel()
            if not self.lost.done():
                if client.has_pending_idle():
                    client.idle_done()
                await asyncio.wait_for(self.call(idle), timeout=10)
        if self.lost.done():
            raise ConnectionLost("the IMAP server closed the connection during IDLE")


async def starttls(client: aioimaplib.IMAP4, context: ssl.SSLContext, server_hostname: str) -> None:
    """Upgrade a connected, not yet logged-in client to TLS (RFC 3501 6.2.1)."""
    if not client.has_capability("STARTTLS"):
        raise ImapError(f"{server_hostname} does not offer STARTTLS; refusing to log in without TLS")
    protocol = client.protocol
    command = aioimaplib.Command("STARTTLS", protocol.new_tag(), loop=protocol.loop)
    ok(await asyncio.wait_for(protocol.execute(command), client.timeout), "STARTTLS")
    loop = asyncio.get_running_loop()
    protocol.transport = await loop.start_tls(
        protocol.transport,
        protocol,
        context,
        server_hostname=server_hostname,
        ssl_handshake_timeout=client.timeout,
    )
    await asyncio.wait_for(protocol.capability(), client.timeout)


async def connect(settings: ImapSettings, password: SecretStr | TokenSource) -> Connection:
    """Connect (with TLS as configured) and log in: LOGIN with a password, or SASL XOAUTH2 with
    the credential's current token (renewed once if the server refuses it)."""
    loop = asyncio.get_running_loop()
    lost: asyncio.Future[None] = loop.create_future()

    def on_lost(_exc: Exception | None) -> None:
        if not lost.done():
            lost.set_result(None)

    context = None
    if settings.security != "none":
        context = tls_context(settings.ca_file, settings.tls_verify)
    client = aioimaplib.IMAP4(
        host=settings.host,
        port=settings.port,
        timeout=settings.timeout,
        conn_lost_cb=on_lost,
        ssl_context=context if settings.security == "tls" else None,
    )
    connection = Connection(client, lost, settings.user)
    await connection.call(client.wait_hello_from_server())
    _keep_alive(client)
    if settings.security == "starttls":
        assert context is not None
        await connection.call(starttls(client, context, settings.host))
    if isinstance(password, TokenSource):
        await _xoauth2(connection, settings.user, password)
        return connection
    ok(
        await connection.call(client.login(settings.user, password.get_secret_value())),
        f"LOGIN as {settings.user}",
    )
    return connection


class _SaslCommand(aioimaplib.Command):  # type: ignore[misc]  # aioimaplib ships no types
    """AUTHENTICATE with the initial response (RFC 4959). A refused XOAUTH2 or OAUTHBEARER token
    is answered with a challenge carrying the error (RFC 7628 3.2.2) that the client must answer
    with an empty line before the NO comes; aioimaplib's own xoauth2 never does, and waits."""

    def __init__(self, protocol: aioimaplib.IMAP4ClientProtocol, *args: str) -> None:
        super().__init__("AUTHENTICATE", protocol.new_tag(), *args, loop=protocol.loop)
        self._protocol = protocol

    def append_to_resp(self, line: bytes, result: str = "Pending") -> None:
        if line.startswith(b"+") and self._protocol.transport is not None:
            self._protocol.transport.write(b"\r\n")
        super().append_to_resp(line, result)


async def _authenticate(client: aioimaplib.IMAP4, mechanism: str, sasl: bytes) -> aioimaplib.Response:
    protocol = client.protocol
    command = _SaslCommand(protocol, mechanism, base64.b64encode(sasl).decode("ascii"))
    response = await asyncio.wait_for(protocol.execute(command), client.timeout)
    if response.result == "OK":
        async with protocol.state_condition:
            protocol.state = aioimaplib.AUTH
            protocol.state_condition.notify_all()
    return response


async def _xoauth2(connection: Connection, user: str, tokens: TokenSource) -> None:
    """OAUTHBEARER (RFC 7628) where offered, else XOAUTH2. A refused token that should still be
    good (revoked early, clocks apart) is renewed once; a second refusal is a login failure."""
    client = connection.client
    mechanism = "OAUTHBEARER" if client.has_capability("AUTH=OAUTHBEARER") else "XOAUTH2"
    token = await tokens.token()
    sasl = sasl_bearer(mechanism, user, token)
    response = await connection.call(_authenticate(client, mechanism, sasl))
    if response.result != "OK":
        log.warning(
            "mailbox user %s: the server refused the token of %s; renewing it once", user, tokens.label
        )
        sasl = sasl_bearer(mechanism, user, await tokens.renewed(token))
        response = await connection.call(_authenticate(client, mechanism, sasl))
    ok(response, f"AUTHENTICATE {mechanism} as {user} (credential {tokens.label})")


# A server that vanishes without a word (a NAT or firewall forgetting the session, a host that
# lost power) would leave an IDLE waiting for idle_timeout, up to 29 minutes of mail unseen.
# TCP keepalive notices within about two minutes (60 s idle, then 3 probes 20 s apart).
_KEEPALIVE = (("TCP_KEEPIDLE", 60), ("TCP_KEEPINTVL", 20), ("TCP_KEEPCNT", 3))


def _keep_alive(client: aioimaplib.IMAP4) -> None:
    sock = client.protocol.transport.get_extra_info("socket") if client.protocol.transport else None
    if sock is None:
        return
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for name, value in _KEEPALIVE:
        if hasattr(socket, name):  # Linux names; elsewhere the system's defaults apply
            sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, name), value)
