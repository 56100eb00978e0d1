"""imap.py's answer parsers, on the shapes aioimaplib really hands over (seen against Dovecot)."""

from datetime import UTC, date, datetime, timedelta, timezone

from mailrouter.imap import (
    Selected,
    parse_answered,
    parse_fetch,
    parse_internaldates,
    parse_search,
    parse_select,
    parse_sizes,
    quote,
    search_date,
)


def test_parse_search_as_aioimaplib_delivers_it():
    assert parse_search([b"4 5 17", b"Search completed (0.001 + 0.000 secs)."]) == [4, 5, 17]
    assert parse_search([b"", b"Search completed (0.001 + 0.000 secs)."]) == []
    assert parse_search([b"SEARCH 2 3", b"done"]) == [2, 3]


def test_parse_fetch_pairs_uids_with_literals():
    lines: list[bytes | bytearray] = [
        b"1 FETCH (UID 7 BODY[] {5}",
        bytearray(b"hello"),
        b")",
        b"2 FETCH (BODY[] {3}",
        bytearray(b"abc"),
        b" UID 9)",
        b"Fetch completed (0.001 + 0.000 secs).",
    ]
    assert parse_fetch(lines) == [(7, b"hello"), (9, b"abc")]


def test_parse_fetch_ignores_a_literal_line_that_is_part_of_a_message():
    body = bytearray(b"Subject: 1 FETCH (UID 3 BODY[] {2}\r\n\r\nx")
    lines: list[bytes | bytearray] = [
        b"1 FETCH (UID 7 BODY[] {%d}" % len(body),
        body,
        b")",
        b"Fetch completed.",
    ]
    assert parse_fetch(lines) == [(7, bytes(body))]


def test_quote_mailbox_names():
    assert quote("INBOX") == '"INBOX"'
    assert quote('Saker "ferdig"') == r'"Saker \"ferdig\""'
    assert quote("a\\b") == r'"a\\b"'


def test_parse_sizes_reads_rfc822_size_in_any_order():
    lines: list[bytes | bytearray] = [
        b"1 FETCH (UID 7 RFC822.SIZE 1200)",
        b"2 FETCH (RFC822.SIZE 52428801 UID 9)",
        b"Fetch completed (0.001 + 0.000 secs).",
    ]
    assert parse_sizes(lines) == {7: 1200, 9: 52428801}


def test_parse_select_reads_uidvalidity_keywords_and_read_only():
    lines = [
        b"FLAGS (\\Answered \\Seen $Registered)",
        b"OK [PERMANENTFLAGS (\\Seen \\Deleted \\*)] Flags permitted.",
        b"OK [UIDVALIDITY 1700000001] UIDs valid",
        b"[READ-ONLY] Select completed.",
    ]
    assert parse_select(lines) == Selected(1700000001, keywords_allowed=True, read_only=True)
    assert parse_select([b"OK [PERMANENTFLAGS (\\Seen)] x", b"OK [UIDVALIDITY 5] x", b"done"]) == Selected(
        5, False
    )
    assert parse_select([b"Select completed."]) is None


def test_parse_select_reads_how_many_messages_and_the_next_uid():
    lines = [
        b"3 EXISTS",
        b"0 RECENT",
        b"OK [UIDVALIDITY 9] x",
        b"OK [UIDNEXT 41] Predicted next UID",
        b"done",
    ]
    assert parse_select(lines) == Selected(9, False, exists=3, uidnext=41)


def test_parse_internaldates_with_their_zones():
    lines: list[bytes | bytearray] = [
        b'1 FETCH (UID 7 RFC822.SIZE 1200 INTERNALDATE "17-Jul-1996 02:44:25 -0700")',
        b'2 FETCH (INTERNALDATE " 1-Nov-2026 10:00:00 +0100" UID 9)',
        b'3 FETCH (UID 11 INTERNALDATE "31-Feb-2026 10:00:00 +0000")',  # no such day: unknown
        b"Fetch completed.",
    ]
    dates = parse_internaldates(lines)
    assert dates == {
        7: datetime(1996, 7, 17, 2, 44, 25, tzinfo=timezone(-timedelta(hours=7))),
        9: datetime(2026, 11, 1, 9, 0, tzinfo=UTC),
    }


def test_search_dates_are_english_whatever_the_locale():
    assert search_date(date(2026, 11, 1)) == "1-Nov-2026"


def test_parse_answered_lists_every_uid_with_a_fetch_line_even_without_a_size():
    lines: list[bytes | bytearray] = [
        b"1 FETCH (UID 7 RFC822.SIZE 1200)",
        b'2 FETCH (UID 9 INTERNALDATE "1-Nov-2026 10:00:00 +0000")',
        b"done",
    ]
    assert parse_answered(lines) == [7, 9]
    assert parse_sizes(lines) == {7: 1200}
