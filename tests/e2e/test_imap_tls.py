"""IMAP over TLS against the real Dovecot: implicit TLS on the IMAPS port, STARTTLS on the plain
port (mailrouter.imap.starttls, since aioimaplib has none), verification on by default."""

from __future__ import annotations

import socket
import ssl
from typing import Literal

import pytest
from pydantic import SecretStr

from mailrouter.config import ImapSettings
from mailrouter.imap import connect

pytestmark = pytest.mark.e2e
Security = Literal["tls", "starttls", "none"]


@pytest.fixture
def account(mailstack):
    return mailstack.new_account("tls")


def settings(mailstack, address: str, security: Security, **extra) -> ImapSettings:
    port = mailstack.imaps_port if security == "tls" else mailstack.imap_port
    return ImapSettings(
        host="127.0.0.1",
        port=port,
        security=security,
        user=address,
        password_env="UNUSED",
        timeout=10,
        **extra,
    )


async def logged_in_over_tls(mailstack, address: str, password: str, security: Security, **extra) -> None:
    conn = await connect(settings(mailstack, address, security, **extra), SecretStr(password))
    try:
        transport = conn.client.protocol.transport
        assert transport.get_extra_info("ssl_object") is not None, "the session is not encrypted"
        assert (await conn.client.select("INBOX")).result == "OK"
        if security == "starttls":
            # CAPABILITY was read again after the upgrade: STARTTLS is no longer offered
            assert not conn.client.has_capability("STARTTLS")
    finally:
        await conn.logout()


@pytest.mark.parametrize("security", ["tls", "starttls"])
async def test_tls_with_the_stack_ca_logs_in(mailstack, account: tuple[str, str], security):
    await logged_in_over_tls(mailstack, *account, security, ca_file=str(mailstack.ca_file))


@pytest.mark.parametrize("security", ["tls", "starttls"])
async def test_verification_fails_without_the_ca(mailstack, account, security):
    with pytest.raises(ssl.SSLCertVerificationError):
        await connect(settings(mailstack, account[0], security), SecretStr(account[1]))


@pytest.mark.parametrize("security", ["tls", "starttls"])
async def test_tls_verify_false_is_the_explicit_opt_out(mailstack, account: tuple[str, str], security):
    await logged_in_over_tls(mailstack, *account, security, tls_verify=False)


async def test_wrong_password_is_refused_over_starttls(mailstack, account):
    from mailrouter.errors import ImapError

    with pytest.raises(ImapError, match="LOGIN"):
        await connect(
            settings(mailstack, account[0], "starttls", ca_file=str(mailstack.ca_file)),
            SecretStr("not-the-password"),
        )


@pytest.mark.parametrize("security", ["tls", "starttls", "none"])
async def test_a_silently_dead_server_is_noticed_by_tcp_keepalive(mailstack, account, security):
    conn = await connect(
        settings(mailstack, account[0], security, ca_file=str(mailstack.ca_file)), SecretStr(account[1])
    )
    try:
        sock = conn.client.protocol.transport.get_extra_info("socket")
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == 60
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT) == 3
    finally:
        await conn.logout()
