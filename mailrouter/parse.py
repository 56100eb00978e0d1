"""parse: raw bytes → Inbound, a plain record of everything the later stages need.

Real-world mail is broken in every way imaginable; parsing records defects and carries on.
Only bytes that are not an email message at all raise ParseError.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
import quopri
import re
import secrets
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from email import message_from_bytes
from email import policy as email_policy
from email.errors import MessageError, StartBoundaryNotFoundDefect
from email.header import decode_header, make_header
from email.message import EmailMessage as ModernMessage
from email.message import Message as EmailMessage
from email.parser import BytesHeaderParser
from email.utils import getaddresses
from html import unescape
from typing import Any

import mailparser

from mailrouter.errors import ParseError

# mail-parser logs every unhandled MIME part at WARNING; that is noise for a daemon's journal.
logging.getLogger("mailparser").setLevel(logging.ERROR)

_MESSAGE_ID = re.compile(r"<[^<>\s]+>")
_QUOTED_MESSAGE_ID = re.compile(r"^[ \t>]*Message-ID:\s*(<[^<>\s]+>)", re.IGNORECASE | re.MULTILINE)
_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")
_C1 = re.compile(r"[\x80-\x9f]")
# "alice@example.com <bob@example.com>": an address used as a display name, unquoted. The
# mailbox is the one in angle brackets; quoting the name keeps it from counting as a second one.
_ADDRESS_AS_NAME = re.compile(r"(^|,)\s*([^\s<>\",;:@()]+@[^\s<>\",;:()]+)\s*<")
_ENCODED_WORD = re.compile(r"=\?[^?\s]+\?[bBqQ]\?[^?\s]*\?=")
_UTF8_SEQUENCE = re.compile(rb"[\xc2-\xdf][\x80-\xbf]|[\xe0-\xef][\x80-\xbf]{2}|[\xf0-\xf4][\x80-\xbf]{3}")
_WORD_MARK = "QxEWq"
_WORD_STAND_IN = re.compile(rf"{_WORD_MARK}(\d+){_WORD_MARK}")
_LATIN1_LABELS = frozenset({"us-ascii", "ascii", "iso-8859-1", "latin-1", "latin1", "iso8859-1"})
_UNSAFE_FILENAME = re.compile(r"[\x00-\x1f\x7f/\\:*?\"<>|]+")
MAX_FILENAME = 200
# What one message may hand on: the database indexes ids and addresses (PostgreSQL's btree rows
# end near 2.7 KB), and thread looks up every reference at once (SQLite allows 32766 variables).
# Whatever is cut is named in Inbound.defects.
MAX_HTML_CHARS = 1024 * 1024  # the default of [limits] html_to_text_chars
MAX_REFERENCES = 100  # the first (the thread's root) and the last 99 (nearest the message)
MAX_ID_LENGTH = 250  # longer Message-IDs are replaced by one made from their hash
MAX_ADDRESS_LENGTH = 254  # RFC 5321's longest path; a longer address is dropped
MAX_NAME_LENGTH = 200
MAX_ADDRESSES = 100  # per header: From, Reply-To, To, Cc
MAX_SUBJECT = 998  # RFC 5322's longest line
MAX_HEADER_VALUE = 8 * 1024
MAX_HEADER_VALUES = 100  # values kept per header name (Received: lines, say)
# Labels mail clients use for supersets of what they say (or for what Python calls otherwise).
_CHARSET_ALIASES = {
    "gb2312": "gb18030",
    "gbk": "gb18030",
    "x-gbk": "gb18030",
    "ks_c_5601-1987": "cp949",
    "euc-kr": "cp949",
    "iso-8859-8-i": "iso-8859-8",
    "shift_jis": "cp932",
    "x-sjis": "cp932",
    "windows-874": "cp874",
    "tis-620": "cp874",
}
_IDENTIFYING_HEADERS = ("from", "to", "subject", "date", "message-id", "received", "return-path")
_OLE_MAGIC = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"
# The stdlib parser under mail-parser needs ~8× a message's size in memory (one str, a str per
# line, joined payloads). Above this size attachment bodies are measured from the raw bytes and
# cut out before it reads the message.
SLIM_ABOVE = 2 * 1024 * 1024
_CHUNK = 1024 * 1024
_EOL = re.compile(rb"\r\n|\r|\n")
_BLANK_LINE = re.compile(rb"(?:\r\n|\r(?!\n)|\n)(?:\r\n|\r|\n)")
_BOUNDARY_TAIL = re.compile(rb"(--)?[ \t]*(?:\r\n|\r|\n|\Z)")
_BASE64_ALPHABET = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
_UUENCODE = frozenset({"x-uuencode", "uuencode", "uue", "x-uue"})


@dataclass(frozen=True)
class Address:
    address: str
    name: str = ""

    @property
    def domain(self) -> str:
        return self.address.rpartition("@")[2]


@dataclass(frozen=True)
class AttachmentInfo:
    filename: str
    content_type: str
    size: int
    sha256: str


@dataclass(frozen=True)
class Inbound:
    sha256: str
    size: int
    message_id: str
    in_reply_to: str
    references: tuple[str, ...]
    sender: Address | None
    reply_to: tuple[Address, ...]
    to: tuple[Address, ...]
    cc: tuple[Address, ...]
    subject: str
    text: str
    html: str
    headers: dict[str, tuple[str, ...]] = field(repr=False)
    attachments: tuple[AttachmentInfo, ...] = ()
    defects: tuple[str, ...] = ()
    # Message-IDs found in returned-message parts (message/rfc822, text/rfc822-headers) or quoted
    # in the text as "Message-ID: <...>". Only meaningful in a bounce: it names what bounced.
    quoted_message_ids: tuple[str, ...] = ()
    # Header field names, lower case, top to bottom: where an Authentication-Results header sits
    # relative to the Received headers decides whether it can be trusted (RFC 8601 section 5).
    header_names: tuple[str, ...] = field(default=(), repr=False)
    # The fields of a message/delivery-status part (RFC 3464), one "Name: value" line each, its
    # blocks separated by blank lines; "" when the message has none. Only a DSN has one.
    delivery_status: str = ""
    # Why and how the message was read only in part (see parse_degraded); "" when read whole.
    degraded: str = ""

    def header(self, name: str) -> str:
        """The first value of a header, decoded; "" when absent."""
        values = self.headers.get(name.lower())
        return values[0] if values else ""

    @property
    def thread_ids(self) -> tuple[str, ...]:
        """Every Message-ID this message says it answers, nearest first."""
        ids = [self.in_reply_to] if self.in_reply_to else []
        ids.extend(reversed(self.references))
        return tuple(dict.fromkeys(ids))


def parse(raw: bytes, *, slim_above: int = SLIM_ABOVE, html_chars: int = MAX_HTML_CHARS) -> Inbound:
    """The Inbound of raw; messages above slim_above bytes are read without their attachment
    bodies (same result, a fraction of the memory) whenever their MIME structure allows. Only
    the first html_chars characters of HTML are turned into text (when there is no text part)."""
    if raw.startswith(_OLE_MAGIC):
        raise ParseError("an Outlook .msg file (OLE compound document), not an RFC 822 message")
    mail, attachments = (_read_slim(raw) if len(raw) > slim_above else None) or _read(raw)
    message: EmailMessage = mail.message
    plain, html = _body_parts(message)
    cuts: list[str] = []
    text = _body_text(plain, html, html_chars, cuts)
    return _inbound(
        raw,
        message,
        text=text,
        html="\n".join(html).replace("\x00", ""),
        attachments=attachments,
        defects=(*sorted(mail.defects_categories), *cuts),
    )


def parse_degraded(raw: bytes, reason: str, *, headers_only: bool = False) -> Inbound:
    """What can still be read of a message whose full parse failed or took too long, with the
    stdlib parser alone: its text parts (no HTML, no attachments), or with headers_only nothing
    past its header. Inbound.degraded says which and why, so the intake can record it."""
    if raw.startswith(_OLE_MAGIC):
        raise ParseError("an Outlook .msg file (OLE compound document), not an RFC 822 message")
    if headers_only:
        message = BytesHeaderParser().parsebytes(raw)
        return _inbound(raw, message, text="", degraded=f"headers only: {reason}")
    message = message_from_bytes(raw)
    plain, _ = _body_parts(message)
    text = "\n".join(part for part in plain if part.strip()).replace("\x00", "").strip()
    return _inbound(raw, message, text=text, degraded=f"text parts only: {reason}")


def _inbound(
    raw: bytes,
    message: EmailMessage,
    *,
    text: str,
    html: str = "",
    attachments: tuple[AttachmentInfo, ...] = (),
    defects: tuple[str, ...] = (),
    degraded: str = "",
) -> Inbound:
    """The Inbound of a message read one way or another, bounded: see MAX_REFERENCES and the rest."""
    if not any(message.get(name) is not None for name in _IDENTIFYING_HEADERS):
        raise ParseError("no message headers found: not an RFC 822 message")
    cuts = list(defects)
    headers = _decoded_headers(message)
    senders = _addresses(message, "from", cuts)
    message_id = _bounded_id(_first_message_id(headers.get("message-id", ())), "Message-ID", cuts)
    references = [
        _bounded_id(i, "References", cuts)
        for i in _MESSAGE_ID.findall(" ".join(headers.get("references", ())))
    ]
    if len(references) > MAX_REFERENCES:
        cuts.append(
            f"references cut: {len(references)} ids, kept the first and the last {MAX_REFERENCES - 1}"
        )
        references = [references[0], *references[-(MAX_REFERENCES - 1) :]]
    subject = (headers.get("subject") or ("",))[0]
    if len(subject) > MAX_SUBJECT:
        cuts.append(f"subject cut: {len(subject)} characters, kept {MAX_SUBJECT}")
        subject = subject[:MAX_SUBJECT]
    quoted = [] if degraded.startswith("headers only") else _quoted_message_ids(message, text, message_id)
    return Inbound(
        sha256=hashlib.sha256(raw).hexdigest(),
        size=len(raw),
        message_id=message_id,
        in_reply_to=_bounded_id(_first_message_id(headers.get("in-reply-to", ())), "In-Reply-To", cuts),
        references=tuple(references),
        sender=senders[0] if senders else None,
        reply_to=tuple(_addresses(message, "reply-to", cuts)),
        to=tuple(_addresses(message, "to", cuts)),
        cc=tuple(_addresses(message, "cc", cuts)),
        subject=subject,
        text=text,
        html=html,
        headers=_bounded_headers(headers, cuts),
        attachments=attachments,
        defects=tuple(dict.fromkeys(cuts)),
        quoted_message_ids=tuple(_bounded_id(i, "quoted Message-ID", cuts) for i in quoted[:MAX_REFERENCES]),
        header_names=tuple(name.lower() for name in message),
        delivery_status=_delivery_status(message),
        degraded=degraded,
    )


def _bounded_id(message_id: str, header: str, cuts: list[str]) -> str:
    """An id too long for a database index is replaced by one made from its hash: the same id
    always gives the same stand-in, so duplicates are still found and replies still thread."""
    if len(message_id) <= MAX_ID_LENGTH:
        return message_id
    digest = hashlib.sha256(message_id.encode("utf-8", "surrogateescape")).hexdigest()
    cuts.append(f"{header} over {MAX_ID_LENGTH} characters replaced by one made from its hash")
    return f"<{digest}@overlong-id.invalid>"


def _bounded_headers(headers: dict[str, tuple[str, ...]], cuts: list[str]) -> dict[str, tuple[str, ...]]:
    bounded = {}
    for name, values in headers.items():
        kept = tuple(value[:MAX_HEADER_VALUE] for value in values[:MAX_HEADER_VALUES])
        if len(values) > MAX_HEADER_VALUES or any(len(v) > MAX_HEADER_VALUE for v in values):
            cuts.append(f"header {name} cut to {MAX_HEADER_VALUES} values of {MAX_HEADER_VALUE} characters")
        bounded[name] = kept
    return bounded


def _read(raw: bytes) -> tuple[mailparser.MailParser, tuple[AttachmentInfo, ...]]:
    try:
        mail = _mailparser(raw)
    except Exception as exc:  # mail-parser raises assorted errors on hopeless input
        raise ParseError(f"mail-parser could not read the message: {exc}") from exc
    return mail, tuple(_attachment(item, _attachment_content(item)) for item in mail.attachments)


def _read_slim(raw: bytes) -> tuple[mailparser.MailParser, tuple[AttachmentInfo, ...]] | None:
    """mail-parser over raw with its attachment bodies cut out, their sizes and hashes taken from
    the raw bytes. None when nothing could be cut, or when the cut bodies did not come back as one
    attachment each (mail-parser judged a part otherwise than _cuttable): the full reading decides."""
    try:
        skeleton = _Skeleton(raw)
        if not skeleton.measured:
            return None
        mail = mailparser.parse_from_bytes(skeleton.assemble())
        unseen = dict(skeleton.measured)
        attachments = []
        for item in mail.attachments:
            content = _attachment_content(item)
            measured = unseen.pop(content, None)
            if measured is None and content in skeleton.measured:
                return None
            attachments.append(_attachment(item, content, measured))
    except Exception:  # whatever trips the slim reading, the full reading decides
        return None
    return None if unseen else (mail, tuple(attachments))


def _mailparser(raw: bytes) -> mailparser.MailParser:
    """NUL bytes are never legal in mail and make the stdlib's codec look-ups raise ValueError
    (a charset name with a NUL in it): read the message again without them before calling it hopeless."""
    try:
        return mailparser.parse_from_bytes(raw)
    except ValueError:
        if b"\x00" not in raw:
            raise
        return mailparser.parse_from_bytes(raw.replace(b"\x00", b""))


def single_line(value: str) -> str:
    """Fold a header value taken from mail onto one line: CR/LF can never reach our headers."""
    return " ".join(_CONTROL.sub(" ", value).split())


def decode_bytes(data: bytes, charset: str | None, *, unlabelled: str = "utf-8") -> str:
    """Text from bytes whose label may lie: windows-1252 sent as iso-8859-1, UTF-8 sent as ascii,
    gb2312 that is really GBK, charsets nobody has heard of. Never raises; at worst it replaces."""
    label = (charset or "").strip().strip('"').lower()
    label = _CHARSET_ALIASES.get(label, label)
    if label and label not in _LATIN1_LABELS:
        try:
            return data.decode(label)
        except UnicodeError:
            pass
        except (LookupError, ValueError):  # no such codec, or a name no codec could have (NUL)
            label = "unknown"
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        pass
    if label in _LATIN1_LABELS or label == "unknown" or (not label and _mostly_not_utf8(data, unlabelled)):
        # windows-1252 is latin-1 plus the printable characters (curly quotes, euro sign) that
        # real latin-1 text never has in 0x80-0x9f.
        return data.decode("cp1252", "replace")
    return data.decode(label or "utf-8", "replace")


def _mostly_not_utf8(data: bytes, unlabelled: str) -> bool:
    """Unlabelled bytes that are not UTF-8: windows-1252 when hardly any of their 8-bit bytes
    form UTF-8 sequences; UTF-8 with a few broken bytes otherwise."""
    if unlabelled == "cp1252":
        return True
    valid = sum(len(m) for m in _UTF8_SEQUENCE.findall(data))
    return valid < sum(1 for byte in data if byte >= 0x80) / 2


def _repair_c1(text: str) -> str:
    """C1 controls in decoded text are windows-1252 bytes that someone decoded as latin-1."""
    return _C1.sub(lambda m: m.group(0).encode("latin-1").decode("cp1252", "replace"), text)


def _raw_8bit(value: str) -> str:
    """Raw 8-bit header bytes arrive as surrogate escapes: give them a charset."""
    if any("\udc80" <= char <= "\udcff" for char in value):
        return decode_bytes(value.encode("utf-8", "surrogateescape"), None, unlabelled="cp1252")
    return value


def _decode(value: object) -> str:
    """A header value: raw 8-bit bytes given a charset, RFC 2047 words decoded, even broken ones."""
    text = _raw_8bit(str(value))
    try:
        chunks = decode_header(text)
    except (MessageError, UnicodeError, ValueError, binascii.Error):  # a broken base64 word, say
        return _repair_c1(text)
    try:
        text = str(make_header(chunks))
    except (MessageError, UnicodeError, LookupError, ValueError):  # a mangled charset name
        text = "".join(
            chunk if isinstance(chunk, str) else decode_bytes(chunk, charset) for chunk, charset in chunks
        )
    return _repair_c1(text)


def _decoded_headers(message: EmailMessage) -> dict[str, tuple[str, ...]]:
    headers: dict[str, list[str]] = {}
    for name, value in message.raw_items():
        headers.setdefault(name.lower(), []).append(single_line(_decode(value)))
    return {name: tuple(values) for name, values in headers.items()}


def _shield_encoded_words(value: str) -> tuple[str, Callable[[str], str]]:
    """Stand in a plain atom for every encoded-word; returns the text and how to put them back."""
    words: list[str] = []

    def stand_in(match: re.Match[str]) -> str:
        words.append(match.group(0))
        return f"{_WORD_MARK}{len(words) - 1}{_WORD_MARK}"

    def restore(text: str) -> str:
        return _WORD_STAND_IN.sub(lambda match: words[int(match.group(1))], text)

    return _ENCODED_WORD.sub(stand_in, value), restore


def _addresses(message: EmailMessage, header: str, cuts: list[str]) -> list[Address]:
    """Addresses are split before RFC 2047 decoding, with every encoded-word shielded: neither
    its decoded text nor a raw "=?utf-8?q?a:b@c?=" may ever read as an address, a group or a
    second mailbox. An address longer than any deliverable one is dropped, not cut (a cut one
    would be somebody else's); past MAX_ADDRESSES the rest are."""
    found: list[Address] = []
    for name, value in message.raw_items():
        if name.lower() != header:
            continue
        shielded, restore = _shield_encoded_words(_raw_8bit(value))
        for display, address in getaddresses([_ADDRESS_AS_NAME.sub(r'\1 "\2" <', shielded)]):
            address = single_line(restore(address)).strip("<>").lower()
            if "@" not in address:
                continue
            if len(address) > MAX_ADDRESS_LENGTH:
                cuts.append(f"{header}: an address over {MAX_ADDRESS_LENGTH} characters dropped")
            elif len(found) == MAX_ADDRESSES:
                cuts.append(f"{header}: addresses past the first {MAX_ADDRESSES} dropped")
            else:
                name = single_line(_decode(restore(display)))[:MAX_NAME_LENGTH]
                found.append(Address(address=address, name=name))
    return found


def _first_message_id(values: tuple[str, ...]) -> str:
    for value in values:
        match = _MESSAGE_ID.search(value)
        if match:
            return match.group(0)
    return ""


def _attachment_content(item: dict[str, Any]) -> bytes:
    payload = item.get("payload") or ""
    if item.get("binary"):
        try:
            return base64.b64decode(payload)
        except (binascii.Error, ValueError):
            return payload.encode("ascii", "replace")
    return payload.encode("utf-8", "replace")


def _attachment(
    item: dict[str, Any], content: bytes, measured: tuple[int, str] | None = None
) -> AttachmentInfo:
    """`measured` (size, sha256) stands in for the content of a body cut out before parsing."""
    size, sha256 = measured or (len(content), hashlib.sha256(content).hexdigest())
    return AttachmentInfo(
        filename=safe_filename(str(item.get("filename") or "")),
        content_type=str(item.get("mail_content_type") or "application/octet-stream"),
        size=size,
        sha256=sha256,
    )


def safe_filename(name: str) -> str:
    """An attachment's name as data: no directories, no control or shell-special characters, no
    leading dots, bounded. It is never used as a path; this makes sure it could not be one."""
    name = _repair_c1(_raw_8bit(name)).strip().strip("<>").replace("\\", "/").rsplit("/", 1)[-1]
    name = " ".join(_UNSAFE_FILENAME.sub("_", name).split()).lstrip(". ")
    if len(name) > MAX_FILENAME:
        stem, dot, suffix = name.rpartition(".")
        name = (stem[: MAX_FILENAME - len(suffix) - 1] + dot + suffix) if dot and len(suffix) < 10 else name
        name = name[:MAX_FILENAME]
    return name or "attachment"


def _is_attachment(part: EmailMessage) -> bool:
    """Shown as a file rather than inline: a named text part marked inline is still read as text."""
    disposition = part.get_content_disposition()
    return disposition == "attachment" or (disposition is None and bool(part.get_filename()))


def _cuttable(part: EmailMessage) -> bool:
    """A leaf whose body only its attachment record reads: a file by mail-parser's rules (a name,
    a Content-ID, "attachment"), never text a reader sees or a bounce quotes."""
    content_type = part.get_content_type()
    if content_type in ("text/plain", "text/html"):
        return _is_attachment(part)
    if content_type == "text/rfc822-headers":
        return False
    return (
        bool(part.get_filename() or part.get("content-id")) or part.get_content_disposition() == "attachment"
    )


class _Skeleton:
    """A message's raw bytes with its attachments' bodies cut out, each replaced by a marker that
    decodes to itself, and the size and sha256 each body decodes to (`measured`, by marker).

    It finds the MIME structure as the stdlib feedparser will (the same boundary lines and header
    blocks; the newline before a boundary line belongs to the boundary), so the skeleton parses to
    the same tree with only those bodies changed. Whatever it does not understand it leaves
    whole: cutting less only costs memory."""

    def __init__(self, raw: bytes) -> None:
        self.raw = raw
        self.token = secrets.token_hex(16)
        self.cuts: list[tuple[int, int, bytes]] = []
        self.measured: dict[bytes, tuple[int, str]] = {}
        found = self._headers(0, len(raw), "text/plain")
        if found is not None:
            self._entity(*found, len(raw), in_multipart=False)

    def assemble(self) -> bytes:
        pieces = []
        kept = 0
        for start, stop, placeholder in self.cuts:
            pieces += [self.raw[kept:start], placeholder]
            kept = stop
        pieces.append(self.raw[kept:])
        return b"".join(pieces)

    def _headers(self, start: int, end: int, default_type: str) -> tuple[EmailMessage, int] | None:
        """The headers of the entity in raw[start:end], parsed alone, and where its body starts;
        None unless a blank line ends them and the full parse could read nothing else in them."""
        blank = _EOL.match(self.raw, start, end) or _BLANK_LINE.search(self.raw, start, end)
        if blank is None:
            return None
        headers = BytesHeaderParser().parsebytes(self.raw[start : blank.end()])
        headers.set_default_type(default_type)
        if headers.defects or headers.get_payload():
            return None
        return headers, blank.end()

    def _entity(self, headers: EmailMessage, body: int, end: int, *, in_multipart: bool) -> None:
        """A message or body part whose body is raw[body:end]. Only a part of a multipart is cut:
        its payload's end is known (the newline before the next boundary line)."""
        maintype = headers.get_content_maintype()
        if maintype in ("multipart", "message"):
            # mail-parser hashes an attached container whole, flattened with everything inside.
            if headers.get("content-disposition") is not None:
                return
            if maintype == "multipart":
                self._multipart(headers, body, end)
            elif headers.get_content_type() != "message/delivery-status":
                inner = self._headers(body, end, "text/plain")
                if inner is not None:
                    self._entity(*inner, end, in_multipart=False)
        elif in_multipart and _cuttable(headers):
            self._cut(headers, body, end - (2 if self.raw.startswith(b"\r\n", end - 2) else 1))

    def _multipart(self, headers: EmailMessage, start: int, end: int) -> None:
        """The parts between a multipart's boundary lines in raw[start:end]. A multipart that does
        not start with a separator and end with a close delimiter is left whole."""
        boundary = headers.get_boundary()
        if boundary is None:
            return
        try:
            delimiter = b"--" + boundary.encode("ascii", "surrogateescape")
        except UnicodeEncodeError:
            return
        lines = list(self._boundary_lines(delimiter, start, end))
        if not lines or lines[0][2]:
            return
        parts = []
        index = 0
        while not lines[index][2]:
            # The feedparser reads no part between adjacent boundary lines, whatever their kind.
            while index + 1 < len(lines) and lines[index + 1][0] == lines[index][1]:
                index += 1
            if index + 1 == len(lines):
                return
            parts.append((lines[index][1], lines[index + 1][0]))
            index += 1
        default_type = "message/rfc822" if headers.get_content_type() == "multipart/digest" else "text/plain"
        for part_start, part_end in parts:
            found = self._headers(part_start, part_end, default_type)
            if found is not None:
                self._entity(*found, part_end, in_multipart=True)

    def _boundary_lines(self, delimiter: bytes, start: int, end: int) -> Iterator[tuple[int, int, bool]]:
        """(start, end, is the close delimiter) of each line in raw[start:end] the feedparser takes
        for a boundary: the delimiter at the start of a line, then only "--", blanks, a line end."""
        at = self.raw.find(delimiter, start, end)
        while at != -1:
            if at == start or self.raw[at - 1] in b"\r\n":
                tail = _BOUNDARY_TAIL.match(self.raw, at + len(delimiter), end)
                if tail is not None:
                    yield at, tail.end(), tail.group(1) is not None
            at = self.raw.find(delimiter, at + 1, end)

    def _cut(self, headers: EmailMessage, start: int, stop: int) -> None:
        """Measure the payload raw[start:stop] as mail-parser's attachment record would decode it,
        and cut it out. Bodies whose decoding cannot be followed a chunk at a time stay."""
        encoding = str(headers.get("content-transfer-encoding", ""))
        if stop <= start or not encoding.isascii() or encoding.lower() in _UUENCODE:
            return
        marker = f"{self.token}-{len(self.cuts)}".encode()
        pieces: Iterable[bytes | memoryview]
        if encoding.strip().lower() == "base64":  # mail-parser's test; it then b64decodes the text
            pieces, placeholder = _base64_pieces(self.raw, start, stop), base64.b64encode(marker)
        elif encoding.lower() == "quoted-printable":  # get_payload(decode=True)'s test, unstripped
            pieces, placeholder = _quoted_printable_pieces(self.raw, start, stop), marker
        else:
            pieces, placeholder = (memoryview(self.raw)[start:stop],), marker
        digest = hashlib.sha256()
        size = 0
        try:
            for piece in pieces:
                digest.update(piece)
                size += len(piece)
        except ValueError:  # not plain base64: the full parse reads it
            return
        self.cuts.append((start, stop, placeholder))
        self.measured[marker] = (size, digest.hexdigest())


def _base64_pieces(raw: bytes, start: int, stop: int) -> Iterator[bytes]:
    """b64decode(raw[start:stop]) a chunk at a time, in whole 4-character groups. ValueError
    unless the text is only the alphabet and whitespace with its padding at the very end, where
    the pieces are exactly what decoding the whole gives (b64decode's leniency is not followed)."""
    carry = b""
    for at in range(start, stop, _CHUNK):
        text = carry + raw[at : min(at + _CHUNK, stop)].translate(None, b" \t\r\n")
        last = at + _CHUNK >= stop
        data = text.rstrip(b"=") if last else text
        if data.translate(None, _BASE64_ALPHABET):
            raise ValueError("not plain base64")
        if last and len(text) - len(data) != (0, -1, 2, 1)[len(data) % 4]:
            raise ValueError("base64 padding does not fit")
        whole = len(text) if last else len(text) - len(text) % 4
        text, carry = text[:whole], text[whole:]
        yield binascii.a2b_base64(text)


def _quoted_printable_pieces(raw: bytes, start: int, stop: int) -> Iterator[bytes]:
    """quopri.decodestring(raw[start:stop]) a chunk of whole lines at a time: it carries nothing
    from one line to the next."""
    at = start
    while at < stop:
        newline = raw.find(b"\n", at + _CHUNK, stop)
        end = stop if newline == -1 else newline + 1
        yield quopri.decodestring(raw[at:end])
        at = end


def _body_parts(message: EmailMessage) -> tuple[list[str], list[str]]:
    """The text/plain and text/html parts a reader sees, nested messages included, decoded with
    charset repair (mail-parser trusts a latin-1 label and keeps windows-1252 bytes as controls)."""
    plain: list[str] = []
    html: list[str] = []
    for part in _with_boundary_recovered(message).walk():
        if part.is_multipart() or _is_attachment(part):
            continue
        content_type = part.get_content_type()
        if content_type not in ("text/plain", "text/html"):
            continue
        payload = part.get_payload(decode=True)
        if not isinstance(payload, bytes):
            continue
        text = _repair_c1(decode_bytes(payload, part.get_content_charset()))
        (plain if content_type == "text/plain" else html).append(text)
    return plain, html


def _with_boundary_recovered(message: EmailMessage) -> EmailMessage:
    """A multipart whose parts use another boundary than the header declares (spam tools do
    this) parses as one opaque part; read it again with the boundary its first part line uses."""
    if not any(isinstance(d, StartBoundaryNotFoundDefect) for d in message.defects):
        return message
    payload = message.get_payload()
    found = re.search(r"^--(\S+?)\s*$", payload, re.MULTILINE) if isinstance(payload, str) else None
    if found is None or not isinstance(payload, str):
        return message
    head = f'Content-Type: {message.get_content_type()}; boundary="{found.group(1)}"\r\n\r\n'
    return message_from_bytes((head + payload).encode("utf-8", "surrogateescape"))


def _quoted_message_ids(message: EmailMessage, text: str, own: str) -> tuple[str, ...]:
    found: list[str] = []
    for part in message.walk():
        content_type = part.get_content_type()
        if content_type == "message/rfc822" and part.is_multipart():
            inner = part.get_payload(0)
            if isinstance(inner, EmailMessage):  # always, for a multipart; typeshed allows a str
                found.extend(_MESSAGE_ID.findall(str(inner.get("message-id", ""))))
        elif content_type == "text/rfc822-headers":
            payload = part.get_payload(decode=True)
            if isinstance(payload, bytes):
                found.extend(_QUOTED_MESSAGE_ID.findall(payload.decode("ascii", "replace")))
    found.extend(_QUOTED_MESSAGE_ID.findall(text))
    return tuple(i for i in dict.fromkeys(found) if i != own)


def _delivery_status(message: EmailMessage) -> str:
    for part in message.walk():
        if part.get_content_type() == "message/delivery-status":
            blocks = part.get_payload()
            if isinstance(blocks, list):
                return "\n\n".join(
                    "\n".join(f"{name}: {single_line(str(value))}" for name, value in block.items())
                    for block in blocks
                    if isinstance(block, EmailMessage)  # always; typeshed allows a str
                )
    return ""


def _body_text(plain: list[str], html: list[str], html_chars: int, cuts: list[str]) -> str:
    text = "\n".join(part for part in plain if part.strip())
    if not text and html:
        markup = "\n".join(html)
        if len(markup) > html_chars:
            cuts.append(f"html cut: {len(markup)} characters, the first {html_chars} turned into text")
        text = html_to_text(markup[:html_chars])
    return text.replace("\x00", "").strip()


_BLOCKS = frozenset({"p", "div", "br", "li", "tr", "h1", "h2", "h3", "h4", "table", "blockquote"})
# Elements whose content is never shown, and is never markup either: skipped to their end tag.
_RAW_HIDDEN = {
    name: re.compile(rf"</{name}(?=[\t\n\f\r />])", re.IGNORECASE) for name in ("script", "style", "title")
}
_TAG_NAME = re.compile(r"[A-Za-z][^\t\n\f\r />]*")
_TAG_STOP = re.compile(r""">|=[\t\n\f\r ]*(["'])""")


def html_to_text(html: str) -> str:
    """Readable text from HTML, for mail that has no text part. The HTML itself is never trusted.

    One pass over the markup, as the HTML standard's tokenizer reads it: a tag, comment or quoted
    attribute value left open runs to the end of the input, as in a browser, so no character is
    read twice. (html.parser reads the rest of the document again for every unclosed tag, and
    lxml and lexbor slow down quadratically on long attribute lists or deep nesting.)"""
    parts: list[str] = []
    in_head = False
    start = at = 0  # the text not yet taken starts at `start`
    end = len(html)
    while (lt := html.find("<", at)) != -1:
        at = lt + 1
        closing = html.startswith("/", at)
        name = _TAG_NAME.match(html, at + closing)
        if name is None and not html.startswith(("!", "?", "/"), at):
            continue  # a "<" that opens nothing is text
        if not in_head:
            parts.append(unescape(html[start:lt]))
        if name is None:
            if html.startswith("!--", at):
                close = html.find("-->", at + 3)
                at = end if close == -1 else close + 3
            else:  # doctype, processing instruction, bogus comment
                close = html.find(">", at)
                at = end if close == -1 else close + 1
        else:
            at = _tag_end(html, name.end())
            tag = name.group(0).lower()
            if tag in _RAW_HIDDEN and not closing:
                close_tag = _RAW_HIDDEN[tag].search(html, at)
                at = end if close_tag is None else _tag_end(html, close_tag.end())
            elif tag in ("head", "body"):
                in_head = tag == "head" and not closing
            elif tag in _BLOCKS:
                parts.append("\n")
        start = at
    if not in_head:
        parts.append(unescape(html[start:]))
    lines = (" ".join(line.split()) for line in "".join(parts).splitlines())
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


def _tag_end(html: str, at: int) -> int:
    """Where the tag whose name ends at `at` ends: past its ">", quoted attribute values skipped
    whole; the end of the input for a tag that never closes."""
    while (stop := _TAG_STOP.search(html, at)) is not None:
        quote = stop.group(1)
        if quote is None:
            return stop.end()
        close = html.find(quote, stop.end())
        if close == -1:
            break
        at = close + 1
    return len(html)


def file_attachments(raw: bytes) -> list[tuple[str, str, bytes]]:
    """(filename, content type, decoded bytes) of each attachment: what an agent attached to an
    answer, to be sent on to the customer. Inbound keeps only their names, sizes and hashes."""
    message = message_from_bytes(raw, policy=email_policy.default)
    found = []
    if isinstance(message, ModernMessage):
        for part in message.iter_attachments():
            payload = part.get_payload(decode=True)
            if isinstance(payload, bytes):
                found.append((part.get_filename() or "attachment", part.get_content_type(), payload))
    return found
