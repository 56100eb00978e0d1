import pytest

from mailrouter.errors import ParseError
from mailrouter.parse import MAX_SUBJECT, Address, html_to_text, parse
from tests.messages import make_mail


def test_decodes_nordic_subject_and_body():
    raw = make_mail(subject="Skrivaren på plan 3 fungerar inte – æøå ÆØÅ", body="Hej! Det är trasigt.")
    inbound = parse(raw)
    assert inbound.subject == "Skrivaren på plan 3 fungerar inte – æøå ÆØÅ"
    assert "Det är trasigt." in inbound.text
    assert inbound.sender is not None and inbound.sender.address == "kari@kunde.example"
    assert inbound.sender.name == "Kari Nordmann"
    assert inbound.message_id == "<m1@kunde.example>"


def test_threading_headers_nearest_first():
    raw = make_mail(headers={"In-Reply-To": "<c@x>", "References": "<a@x> <b@x> <c@x>"})
    inbound = parse(raw)
    assert inbound.thread_ids == ("<c@x>", "<b@x>", "<a@x>")


def test_header_injection_is_folded_away():
    raw = (
        b"From: a@b.example\r\nTo: it-support@example.test\r\n"
        b"Subject: =?utf-8?q?hello=0D=0ABcc:_victim@evil.example?=\r\n\r\nbody\r\n"
    )
    inbound = parse(raw)
    assert "\n" not in inbound.subject and "\r" not in inbound.subject
    assert inbound.subject == "hello Bcc: victim@evil.example"


def test_html_only_mail_gets_readable_text():
    raw = (
        b"From: a@b.example\r\nSubject: x\r\nContent-Type: text/html; charset=utf-8\r\n\r\n"
        b"<html><head><style>p{}</style></head><body><p>Hei</p><p>Skjermen er &oslash;delagt</p>"
        b"<script>alert(1)</script></body></html>\r\n"
    )
    assert parse(raw).text == "Hei\n\nSkjermen er ødelagt"


def test_html_to_text_drops_scripts():
    assert html_to_text("<div>a<script>x</script></div><br>b") == "a\n\nb"


def test_outlook_msg_is_refused_with_reason():
    with pytest.raises(ParseError, match=r"Outlook \.msg"):
        parse(b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + b"\0" * 100)


def test_bytes_without_headers_are_refused():
    with pytest.raises(ParseError, match="not an RFC 822 message"):
        parse(b"just some text\nwith lines\n")


def test_attachment_metadata():
    from email.message import EmailMessage

    message = EmailMessage()
    message["From"] = "a@b.example"
    message["Subject"] = "attached"
    message.set_content("see attachment")
    message.add_attachment(b"%PDF-1.4 data", maintype="application", subtype="pdf", filename="Lønn mars.pdf")
    inbound = parse(message.as_bytes())
    [attachment] = inbound.attachments
    assert attachment.filename == "Lønn mars.pdf"
    assert attachment.size == len(b"%PDF-1.4 data")
    assert attachment.content_type == "application/pdf"


# --- encodings and broken MIME: one hand-made raw message per case --------------------------------


def multipart(*parts: bytes, headers: bytes = b"From: a@b.example\r\nSubject: x\r\n") -> bytes:
    body = b"".join(b"--b\r\n" + part + b"\r\n" for part in parts)
    return (
        headers
        + b"MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n"
        + body
        + b"--b--\r\n"
    )


def test_rfc2047_encoded_words_in_subject_and_name():
    raw = (
        b"From: =?iso-8859-1?q?J=F8rgen_S=E6ther?= <j@b.example>\r\n"
        b"Subject: =?utf-8?b?U2tyaXZhcmVu?= =?utf-8?q?_p=C3=A5_plan_3?=\r\n\r\nx\r\n"
    )
    inbound = parse(raw)
    assert inbound.subject == "Skrivaren på plan 3"
    assert inbound.sender is not None and inbound.sender.name == "Jørgen Sæther"


def test_encoded_name_with_comma_stays_one_address():
    raw = b"From: =?utf-8?q?Nordmann=2C_Kari?= <kari@b.example>\r\nSubject: x\r\n\r\nx\r\n"
    inbound = parse(raw)
    assert inbound.sender == Address("kari@b.example", "Nordmann, Kari")


def test_address_used_as_display_name_is_not_the_sender():
    # The mailbox is the angle-addr; answering the display "name" would answer someone else.
    raw = b"From: boss@bank.example <phisher@evil.example>\r\nSubject: x\r\n\r\nx\r\n"
    inbound = parse(raw)
    assert inbound.sender == Address("phisher@evil.example", "boss@bank.example")


def test_rfc2231_filename():
    raw = multipart(
        b"Content-Type: text/plain\r\n\r\nsee attached",
        b"Content-Type: application/pdf\r\nContent-Disposition: attachment; "
        b"filename*=utf-8''L%C3%B8nn%20mars.pdf\r\nContent-Transfer-Encoding: base64\r\n\r\nJVBERg==",
    )
    [attachment] = parse(raw).attachments
    assert attachment.filename == "Lønn mars.pdf" and attachment.size == 4


def test_windows_1252_labelled_iso_8859_1():
    raw = (
        b"From: a@b.example\r\nSubject: x\r\nContent-Type: text/plain; charset=iso-8859-1\r\n\r\n"
        b"\x93Skjermen\x94 koster \x80 50 \x96 caf\xe9\r\n"
    )
    assert parse(raw).text == "“Skjermen” koster € 50 – café"


def test_utf8_labelled_ascii():
    raw = b"From: a@b.example\r\nSubject: x\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n"
    raw += "blåbær".encode()
    assert parse(raw).text == "blåbær"


@pytest.mark.parametrize(("body", "text"), [(b"bl\xc3\xa5b\xc3\xa6r", "blåbær"), (b"bl\xe5b\xe6r", "blåbær")])
def test_unknown_charset_falls_back_to_utf8_then_windows_1252(body, text):
    raw = b"From: a@b.example\r\nSubject: x\r\nContent-Type: text/plain; charset=x-no-such\r\n\r\n" + body
    assert parse(raw).text == text


def test_gb2312_label_is_read_as_its_superset():
    body = "我们看看这个".encode("gb18030")
    raw = b"From: a@b.example\r\nSubject: x\r\nContent-Type: text/plain; charset=gb2312\r\n\r\n" + body
    assert parse(raw).text == "我们看看这个"


@pytest.mark.parametrize("encoding", ["utf-8", "cp1252"])
def test_raw_8bit_headers(encoding):
    raw = "From: Øystein Ærø <o@b.example>\r\nSubject: Vannlekkasje æøå\r\n\r\nhei\r\n".encode(encoding)
    inbound = parse(raw)
    assert inbound.subject == "Vannlekkasje æøå"
    assert inbound.sender == Address("o@b.example", "Øystein Ærø")


def test_missing_message_id_date_and_from():
    inbound = parse(b"Subject: only a subject\r\n\r\nbody\r\n")
    assert inbound.sender is None and inbound.message_id == "" and inbound.text == "body"


def test_tnef_winmail_dat_is_kept_as_an_attachment():
    raw = multipart(
        b"Content-Type: text/plain\r\n\r\nhi",
        b'Content-Type: application/ms-tnef; name="winmail.dat"\r\n'
        b'Content-Disposition: attachment; filename="winmail.dat"\r\n'
        b"Content-Transfer-Encoding: base64\r\n\r\neJ8+IgAAAA==",
    )
    [attachment] = parse(raw).attachments
    assert (attachment.filename, attachment.content_type, attachment.size) == (
        "winmail.dat",
        "application/ms-tnef",
        7,
    )


def test_nested_message_rfc822_is_readable():
    raw = multipart(
        b"Content-Type: text/plain\r\n\r\nsee the forwarded mail",
        b"Content-Type: message/rfc822\r\n\r\nFrom: c@d.example\r\nSubject: inner\r\n"
        b"Message-ID: <inner@d.example>\r\n\r\nthe inner body",
    )
    inbound = parse(raw)
    assert inbound.subject == "x" and inbound.sender is not None and inbound.sender.address == "a@b.example"
    assert "see the forwarded mail" in inbound.text and "the inner body" in inbound.text


def test_html_only_mail_is_data_never_markup():
    raw = (
        b"From: a@b.example\r\nSubject: x\r\nContent-Type: text/html; charset=utf-8\r\n\r\n"
        b'<p onclick="steal()">Hei <b>du</b></p><img src=x onerror=alert(1)><script>evil()</script>'
    )
    inbound = parse(raw)
    assert inbound.text == "Hei du"
    assert "<script>" in inbound.html  # kept as data for an agent's eyes, never rendered by us


def test_very_long_lines():
    raw = b"From: a@b.example\r\nSubject: " + b"S" * 5000 + b"\r\n\r\n" + b"A" * 500_000 + b"\r\n"
    inbound = parse(raw)
    assert len(inbound.text) == 500_000 and inbound.subject == "S" * MAX_SUBJECT  # bounded, and said so
    assert inbound.defects == (f"subject cut: 5000 characters, kept {MAX_SUBJECT}",)


def test_nul_bytes_never_reach_the_record():
    raw = b"From: a@b.example\r\nSubject: nu\x00ll\r\nContent-Type: text/html\r\n\r\nbo\x00dy<p>\x00</p>\r\n"
    inbound = parse(raw)
    assert "\x00" not in inbound.subject + inbound.text + inbound.html


@pytest.mark.parametrize(
    ("name", "safe"),
    [
        (b"../../etc/passwd", "passwd"),
        (b"C:\\\\Windows\\\\evil.exe", "evil.exe"),
        (b".bashrc", "bashrc"),
        (b"a\x01b|c?.txt", "a_b_c_.txt"),
        (b"..", "attachment"),
    ],
)
def test_attachment_names_can_never_be_paths(name, safe):
    raw = multipart(
        b"Content-Type: text/plain\r\n\r\nhi",
        b'Content-Type: application/octet-stream\r\nContent-Disposition: attachment; filename="'
        + name
        + b'"\r\n\r\nx',
    )
    [attachment] = parse(raw).attachments
    assert attachment.filename == safe


def test_dsn_names_the_returned_message():
    raw = (
        b"From: MAILER-DAEMON@mx.example\r\nSubject: Undelivered\r\nMessage-ID: <dsn@mx.example>\r\n"
        b"Content-Type: multipart/report; report-type=delivery-status; boundary=b\r\n\r\n"
        b"--b\r\nContent-Type: text/plain\r\n\r\nfailed\r\n"
        b"--b\r\nContent-Type: message/delivery-status\r\n\r\nStatus: 5.1.1\r\n"
        b"--b\r\nContent-Type: text/rfc822-headers\r\n\r\nFrom: x@y\r\nMessage-ID: <ours@example.test>\r\n"
        b"--b--\r\n"
    )
    assert parse(raw).quoted_message_ids == ("<ours@example.test>",)


def test_message_id_quoted_in_a_plain_bounce():
    raw = (
        b"From: postmaster@mx.example\r\nSubject: Delivery failure\r\n\r\n"
        b"Your message could not be delivered.\r\n  Message-ID: <ours@example.test>\r\n"
    )
    assert parse(raw).quoted_message_ids == ("<ours@example.test>",)


@pytest.mark.parametrize(
    "subject",
    [
        b"=?UTF-8?B?VGVzdG92w6Fjw60gW1haWw=?=",  # base64 that does not decode
        b"=?ut\xb8-8?B?VGVzdA==?=",  # a mangled charset name
        b"=?utf\x00-8?q?Test?=",  # a NUL inside the charset name
        b"=?x-no-such?q?Test?=",  # a charset nobody has
    ],
)
def test_broken_encoded_words_never_raise(subject):
    inbound = parse(b"From: a@b.example\r\nSubject: " + subject + b"\r\n\r\nbody\r\n")
    assert inbound.text == "body" and "\x00" not in inbound.subject


def test_parts_under_another_boundary_than_declared_are_recovered():
    raw = (
        b"From: a@b.example\r\nSubject: x\r\nMIME-Version: 1.0\r\n"
        b'Content-Type: multipart/alternative; boundary="declared"\r\n\r\n'
        b"--actual\r\nContent-Type: text/html\r\n\r\n<p>Ahorre dinero</p>\r\n--actual--\r\n"
    )
    assert parse(raw).text == "Ahorre dinero"
