"""imap.py's answer parsers, on the shapes aioimaplib really hands over (seen against Dovecot)."""

from mailrouter.imap import Selected, parse_fetch, parse_search, parse_select, parse_sizes, quote


def test_parse_search_as_aioimaplib_delivers_it():
    assert parse_search([b"4 5 17", b"Search completed (0.001 + 0.000 secs)."]) == [4, 5, 17]
    assert parse_search([b"", b"Search completed (0.001 + 0.000 secs)."]) == []
    assert parse_search([b"SEARCH 2 3", b"done"]) == [2, 3]


def test_parse_fetch_pairs_uids_with_literals():
    lines = [
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
    lines = [b"1 FETCH (UID 7 BODY[] {%d}" % len(body), body, b")", b"Fetch completed."]
    assert parse_fetch(lines) == [(7, bytes(body))]


def test_quote_mailbox_names():
    assert quote("INBOX") == '"INBOX"'
    assert quote('Saker "ferdig"') == r'"Saker \"ferdig\""'
    assert quote("a\\b") == r'"a\\b"'


def test_parse_sizes_reads_rfc822_size_in_any_order():
    lines = [
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
