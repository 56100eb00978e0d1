"""Mail built to hurt: markup that makes HTML conversion slow, and headers too big to store.

Parsing must stay linear in the size of the message, and hand on only what the database can index
and look up in one statement; whatever is cut is named in Inbound.defects."""

from __future__ import annotations

import pytest
from sqlmodel import Session, select

from mailrouter.models import Message
from mailrouter.parse import (
    MAX_ADDRESSES,
    MAX_HEADER_VALUE,
    MAX_ID_LENGTH,
    MAX_REFERENCES,
    MAX_SUBJECT,
    html_to_text,
    parse,
    parse_degraded,
)
from mailrouter.plan import Origin, OutcomeKind
from tests.hangguard import without_hanging
from tests.messages import make_mail

# Each builds about n characters of markup that html.parser (or lxml, or lexbor) reads in
# quadratic time: unclosed tags and quotes, deep nesting, a huge attribute list, misnested tags.
PATHOLOGICAL = {
    "tags that never close": lambda n: "<a " * (n // 3),
    "unclosed quoted values": lambda n: "<a b='" * (n // 6),
    "unclosed attributes": lambda n: "<a b=" * (n // 5),
    "deep nesting": lambda n: "<div><b><i>" * (n // 11) + "x",
    "a huge attribute list": lambda n: "<p " + " ".join(f"a{i}=v" for i in range(n // 7)) + ">x",
    "misnested formatting": lambda n: "<b><i></b></i>" * (n // 14),
    "lone angle brackets": lambda n: "a <" * (n // 3),
    "no whitespace": lambda n: "x" * n,
    "entities": lambda n: "&amp;&#233;&#x41;&bogus" * (n // 23),
}


@pytest.mark.parametrize("name", PATHOLOGICAL)
def test_html_to_text_does_not_hang_on_pathological_markup(name):
    """2 MB of each: html.parser, quadratic on those left open (12 s on 30 KB of unclosed tags),
    would take hours on them, and so would any conversion quadratic at a nanosecond a step."""
    assert isinstance(without_hanging(html_to_text, PATHOLOGICAL[name](2_000_000)), str)


def test_html_to_text_reads_markup_as_a_browser_would():
    assert html_to_text('<p>x<br/>y</p><a href="a>b">link</a> z') == "x\ny\nlink z"
    assert html_to_text("a &lt; b &amp; c<!-- hidden -->") == "a < b & c"
    assert html_to_text("<head><title>T</title><meta></head><body>Body<style>p{}</style></body>") == "Body"
    assert html_to_text("<script>if (a<b) x('</p>')</script>shown") == "shown"
    assert html_to_text("before<a b='never closed") == "before"  # as in a browser: rest is the tag


def html_mail(markup: str) -> bytes:
    return (
        b"From: a@b.example\r\nTo: it-support@example.test\r\nSubject: Nyhetsbrev\r\n"
        b"Message-ID: <html@b.example>\r\nContent-Type: text/html; charset=utf-8\r\n\r\n" + markup.encode()
    )


def test_only_the_first_html_to_text_chars_of_html_are_converted():
    inbound = parse(html_mail("<p>Hei</p>" + "<p>mer</p>" * 20_000), html_chars=1000)
    assert inbound.text.startswith("Hei\n\nmer") and inbound.text.count("mer") == 99
    assert "html cut: 200010 characters, the first 1000 turned into text" in inbound.defects
    assert len(inbound.html) == 200_010  # the HTML itself is kept whole for a person to read


def test_a_megabyte_of_unclosed_tags_parses_without_hanging():
    """With html.parser this took hours, in the one parse worker every mailbox shares."""
    inbound = without_hanging(parse, html_mail("<div " * 200_000))
    assert inbound.subject == "Nyhetsbrev" and inbound.text == ""


def references_mail(count: int) -> bytes:
    ids = " ".join(f"<ref{n}@kunde.example>" for n in range(count))
    return make_mail(headers={"References": ids, "In-Reply-To": f"<ref{count - 1}@kunde.example>"})


def test_a_huge_references_list_keeps_the_thread_root_and_the_nearest_ids():
    inbound = parse(references_mail(300_000))
    assert len(inbound.references) == MAX_REFERENCES
    assert inbound.references[0] == "<ref0@kunde.example>"  # the thread's root
    assert inbound.references[-1] == "<ref299999@kunde.example>"
    assert inbound.references[1] == f"<ref{300_000 - MAX_REFERENCES + 1}@kunde.example>"
    assert inbound.thread_ids[0] == "<ref299999@kunde.example>"
    assert f"references cut: 300000 ids, kept the first and the last {MAX_REFERENCES - 1}" in inbound.defects
    assert all(len(v) <= MAX_HEADER_VALUE for v in inbound.headers["references"])


def test_a_huge_references_list_registers_on_sqlite(intake):
    """It made SQLite fail with "too many SQL variables", taken for an outage and retried for ever."""
    outcome = intake.process(references_mail(300_000), Origin("it", 1, 1))
    assert outcome.kind == OutcomeKind.NEW_CASE
    with Session(intake.engine) as session:
        message = session.exec(select(Message).where(Message.message_id == "<m1@kunde.example>")).one()
    assert len(message.references) == MAX_REFERENCES


def test_an_overlong_message_id_is_replaced_by_a_stable_one_from_its_hash():
    long_id = "<" + "x" * 5000 + "@kunde.example>"
    first = parse(make_mail(message_id=long_id))
    again = parse(make_mail(message_id=long_id, subject="the same id, sent again"))
    reply = parse(
        make_mail(message_id="<r@kunde.example>", headers={"In-Reply-To": long_id, "References": long_id})
    )
    assert len(first.message_id) <= MAX_ID_LENGTH and first.message_id.endswith("@overlong-id.invalid>")
    assert first.message_id == again.message_id  # dedupe still finds it
    assert reply.in_reply_to == reply.references[0] == first.message_id  # and a reply still threads
    assert f"Message-ID over {MAX_ID_LENGTH} characters replaced by one made from its hash" in first.defects


def test_addresses_are_bounded_in_length_and_number():
    many = ", ".join(f"person{n}@kunde.example" for n in range(5000))
    overlong = "y" * 300 + "@kunde.example"
    inbound = parse(make_mail(to=f"{overlong}, it-support@example.test", headers={"Cc": many}))
    assert [a.address for a in inbound.to] == ["it-support@example.test"]
    assert len(inbound.cc) == MAX_ADDRESSES and inbound.cc[0].address == "person0@kunde.example"
    assert "to: an address over 254 characters dropped" in inbound.defects
    assert f"cc: addresses past the first {MAX_ADDRESSES} dropped" in inbound.defects


def test_subject_and_header_values_are_bounded():
    inbound = parse(make_mail(subject="S" * 20_000, headers={"X-Junk": "j" * 50_000}))
    assert inbound.subject == "S" * MAX_SUBJECT
    assert inbound.header("x-junk") == "j" * MAX_HEADER_VALUE
    assert any(d.startswith("header x-junk cut") for d in inbound.defects)


def test_a_degraded_reading_keeps_the_text_parts_or_only_the_headers_and_says_why():
    mail = make_mail(subject="Skrivaren", body="Hej, skrivaren fungerar inte.")
    text_only = parse_degraded(mail, "parsing took longer than 5 s")
    assert text_only.text == "Hej, skrivaren fungerar inte." and text_only.subject == "Skrivaren"
    assert text_only.degraded == "text parts only: parsing took longer than 5 s"
    headers_only = parse_degraded(mail, "parsing took longer than 5 s", headers_only=True)
    assert headers_only.text == "" and headers_only.message_id == "<m1@kunde.example>"
    assert headers_only.degraded == "headers only: parsing took longer than 5 s"
    assert parse(mail).degraded == ""
