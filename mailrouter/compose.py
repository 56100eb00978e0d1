"""compose: build the bytes of the mail we send. Nothing taken from incoming mail can add a header.

Headers are encoded with email.header.Header, not EmailMessage: CPython's folding of
EmailMessage headers drops the space between two adjacent encoded-words, which turned
"äö ÄÖ" into "äöÄÖ" in about one in ten Nordic subjects we tried.

The MIME structure is written here, byte for byte what email.mime's objects and compat32's
generator wrote (the tests compare the two), with email's own quoted-printable and header
folding: building and flattening those objects took more than half of an acknowledgement's
composing, two thirds with an HTML part.
"""

from __future__ import annotations

import base64
import random
import string
import sys
from dataclasses import dataclass, field
from email.charset import QP, Charset
from email.header import Header
from email.policy import Compat32
from email.utils import formataddr, formatdate, make_msgid
from urllib.parse import quote

from mailrouter.parse import single_line
from mailrouter.screen import LOOP_HEADER
from mailrouter.templates import Rendered
from mailrouter.thread import message_id_idstring, strip_reply_prefixes

_UTF8 = Charset("utf-8")
_UTF8.body_encoding = QP  # readable in any client's "view source", unlike base64
_LINE = 78  # RFC 5322's recommended line length, compat32's folding width
_ORIGINAL_HEADERS = (
    b'Content-Type: message/rfc822\r\nContent-Disposition: attachment; filename="original.eml"\r\n'
)


_FOLD = "\r\n "
_ENCODED_WORD = 75  # RFC 2047's longest encoded-word
_Q_PREFIX, _Q_SUFFIX = "=?utf-8?q?", "?="
_Q_LITERAL = frozenset(string.ascii_letters + string.digits + "!*+-/")


def _fits_one_line(name: str, value: str) -> bool:
    return value.isascii() and "\r" not in value and "\n" not in value and len(name) + 2 + len(value) <= _LINE


def _needs_no_folding(name: str, value: str) -> bool:
    """True when compat32's folding would give back `name: value` unchanged (checked against it):
    one line that fits, or lines we folded already (encode_header's) that each fit."""
    if _fits_one_line(name, value):
        return True
    first, *rest = value.split(_FOLD)
    return (
        bool(rest)
        and _fits_one_line(name, first)
        and all(line and _fits_one_line("", line) and not line[0].isspace() for line in rest)
    )


class _Wire(Compat32):
    """compat32 with CRLF, minus the folding of headers that need none: folding every header
    through email.header cost more than all the rest of composing an acknowledgement."""

    def fold_binary(self, name: str, value: str) -> bytes:
        if _needs_no_folding(name, value):
            return f"{name}: {value}{self.linesep}".encode("ascii")
        return super().fold_binary(name, value)


_WIRE = _Wire(linesep="\r\n")


def encode_header(name: str, value: str) -> str:
    """An unstructured header value (Subject, say) as RFC 2047 encoded-words where needed."""
    if _fits_one_line(name, value):
        return value
    if value.isascii():
        return Header(value, "us-ascii", header_name=name).encode(linesep="\r\n")
    return _q_encoded_words(value, first_line=_LINE - 2 - len(name) - 2)


def _q_encoded_words(value: str, first_line: int) -> str:
    """Folded Q encoded-words, split between characters. email.header does the same in time
    quadratic in the length (it measures the encoding again for every character it adds),
    which made it a tenth of the time to register a message with a Nordic subject."""
    words: list[str] = []
    room = min(first_line, _ENCODED_WORD) - len(_Q_PREFIX) - len(_Q_SUFFIX)
    word: list[str] = []
    used = 0
    for char in value:
        if char in _Q_LITERAL:
            encoded = char
        elif char == " ":
            encoded = "_"
        else:
            encoded = "".join(f"={byte:02X}" for byte in char.encode(errors="replace"))
        if word and used + len(encoded) > room:
            words.append(_Q_PREFIX + "".join(word) + _Q_SUFFIX)
            word, used = [], 0
            room = _ENCODED_WORD - len(_Q_PREFIX) - len(_Q_SUFFIX)
        word.append(encoded)
        used += len(encoded)
    words.append(_Q_PREFIX + "".join(word) + _Q_SUFFIX)
    return _FOLD.join(words)


@dataclass(frozen=True)
class FileAttachment:
    """A file to send on, as the agent attached it."""

    filename: str
    content_type: str
    data: bytes = field(repr=False)


@dataclass(frozen=True)
class Outgoing:
    mail_from: str
    rcpt_to: tuple[str, ...]
    message_id: str
    subject: str
    text: str
    data: bytes
    # Where the attached original (`original_part`) sits in `data`: the outbox keeps the letter
    # without it and refers to the raw store instead.
    original_at: int | None = None


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
    files: tuple[FileAttachment, ...] = (),
    cc: tuple[str, ...] = (),
    instance_tag: str = "",
) -> Outgoing:
    """A message about a case, from the department's address: never from an agent's own."""
    headers, content = _text_part(body.text, "plain")
    if body.html is not None:
        html = _text_part(body.html, "html")
        headers, content = _multipart("alternative", _boundary(), [_entity(headers, content), _entity(*html)])
    original = b""
    if attach_original is not None:
        original = original_part(attach_original)
        headers, content = _multipart(
            "mixed", _boundary(avoiding=original), [_entity(headers, content), original]
        )
    if files:
        parts = [_file_part(f) for f in files]
        headers, content = _multipart("mixed", _boundary(), [_entity(headers, content), *parts])
    message_id = make_msgid(
        idstring=message_id_idstring(case_number, instance_tag), domain=from_address.rpartition("@")[2]
    )
    headers.append(("From", formataddr((single_line(from_name), from_address), charset="utf-8")))
    headers.append(("To", ", ".join(to)))
    if cc:
        headers.append(("Cc", ", ".join(cc)))
    if reply_to:
        headers.append(("Reply-To", formataddr((single_line(from_name), reply_to), charset="utf-8")))
    headers.append(("Subject", encode_header("Subject", single_line(subject))))
    headers.append(("Date", formatdate(localtime=False, usegmt=True)))
    headers.append(("Message-ID", message_id))
    if in_reply_to:
        headers.append(("In-Reply-To", in_reply_to))
        headers.append(("References", " ".join(dict.fromkeys([*references, in_reply_to]))))
    if auto_submitted:
        # RFC 3834: mark it automatic; ask Exchange not to send out-of-office replies to it.
        headers.append(("Auto-Submitted", auto_submitted))
        headers.append(("X-Auto-Response-Suppress", "All"))
    headers.append((LOOP_HEADER, from_address))
    headers.append(("X-Mailrouter-Case", case_number))
    data = _entity(headers, content)
    return Outgoing(
        mail_from=from_address,
        rcpt_to=(*to, *cc),
        message_id=message_id,
        subject=single_line(subject),
        text=body.text,
        data=data,
        original_at=data.find(original) if original else None,
    )


@dataclass(frozen=True)
class InlineImage:
    """A picture the HTML part shows as <img src="cid:{content_id}">."""

    content_id: str
    filename: str
    data: bytes = field(repr=False)


def compose_report(
    *,
    from_address: str,
    from_name: str,
    to: tuple[str, ...],
    subject: str,
    body: Rendered,
    images: tuple[InlineImage, ...],
    files: tuple[FileAttachment, ...],
) -> Outgoing:
    """A scheduled report, the shape Outlook and Gmail both show with its pictures in place:
    mixed[alternative[text, related[html, images]], files]."""
    assert body.html is not None, "a report has an HTML part"
    html = _multipart(
        "related", _boundary(), [_entity(*_text_part(body.html, "html")), *map(_image_part, images)]
    )
    headers, content = _multipart(
        "alternative", _boundary(), [_entity(*_text_part(body.text, "plain")), _entity(*html)]
    )
    headers, content = _multipart("mixed", _boundary(), [_entity(headers, content), *map(_file_part, files)])
    message_id = make_msgid(idstring="report", domain=from_address.rpartition("@")[2])
    headers += [
        ("From", formataddr((single_line(from_name), from_address), charset="utf-8")),
        ("To", ", ".join(to)),
        ("Subject", encode_header("Subject", single_line(subject))),
        ("Date", formatdate(localtime=False, usegmt=True)),
        ("Message-ID", message_id),
        ("Auto-Submitted", "auto-generated"),
        ("X-Auto-Response-Suppress", "All"),
        (LOOP_HEADER, from_address),
    ]
    return Outgoing(from_address, to, message_id, single_line(subject), body.text, _entity(headers, content))


def _image_part(image: InlineImage) -> bytes:
    encoded = base64.encodebytes(image.data).replace(b"\n", b"\r\n")
    headers = [
        ("Content-Type", "image/png"),
        ("MIME-Version", "1.0"),
        ("Content-Transfer-Encoding", "base64"),
        ("Content-ID", f"<{image.content_id}>"),
        ("Content-Disposition", "inline; " + encode_parameter("filename", image.filename)),
    ]
    return _entity(headers, encoded)


Headers = list[tuple[str, str]]


def _text_part(text: str, subtype: str) -> tuple[Headers, bytes]:
    """A text part as email.mime.text.MIMEText writes it in UTF-8 with quoted-printable."""
    headers = [
        ("Content-Type", f'text/{subtype}; charset="utf-8"'),
        ("MIME-Version", "1.0"),
        ("Content-Transfer-Encoding", "quoted-printable"),
    ]
    return headers, _UTF8.body_encode(text).replace("\n", "\r\n").encode("ascii")


def _multipart(subtype: str, boundary: str, parts: list[bytes]) -> tuple[Headers, bytes]:
    headers = [("Content-Type", f'multipart/{subtype}; boundary="{boundary}"'), ("MIME-Version", "1.0")]
    delimiter = f"--{boundary}\r\n".encode()
    return headers, b"".join(delimiter + part + b"\r\n" for part in parts) + f"--{boundary}--\r\n".encode()


def _entity(headers: Headers, content: bytes) -> bytes:
    """Headers, folded where they need it, a blank line, and the content."""
    return b"".join(_WIRE.fold_binary(name, value) for name, value in headers) + b"\r\n" + content


def _boundary(avoiding: bytes = b"") -> str:
    """A MIME boundary like email's own, chosen here: email's generator compiles a regular
    expression for each message to search its text for the one it picks. Our quoted-printable
    text cannot hold one ("=" is written "=3D"); an attached original is searched."""
    while True:
        boundary = f"==============={random.randrange(sys.maxsize):019d}=="
        if boundary.encode() not in avoiding:
            return boundary


def original_part(raw: bytes) -> bytes:
    """The mail we were sent as a message/rfc822 part, byte for byte but for CRLF line ends:
    parsed and written out again by email, it cost more than the rest of a notification, and
    could come out changed."""
    content = with_crlf(raw)
    if not content.endswith(b"\r\n"):
        content += b"\r\n"
    encoding = b"" if content.isascii() else b"Content-Transfer-Encoding: 8bit\r\n"
    return _ORIGINAL_HEADERS + encoding + b"\r\n" + content


def _file_part(attachment: FileAttachment) -> bytes:
    """An attachment in base64 (its boundary cannot occur: base64 has no "=" runs of that shape)."""
    name = single_line(attachment.filename) or "attachment"
    disposition = "attachment; " + encode_parameter("filename", name)
    encoded = base64.encodebytes(attachment.data).replace(b"\n", b"\r\n")
    headers = [
        ("Content-Type", single_line(attachment.content_type) or "application/octet-stream"),
        ("MIME-Version", "1.0"),
        ("Content-Transfer-Encoding", "base64"),
        ("Content-Disposition", disposition),
    ]
    return _entity(headers, encoded)


def encode_parameter(name: str, value: str) -> str:
    """A MIME parameter, RFC 2231-encoded when it is not plain ASCII (Nordic file names)."""
    if value.isascii() and '"' not in value and "\\" not in value:
        return f'{name}="{value}"'
    return f"{name}*=utf-8''{quote(value, safe='')}"


def with_crlf(data: bytes) -> bytes:
    """Every CR, LF and CRLF as CRLF. bytes.replace: a regular expression took 0.2 ms for a
    16 KB message, substituting line by line."""
    return data.replace(b"\r\n", b"\n").replace(b"\r", b"\n").replace(b"\n", b"\r\n")
