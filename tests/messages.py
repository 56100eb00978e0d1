"""Messages built as raw bytes, exactly as a well-behaved client would send them.

Headers are encoded with email.header.Header: EmailMessage's folding can drop the space between
two encoded-words (a CPython bug), which would make tests fail for the client's fault.
"""

from __future__ import annotations

from email.charset import QP, Charset
from email.header import Header
from email.message import MIMEPart
from email.mime.text import MIMEText
from email.policy import compat32
from email.utils import make_msgid
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sqlmodel import Session

    from mailrouter.models import OutboxMessage

_UTF8 = Charset("utf-8")
_UTF8.body_encoding = QP


def make_mail(
    *,
    subject: str = "Printer on floor 3 is broken",
    sender: str = "Kari Nordmann <kari@kunde.example>",
    to: str = "it-support@example.test",
    body: str = "Hello, the printer does not work. Thanks",
    headers: dict[str, str] | None = None,
    message_id: str | None = "<m1@kunde.example>",
) -> bytes:
    # MIMEText takes a Charset as well as a name (set_payload's contract); typeshed says only str.
    message = MIMEText(body, "plain", _UTF8)  # type: ignore[arg-type]
    name, _, address = sender.rpartition("<")
    message["From"] = (
        f"{Header(name.strip(), 'utf-8').encode()} <{address}"
        if name.strip() and not name.isascii()
        else sender
    )
    message["To"] = to
    message["Subject"] = Header(subject, "us-ascii" if subject.isascii() else "utf-8").encode()
    if message_id:
        message["Message-ID"] = message_id
    for key, value in (headers or {}).items():
        message[key] = value
    return message.as_bytes(policy=compat32.clone(linesep="\r\n"))


def new_message_id() -> str:
    return make_msgid(domain="kunde.example")


def make_dsn(
    returned: bytes,
    *,
    to: str = "it-support@example.test",
    recipient: str = "nobody@kunde.example",
    headers_only: bool = False,
) -> bytes:
    """A delivery status notification shaped like Postfix's (multipart/report), returning
    `returned` whole (message/rfc822) or only its headers (text/rfc822-headers)."""
    if headers_only:
        returned_part = b"Content-Type: text/rfc822-headers\r\n\r\n" + returned.split(b"\r\n\r\n", 1)[0]
    else:
        returned_part = b"Content-Type: message/rfc822\r\n\r\n" + returned
    return (
        b"Return-Path: <>\r\n"
        b"From: Mail Delivery System <MAILER-DAEMON@mx.kunde.example>\r\n"
        b"Subject: Undelivered Mail Returned to Sender\r\n"
        + f"To: {to}\r\n".encode()
        + b"Auto-Submitted: auto-replied\r\nMIME-Version: 1.0\r\n"
        b"Message-Id: <" + make_msgid(domain="mx.kunde.example")[1:-1].encode() + b">\r\n"
        b'Content-Type: multipart/report; report-type=delivery-status; boundary="B"\r\n\r\n'
        b"--B\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
        b"I'm sorry to have to inform you that your message could not be delivered.\r\n\r\n"
        + f"<{recipient}>: host mx said: 550 5.1.1 <{recipient}> User doesn't exist\r\n".encode()
        + b"\r\n--B\r\nContent-Type: message/delivery-status\r\n\r\n"
        + f"Final-Recipient: rfc822; {recipient}\r\nAction: failed\r\nStatus: 5.1.1\r\n".encode()
        + b"\r\n--B\r\n"
        + returned_part
        + b"\r\n--B--\r\n"
    )


def plain_text(message: MIMEPart) -> str:
    """A message's text/plain body; a message without one fails the test here, saying so."""
    body = message.get_body(("plain",))
    assert body is not None, "the message has no text/plain body"
    text: str = body.get_content()
    return text


def whole_letter(session: Session, row: OutboxMessage) -> bytes:
    """An outbox row's letter as the sender sends it: its attached original back from the raw store."""
    from mailrouter.models import RawMessage
    from mailrouter.store import with_original

    if row.original_sha256 is None:
        return row.data
    original = session.get(RawMessage, row.original_sha256)
    assert original is not None and row.original_at is not None
    return with_original(row.data, row.original_at, original.data)
