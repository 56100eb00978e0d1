"""compose: build the bytes of the mail we send. Nothing taken from incoming mail can add a header.

Headers are encoded with email.header.Header, not EmailMessage: CPython's folding of
EmailMessage headers drops the space between two adjacent encoded-words, which turned
"äö ÄÖ" into "äöÄÖ" in about one in ten Nordic subjects we tried.
"""

from __future__ import annotations

from dataclasses import dataclass
from email import message_from_bytes
from email.charset import QP, Charset
from email.header import Header
from email.message import Message
from email.mime.base import MIMEBase
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from email.policy import Compat32, compat32
from email.utils import formataddr, formatdate, make_msgid

from mailrouter.parse import single_line
from mailrouter.screen import LOOP_HEADER
from mailrouter.templates import Rendered
from mailrouter.thread import strip_reply_prefixes

_UTF8 = Charset("utf-8")
_UTF8.body_encoding = QP  # readable in any client's "view source", unlike base64
_LINE = 78  # RFC 5322's recommended line length, compat32's folding width


def _fits_one_line(name: str, value: str) -> bool:
    """True when folding would give back `name: value` unchanged (checked against compat32)."""
    return value.isascii() and "\r" not in value and "\n" not in value and len(name) + 2 + len(value) <= _LINE


class _Wire(Compat32):
    """compat32 with CRLF, minus the folding of headers that need none: folding every header
    through email.header cost more than all the rest of composing an acknowledgement."""

    def fold_binary(self, name: str, value: str) -> bytes:
        if _fits_one_line(name, value):
            return f"{name}: {value}{self.linesep}".encode("ascii")
        return super().fold_binary(name, value)


_WIRE = _Wire(linesep="\r\n")


def encode_header(name: str, value: str) -> str:
    """An unstructured header value (Subject, say) as RFC 2047 encoded-words where needed."""
    if _fits_one_line(name, value):
        return value
    return Header(value, "us-ascii" if value.isascii() else "utf-8", header_name=name).encode(linesep="\r\n")


@dataclass(frozen=True)
class Outgoing:
    mail_from: str
    rcpt_to: tuple[str, ...]
    message_id: str
    subject: str
    text: str
    data: bytes


def tagged_subject(case_number: str, subject: str) -> str:
    original = strip_reply_prefixes(single_line(subject)) or "(no subject)"
    return f"[{case_number}] Re: {original}"


def compose(
    *,
    case_number: str,
    from_address: str,
    from_name: str,
    to: tuple[str, ...],
    subject: str,
    body: Rendered,
    in_reply_to: str = "",
    references: tuple[str, ...] = (),
    auto_submitted: str | None = None,
    reply_to: str | None = None,
    attach_original: bytes | None = None,
) -> Outgoing:
    """A message about a case, from the department's address: never from an agent's own."""
    message: Message = MIMEText(body.text, "plain", _UTF8)
    if body.html is not None:
        message = MIMEMultipart("alternative", _subparts=[message, MIMEText(body.html, "html", _UTF8)])
    if attach_original is not None:
        original = MIMEBase("message", "rfc822")
        original.set_payload([message_from_bytes(attach_original, policy=compat32)])
        original["Content-Disposition"] = 'attachment; filename="original.eml"'
        message = MIMEMultipart("mixed", _subparts=[message, original])
    message_id = make_msgid(idstring=case_number, domain=from_address.rpartition("@")[2])
    message["From"] = formataddr((single_line(from_name), from_address), charset="utf-8")
    message["To"] = ", ".join(to)
    if reply_to:
        message["Reply-To"] = formataddr((single_line(from_name), reply_to), charset="utf-8")
    message["Subject"] = encode_header("Subject", single_line(subject))
    message["Date"] = formatdate(localtime=False, usegmt=True)
    message["Message-ID"] = message_id
    if in_reply_to:
        message["In-Reply-To"] = in_reply_to
        message["References"] = " ".join(dict.fromkeys([*references, in_reply_to]))
    if auto_submitted:
        # RFC 3834: mark it automatic; ask Exchange not to send out-of-office replies to it.
        message["Auto-Submitted"] = auto_submitted
        message["X-Auto-Response-Suppress"] = "All"
    message[LOOP_HEADER] = from_address
    message["X-Mailrouter-Case"] = case_number
    return Outgoing(
        mail_from=from_address,
        rcpt_to=to,
        message_id=message_id,
        subject=single_line(subject),
        text=body.text,
        data=message.as_bytes(policy=_WIRE),
    )
