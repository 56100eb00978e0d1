"""IMAP connections for the fetch workers: TLS (implicit or STARTTLS), login, and noticing a drop.

aioimaplib 2.0.3 has no STARTTLS: `starttls` sends the command, upgrades the transport in place
with `loop.start_tls` and reads CAPABILITY again (RFC 3501 6.2.1: the pre-TLS list must be
discarded). A connection that dies while we wait (IDLE, a long FETCH) is noticed at once through
aioimaplib's connection-lost callback rather than at the next command's timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from collections.abc import Awaitable
from typing import TypeVar

import aioimaplib
from pydantic import SecretStr

from mailrouter.config import ImapSettings
from mailrouter.errors import ConnectionLost, ImapError

T = TypeVar("T")


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

    def __init__(self, client: aioimaplib.IMAP4, lost: asyncio.Future[None]) -> None:
        self.client = client
        self.lost = lost

    async def call(self, awaitable: Awaitable[T]) -> T:
        """Await an IMAP command, but give up the moment the connection drops."""
        task = asyncio.ensure_future(awaitable)
        await asyncio.wait({task, self.lost}, return_when=asyncio.FIRST_COMPLETED)
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


async def connect(settings: ImapSettings, password: SecretStr) -> Connection:
    """Connect (with TLS as configured) and log in."""
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
    connection = Connection(client, lost)
    await connection.call(client.wait_hello_from_server())
    _keep_alive(client)
    if settings.security == "starttls":
        assert context is not None
        await connection.call(starttls(client, context, settings.host))
    ok(
        await connection.call(client.login(settings.user, password.get_secret_value())),
        f"LOGIN as {settings.user}",
    )
    return connection


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
