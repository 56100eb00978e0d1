"""Big messages are read with their attachment bodies cut out (parse's slim reading). Every case
here is parsed both ways and must give the same Inbound; `cut` says how many bodies the slim
reading took out, so an equality that only holds because nothing was cut cannot pass unnoticed."""

from __future__ import annotations

import base64
import hashlib
import quopri
import random
import tracemalloc

from mailrouter.parse import Inbound, _read_slim, _Skeleton, parse

PDF = random.Random(6).randbytes(150_001)  # not a multiple of 3: its base64 ends in padding
LOG = ("2026-11-25 01:02:03 disk /dev/sda1 full — ærlig talt\r\n" * 4000).encode()


def both_ways(raw: bytes, *, cut: int) -> Inbound:
    """The slim and the full reading of raw, which must agree; mail-parser names unnamed
    attachments with the global random generator, so each reading starts from the same seed."""
    assert len(_Skeleton(raw).measured) == cut
    assert (_read_slim(raw) is not None) == (cut > 0)
    random.seed(25)
    slim = parse(raw, slim_above=0)
    random.seed(25)
    full = parse(raw, slim_above=len(raw))
    assert slim == full
    assert slim.headers == full.headers
    return slim


def lines(data: bytes) -> bytes:
    return base64.encodebytes(data).replace(b"\n", b"\r\n")


def multipart(*parts: bytes, subtype: str = "mixed", boundary: str = "outer", close: bool = True) -> bytes:
    body = b"".join(b"--" + boundary.encode() + b"\r\n" + part + b"\r\n" for part in parts)
    closing = b"--" + boundary.encode() + b"--\r\n" if close else b""
    return f'Content-Type: multipart/{subtype}; boundary="{boundary}"\r\n\r\n'.encode() + body + closing


def message(body: bytes) -> bytes:
    return (
        b"From: Kari Nordmann <kari@kunde.example>\r\nTo: it-support@example.test\r\n"
        b"Subject: =?utf-8?q?Skjerm_p=C3=A5_plan_3?=\r\nMessage-ID: <big@kunde.example>\r\n"
        b"MIME-Version: 1.0\r\n" + body
    )


TEXT = b'Content-Type: text/plain; charset="utf-8"\r\nContent-Transfer-Encoding: 8bit\r\n\r\nSe vedlegg.'
ATTACHED_PDF = (
    b'Content-Type: application/pdf; name="rapport.pdf"\r\nContent-Transfer-Encoding: base64\r\n'
    b'Content-Disposition: attachment; filename="rapport.pdf"\r\n\r\n' + lines(PDF)
)


def test_mixed_with_a_big_base64_attachment():
    inbound = both_ways(message(multipart(TEXT, ATTACHED_PDF)), cut=1)
    [attachment] = inbound.attachments
    assert (attachment.filename, attachment.size) == ("rapport.pdf", len(PDF))
    assert attachment.sha256 == hashlib.sha256(PDF).hexdigest()
    assert inbound.text == "Se vedlegg." and inbound.subject == "Skjerm på plan 3"


def test_alternative_and_related_inside_mixed():
    alternative = multipart(
        b"Content-Type: text/plain\r\n\r\nhei",
        multipart(
            b"Content-Type: text/html\r\n\r\n<p>hei <img src=cid:logo></p>",
            b"Content-Type: image/png\r\nContent-ID: <logo>\r\nContent-Transfer-Encoding: base64\r\n\r\n"
            + lines(PDF[:9000]),
            subtype="related",
            boundary="inner2",
        ),
        subtype="alternative",
        boundary="inner",
    )
    inbound = both_ways(message(multipart(alternative, ATTACHED_PDF)), cut=2)
    assert [a.filename for a in inbound.attachments] == ["logo", "rapport.pdf"]
    assert inbound.text == "hei" and "<img" in inbound.html


def test_forwarded_message_inline_is_cut_inside_but_attached_is_hashed_whole():
    inner = message(multipart(TEXT, ATTACHED_PDF, boundary="fwd"))
    inline = b"Content-Type: message/rfc822\r\n\r\n" + inner
    attached = (
        b'Content-Type: message/rfc822\r\nContent-Disposition: attachment; filename="fwd.eml"\r\n\r\n' + inner
    )
    inbound = both_ways(message(multipart(TEXT, inline)), cut=1)
    assert [a.filename for a in inbound.attachments] == ["rapport.pdf"]
    assert inbound.text == "Se vedlegg.\nSe vedlegg."
    inbound = both_ways(message(multipart(TEXT, attached)), cut=0)
    assert [a.filename for a in inbound.attachments] == ["fwd.eml", "rapport.pdf"]


def test_quoted_printable_8bit_and_text_attachments():
    binary = bytes(range(256)) * 300
    raw = message(
        multipart(
            TEXT,
            b"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable\r\n"
            b'Content-Disposition: attachment; filename="server.log"\r\n\r\n' + quopri.encodestring(LOG),
            b'Content-Type: application/octet-stream; name="dump.bin"\r\nContent-Transfer-Encoding: binary'
            b"\r\n\r\n" + binary,
            b"Content-Type: text/csv\r\nContent-Disposition: attachment\r\n\r\n" + LOG,  # named at random
        )
    )
    inbound = both_ways(raw, cut=3)
    log, dump, csv = inbound.attachments
    assert (log.filename, log.size, log.sha256) == ("server.log", len(LOG), hashlib.sha256(LOG).hexdigest())
    assert dump.sha256 == hashlib.sha256(binary).hexdigest()
    assert csv.filename.endswith(".txt") and csv.size == len(LOG)


def test_a_big_text_body_is_read_not_cut():
    raw = message(multipart(b"Content-Type: text/plain; charset=utf-8\r\n\r\n" + LOG, ATTACHED_PDF))
    inbound = both_ways(raw, cut=1)
    assert inbound.text == LOG.decode().strip()
    named_inline = b'Content-Type: text/plain\r\nContent-Disposition: inline; filename="a.txt"\r\n\r\n' + LOG
    assert both_ways(message(multipart(named_inline)), cut=0).text == LOG.decode().strip()


def test_broken_structure_is_left_to_the_full_reading():
    unclosed = message(multipart(TEXT, ATTACHED_PDF, close=False))
    assert "CloseBoundaryNotFoundDefect" in both_ways(unclosed, cut=0).defects
    undeclared = message(multipart(TEXT, ATTACHED_PDF).replace(b'boundary="outer"', b'boundary="other"'))
    assert both_ways(undeclared, cut=0).text == "Se vedlegg."
    no_blank_line = message(multipart(TEXT, ATTACHED_PDF.replace(b"\r\n\r\n", b"\r\nX-Oops\r\n", 1)))
    both_ways(no_blank_line, cut=0)


def test_base64_the_full_reading_would_treat_leniently_is_not_cut():
    junk = ATTACHED_PDF + b"!!\r\n"
    bad_padding = ATTACHED_PDF.rstrip(b"=\r\n")  # b64decode fails: the record hashes the text
    inbound = both_ways(message(multipart(TEXT, junk, bad_padding)), cut=0)
    assert [a.size for a in inbound.attachments] == [len(PDF), len(bad_padding.rsplit(b"\r\n\r\n", 1)[1])]


def test_bare_newlines_and_blanks_after_the_boundary():
    raw = message(multipart(TEXT, ATTACHED_PDF)).replace(b"\r\n", b"\n")
    raw = raw.replace(b"--outer\n", b"--outer \t\n")
    assert both_ways(raw, cut=1).attachments[0].sha256 == hashlib.sha256(PDF).hexdigest()


def test_memory_of_an_8_mb_message_stays_below_its_size():
    """The full reading needs ~8× the message (stdlib feedparser); the slim one a few chunks."""
    data = random.Random(8).randbytes(6 * 1024 * 1024)
    raw = message(multipart(TEXT, ATTACHED_PDF.replace(lines(PDF), lines(data))))
    tracemalloc.start()
    try:
        inbound = parse(raw)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert inbound.attachments[0].sha256 == hashlib.sha256(data).hexdigest()
    assert peak < len(raw), f"parse() of a {len(raw) >> 20} MB message peaked at {peak >> 20} MB"
