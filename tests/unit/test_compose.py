"""compose: what we send must decode to exactly what we meant, in any client."""

import itertools
import random
import re
from email import message_from_bytes
from email.policy import default
from typing import TypedDict

from mailrouter.compose import Outgoing, compose, tagged_subject
from mailrouter.templates import Rendered
from tests.messages import plain_text

WORDS = [
    "æøå",
    "ÆØÅ",
    "äö",
    "ÄÖ",
    "Vannlekkasje",
    "i",
    "kjelleren",
    "–",
    "skrivaren",
    "fungerar",
    "Re:",
    "🙂",
]


def reply(
    subject: str,
    name: str = "IT Support",
    html: str | None = None,
    references: tuple[str, ...] = ("<m0@kunde.example>",),
) -> Outgoing:
    return compose(
        case_number="IT-1042",
        from_address="it-support@example.test",
        from_name=name,
        to=("kari@kunde.example",),
        subject=tagged_subject("IT-1042", subject),
        in_reply_to="<m1@kunde.example>",
        references=references,
        body=Rendered("Hei Øystein!\n", html),
        auto_submitted="auto-replied",
    )


def test_nordic_subjects_survive_encoding_exactly():
    rng = random.Random(7)
    for _ in range(500):
        subject = " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 25)))
        out = reply(subject)
        parsed = message_from_bytes(out.data, policy=default)
        assert parsed["Subject"] == out.subject, subject
        header = re.search(rb"\r\nSubject: (.*?)\r\n(?![ \t])", out.data, re.DOTALL)
        assert header is not None
        lines = header.group(1).split(b"\r\n ")
        assert len(b"Subject: " + lines[0]) <= 78 and all(len(b" " + line) <= 78 for line in lines)
        assert all(len(word) <= 75 for line in lines for word in line.split())


def test_headers_threading_and_automatic_markers():
    out = reply("SV: Skrivaren", name="Vaktmester – Bygg Ø", html="<p>Hei</p>")
    parsed = message_from_bytes(out.data, policy=default)
    assert parsed["Subject"] == "[IT-1042] Re: Skrivaren"
    assert parsed["From"].addresses[0].display_name == "Vaktmester – Bygg Ø"
    assert parsed["In-Reply-To"] == "<m1@kunde.example>"
    assert parsed["References"] == "<m0@kunde.example> <m1@kunde.example>"
    assert parsed["Message-ID"] == out.message_id and out.message_id.endswith("@example.test>")
    assert parsed["Auto-Submitted"] == "auto-replied" and parsed["X-Loop"] == "it-support@example.test"
    assert parsed.get_content_type() == "multipart/alternative"
    assert plain_text(parsed).replace("\r\n", "\n") == "Hei Øystein!\n"
    assert b"\r\n" in out.data and b"\n\n" not in out.data.replace(b"\r\n", b"")


def test_no_header_can_be_injected_through_the_subject_or_name():
    out = reply("hei\r\nBcc: victim@evil.example", name="x\r\nBcc: victim@evil.example")
    parsed = message_from_bytes(out.data, policy=default)
    assert parsed["Bcc"] is None
    assert "Bcc" not in [k for k in parsed]


def test_headers_that_need_no_folding_are_written_as_compat32_would_fold_them(monkeypatch):
    """The short cut past email.header's folding changes no byte of what we send."""
    import mailrouter.compose as module

    monkeypatch.setattr(module, "make_msgid", lambda idstring, domain: f"<fixed.{idstring}@{domain}>")
    monkeypatch.setattr(module, "formatdate", lambda **kwargs: "Tue, 24 Nov 2026 10:00:00 GMT")
    monkeypatch.setattr(module, "_boundary", lambda avoiding=b"": "BOUNDARY")
    rng = random.Random(7)
    ascii_words = ["Printer", "on", "floor", "3", "is", "broken", "=?utf-8?q?x?=", "a  b", "\tc", "VPN"]
    cases = []
    for _ in range(300):
        words = rng.choice([ascii_words, WORDS + ascii_words])
        subject = " ".join(rng.choice(words) for _ in range(rng.randint(0, 14)))
        name = rng.choice(["IT Support", "Vaktmester Østlandet", "HR, Oslo", "x" * 70])
        references = tuple(f"<ref{i}.{rng.random()}@kunde.example>" for i in range(rng.randint(0, 4)))
        cases.append((subject, name, references))

    def composed(subject: str, name: str, references: tuple[str, ...]) -> bytes:
        return reply(subject, name, "<p>Hei!</p>", references).data

    fast = [composed(*case) for case in cases]
    monkeypatch.setattr(module, "_needs_no_folding", lambda name, value: False)
    assert fast == [composed(*case) for case in cases]


ORIGINAL = (
    "From: Kari <kari@kunde.example>\n"
    "To: it-support@example.test\n"
    "Subject: Skrivaren   virker ikke\n"
    f"References: {' '.join(f'<ref{i}@kunde.example>' for i in range(12))}\n"
    "Message-ID: <orig@kunde.example>\n"
    "Content-Type: text/plain; charset=utf-8\n"
    "\n"
    "Hei, skrivaren på kontoret virker ikke.\n"
    "--===============0000000000000000001==\n"
).encode()


def notification(original: bytes) -> bytes:
    return compose(
        case_number="IT-1042",
        from_address="it-support@example.test",
        from_name="IT Support",
        to=("agent1@example.test",),
        subject="[IT-1042] New case: Skrivaren",
        body=Rendered("New case\n", "<p>New case</p>"),
        attach_original=original,
    ).data


def test_the_original_is_attached_byte_for_byte_with_crlf_line_ends():
    data = notification(ORIGINAL)
    sent = message_from_bytes(data, policy=default)
    boundary = sent.get_boundary()
    expected = (
        b'Content-Type: message/rfc822\r\nContent-Disposition: attachment; filename="original.eml"\r\n'
        b"Content-Transfer-Encoding: 8bit\r\n\r\n" + ORIGINAL.replace(b"\n", b"\r\n")
    )
    assert data.endswith(f"--{boundary}\r\n".encode() + expected + f"\r\n--{boundary}--\r\n".encode())
    [body, original] = sent.iter_parts()
    assert body.get_content_type() == "multipart/alternative"
    assert plain_text(body).strip() == "New case"
    attached = original.get_content()
    assert attached["Message-ID"] == "<orig@kunde.example>"
    assert (
        attached.get_content().replace("\r\n", "\n")
        == "Hei, skrivaren på kontoret virker ikke.\n--===============0000000000000000001==\n"
    )


def test_the_boundary_is_never_a_line_of_the_original(monkeypatch):
    tokens = iter([1, 1, 2])  # the first choice is a line of ORIGINAL; so is the second
    monkeypatch.setattr(random, "randrange", lambda stop: next(tokens))
    sent = message_from_bytes(notification(ORIGINAL), policy=default)
    assert sent.get_boundary() == "===============0000000000000000002=="
    assert [p.get_content_type() for p in sent.iter_parts()] == ["multipart/alternative", "message/rfc822"]


class _Arguments(TypedDict):
    """compose's keywords that the comparison with email.mime varies."""

    case_number: str
    from_address: str
    from_name: str
    to: tuple[str, ...]
    subject: str
    body: Rendered
    in_reply_to: str
    references: tuple[str, ...]
    auto_submitted: str | None
    reply_to: str | None
    attach_original: bytes | None


def _by_email_mime(
    *, case_number, from_address, from_name, to, subject, body, in_reply_to, references, auto_submitted,
    reply_to, attach_original,
):  # fmt: skip
    """What compose wrote with email.mime's objects and compat32's generator, kept as the
    reference its own writing of the same structure is checked against. The original was
    already added by hand after the other parts (see test_the_original_is_attached_…)."""
    from email.charset import QP, Charset
    from email.mime.base import MIMEBase
    from email.mime.multipart import MIMEMultipart
    from email.mime.text import MIMEText
    from email.utils import formataddr

    import mailrouter.compose as module
    from mailrouter.parse import single_line

    utf8 = Charset("utf-8")
    utf8.body_encoding = QP
    # MIMEText takes a Charset as well as a name (set_payload's contract); typeshed says only str.
    message: MIMEBase = MIMEText(body.text, "plain", utf8)  # type: ignore[arg-type]
    if body.html is not None:
        html = MIMEText(body.html, "html", utf8)  # type: ignore[arg-type]
        message = MIMEMultipart("alternative", _subparts=[message, html], boundary=module._boundary())
    if attach_original is not None:
        mixed = module._boundary()
        message = MIMEMultipart("mixed", _subparts=[message], boundary=mixed)
    message["From"] = formataddr((single_line(from_name), from_address), charset="utf-8")
    message["To"] = ", ".join(to)
    if reply_to:
        message["Reply-To"] = formataddr((single_line(from_name), reply_to), charset="utf-8")
    message["Subject"] = module.encode_header("Subject", single_line(subject))
    # compose's own imports, read through the module because the tests monkeypatch them there.
    message["Date"] = module.formatdate(localtime=False, usegmt=True)  # type: ignore[attr-defined]
    message["Message-ID"] = module.make_msgid(idstring=case_number, domain="example.test")  # type: ignore[attr-defined]
    if in_reply_to:
        message["In-Reply-To"] = in_reply_to
        message["References"] = " ".join(dict.fromkeys([*references, in_reply_to]))
    if auto_submitted:
        message["Auto-Submitted"] = auto_submitted
        message["X-Auto-Response-Suppress"] = "All"
    message["X-Loop"] = from_address
    message["X-Mailrouter-Case"] = case_number
    data = message.as_bytes(policy=module._WIRE)
    if attach_original is None:
        return data
    closing = f"--{mixed}--\r\n".encode()
    original = module.original_part(attach_original)
    return data.removesuffix(closing) + f"--{mixed}\r\n".encode() + original + b"\r\n" + closing


def test_the_mime_structure_is_written_as_email_mime_writes_it(monkeypatch):
    """Text, text and HTML, and either with the original attached: byte for byte."""
    import mailrouter.compose as module

    monkeypatch.setattr(module, "make_msgid", lambda idstring, domain: f"<fixed.{idstring}@{domain}>")
    monkeypatch.setattr(module, "formatdate", lambda **kwargs: "Tue, 24 Nov 2026 10:00:00 GMT")
    chosen = {"boundaries": itertools.count()}  # the same boundaries for both, in the same order
    monkeypatch.setattr(module, "_boundary", lambda avoiding=b"": f"===={next(chosen['boundaries'])}==")
    rng = random.Random(5)
    words = [*WORDS, "=", "a=b", "  ", "\t", ".", "x" * 80, "€", "😀", "trailing ", "\r", "=?utf-8?q?x?="]

    def text(lines: int) -> str:
        return "\n".join(
            " ".join(rng.choice(words) for _ in range(rng.randrange(25))) for _ in range(rng.randrange(lines))
        ) + rng.choice(["", "\n", " "])

    originals = [None, b"From: a@b.example\r\nSubject: x\r\n\r\nhei\r\n.\r\n"]
    for _ in range(500):
        arguments = _Arguments(
            case_number="IT-1042",
            from_address="it-support@example.test",
            from_name=rng.choice(["IT Support", "IT-støtte Åse", "x" * 70]),
            to=tuple(
                rng.sample(["kari@kunde.example", "ola@x.example", "per@y.example"], rng.randrange(1, 3))
            ),
            subject=text(2)[:200],
            body=Rendered(text(12), rng.choice([None, f"<p>{text(6)}</p>"])),
            in_reply_to=rng.choice(["", "<a@kunde.example>"]),
            references=tuple(f"<r{k}@kunde.example>" for k in range(rng.randrange(15))),
            auto_submitted=rng.choice([None, "auto-replied"]),
            reply_to=rng.choice([None, "it-support+it-1042.abc@example.test"]),
            attach_original=rng.choice(originals),
        )
        chosen["boundaries"] = itertools.count()
        ours = compose(**arguments).data
        chosen["boundaries"] = itertools.count()
        assert ours == _by_email_mime(**arguments)
