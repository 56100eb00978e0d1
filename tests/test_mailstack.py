"""The loopback mail stack itself (scripts/mailstack): what the e2e tests and the demo rely on."""

from __future__ import annotations

import dataclasses
import imaplib
import shutil
import smtplib
import socket
import ssl
import tempfile
import time
import uuid
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path

import pytest

from tests.mailstack import DISCARD_DOMAIN, MailStack, Tls

pytestmark = pytest.mark.e2e


def mail(sender: str, to: str, subject: str, body: str = "Hei.\n") -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = to
    msg["Subject"] = subject
    msg.set_content(body)
    return msg


def test_utf8_subject_and_body_survive_smtp_to_imap(mailstack: MailStack) -> None:
    (sender, _), (rcpt, password) = mailstack.new_accounts("customer", "it")
    subject = "Blåbærsyltetøy på kontoret – skärmen är svart i Östersund"
    body = "Hej! Tangentbordet fungerer ikke. ÆØÅ æøå ÄÖ äö\n"

    mailstack.send(mail(sender, rcpt, subject, body), sender, rcpt)

    [got] = mailstack.wait_for_messages(rcpt, password, 1)
    assert got["Subject"] == subject
    assert got.get_content().replace("\r\n", "\n") == body  # IMAP hands out CRLF lines


def test_raw_utf8_headers_sent_with_smtputf8_are_delivered(mailstack: MailStack) -> None:
    # Dovecot 2.3's LMTP does not offer SMTPUTF8; without the stack's workaround Postfix bounces
    # this with "5.6.7 SMTPUTF8 is required, but was not offered".
    (sender, _), (rcpt, password) = mailstack.new_accounts("customer", "hr")
    raw = (
        f"From: Åsa Øberg <{sender}>\r\nTo: {rcpt}\r\nSubject: Spørsmål om lønn\r\n"
        "\r\nHej, lønnen för mars saknas.\r\n"
    ).encode()

    mailstack.send(raw, sender, rcpt)

    [got] = mailstack.wait_for_messages(rcpt, password, 1)
    assert got["Subject"] == "Spørsmål om lønn"
    # The bytes arrive intact (the stdlib's address parser garbles 8-bit display names itself).
    assert "From: Åsa Øberg <".encode() in mailstack.raw_messages(rcpt, password)[0]


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
@pytest.mark.parametrize("tls", ["starttls", "implicit"])
def test_tls_login_verifies_against_ca_file(mailstack: MailStack, host: str, tls: Tls) -> None:
    stack = dataclasses.replace(mailstack, host=host)
    with stack.imap("agent1@example.test", "agent-secret", tls=tls) as conn:
        assert isinstance(conn.sock, ssl.SSLSocket)
        assert conn.sock.version() in ("TLSv1.2", "TLSv1.3")
        assert conn.select("INBOX", readonly=True)[0] == "OK"


def test_plain_port_offers_starttls_and_allows_plaintext_login(mailstack: MailStack) -> None:
    with mailstack.imap("agent2@example.test", "agent-secret") as conn:
        assert "STARTTLS" in conn.capabilities
        assert conn.select("INBOX", readonly=True)[0] == "OK"


def test_tls_is_refused_without_the_ca_file(mailstack: MailStack) -> None:
    with pytest.raises(ssl.SSLCertVerificationError):
        imaplib.IMAP4_SSL(
            mailstack.host, mailstack.imaps_port, ssl_context=ssl.create_default_context(), timeout=10
        )


def test_adduser_account_logs_in_and_receives_at_once(mailstack: MailStack) -> None:
    address, password = f"it-{uuid.uuid4().hex[:8]}@example.test", "fresh-secret"
    # Looking the account up first is the hard case: Dovecot re-reads its passwd-file at most
    # once a second, so adduser has to wait until Dovecot serves the new line.
    with pytest.raises(imaplib.IMAP4.error), mailstack.imap(address, password):
        pass

    mailstack.add_user(address, password)
    mailstack.send(mail("customer@example.test", address, "Velkommen"), "customer@example.test", address)

    [got] = mailstack.wait_for_messages(address, password, 1)
    assert got["Subject"] == "Velkommen"


def test_unknown_local_recipient_bounces_to_the_local_sender(mailstack: MailStack) -> None:
    sender, password = mailstack.new_account("bounce")
    recipient = f"nobody-{uuid.uuid4().hex[:8]}@example.test"

    mailstack.send(mail(sender, recipient, "Finnes du?"), sender, recipient)

    [dsn] = mailstack.wait_for_messages(sender, password, 1)
    assert dsn.get_content_type() == "multipart/report"
    assert recipient.encode() in dsn.as_bytes()


def test_other_domains_are_refused_at_once(mailstack: MailStack) -> None:
    sender, outside = "hr@example.test", "x@elsewhere.invalid"
    with pytest.raises(smtplib.SMTPRecipientsRefused) as refused:
        mailstack.send(mail(sender, outside, "Ut?"), sender, outside)
    assert refused.value.recipients[outside][0] == 550


def test_the_discard_domain_is_accepted_and_passed_on(mailstack: MailStack) -> None:
    """The benchmark's customers live there: the relay takes their mail and drops it."""
    sender, customer = "it-support@example.test", f"kunde-{uuid.uuid4().hex[:8]}@{DISCARD_DOMAIN}"
    assert mailstack.send(mail(sender, customer, "Takk"), sender, customer) == {}
    log = mailstack.dir / "log" / "postfix.log"
    deadline = time.monotonic() + 20
    while f"to=<{customer}>" not in log.read_text(errors="replace") and time.monotonic() < deadline:
        time.sleep(0.1)
    [line] = [line for line in log.read_text(errors="replace").splitlines() if f"to=<{customer}>" in line]
    assert "status=sent (passed on to the outside world)" in line


def test_folders_can_be_created_and_messages_moved(mailstack: MailStack) -> None:
    address, password = mailstack.new_account("folders")
    mailstack.append(address, password, b"Subject: preloaded\r\n\r\nbody\r\n")
    mailstack.append(address, password, b"Subject: straight in\r\n\r\nbody\r\n", folder="Quarantine")

    with mailstack.imap(address, password) as conn:
        capabilities = conn.capability()[1][0].split()
        assert b"MOVE" in capabilities and b"UIDPLUS" in capabilities
        assert conn.create('"Processed"')[0] == "OK"
        conn.select("INBOX")
        [uid] = conn.uid("SEARCH", "ALL")[1][0].split()
        assert conn.uid("MOVE", uid.decode(), '"Processed"')[0] == "OK"

    assert mailstack.messages(address, password) == []
    assert [m["Subject"] for m in mailstack.messages(address, password, "Processed")] == ["preloaded"]
    assert [m["Subject"] for m in mailstack.messages(address, password, "Quarantine")] == ["straight in"]


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


@pytest.fixture
def second_stack() -> Iterator[MailStack]:
    # Not pytest's tmp_path: its parents are mode 0700, and Dovecot and Postfix drop root.
    directory = Path(tempfile.mkdtemp(prefix="mailstack-"))
    directory.chmod(0o755)
    smtp, imap, imaps, lmtp, submission, smtps = _free_ports(6)
    stack = MailStack(directory, smtp, imap, imaps, lmtp, submission_port=submission, smtps_port=smtps)
    try:
        yield stack
    finally:
        stack.stop()
        shutil.rmtree(directory, ignore_errors=True)


def test_second_stack_runs_beside_the_first_and_survives_restarts(
    mailstack: MailStack, second_stack: MailStack
) -> None:
    second_stack.start()
    (sender, _), (rcpt, password) = second_stack.new_accounts("customer", "agent")
    second_stack.send(mail(sender, rcpt, "one"), sender, rcpt)
    second_stack.wait_for_messages(rcpt, password, 1)
    with pytest.raises(imaplib.IMAP4.error), mailstack.imap(rcpt, password):
        pass  # the account exists only in the second stack

    # Mail that arrives while Dovecot is down waits in Postfix's queue, and is delivered at once
    # when Dovecot is back.
    second_stack.stop_imap()
    second_stack.send(mail(sender, rcpt, "two"), sender, rcpt)
    second_stack.start_imap()
    got = second_stack.wait_for_messages(rcpt, password, 2, timeout=10)
    assert [m["Subject"] for m in got] == ["one", "two"]

    second_stack.stop_smtp()
    with pytest.raises(OSError):
        second_stack.send(mail(sender, rcpt, "three"), sender, rcpt)
    second_stack.start_smtp()
    second_stack.send(mail(sender, rcpt, "three"), sender, rcpt)
    second_stack.wait_for_messages(rcpt, password, 3)

    second_stack.start()  # already running: a no-op
    with smtplib.SMTP(mailstack.host, mailstack.smtp_port, timeout=10) as smtp:
        assert smtp.noop()[0] == 250  # the first stack never noticed
