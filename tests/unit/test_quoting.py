"""The quote cutter: what an agent's client appends below the answer never reaches a customer.

The replies are built the way each client writes them, around our real notification rendered
from the shipped templates, so the internal block they must lose is the one agents really get.
"""

from __future__ import annotations

import html
import textwrap
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import pytest

from mailrouter import quoting
from mailrouter.parse import html_to_text
from mailrouter.quoting import cut_quoted_history, strip_quoted_history
from mailrouter.templates import Templates
from tests.hangguard import without_hanging

ROOT = Path(__file__).resolve().parents[2]
SIGNED = "it-support+it-1001.6b1e8f0d2c9a4b7e0f1a@example.test"
SUBJECT = "[IT-1001] New case: Skrivaren på plan 3 fungerar inte"
ANSWER = (
    "Hi Kari,\n\nI have reset your password: log in again after 10:30.\nIt should work then.\n\n"
    "Best regards,\nAnna"
)
# Lines of the notification's internal block: none may reach the customer.
INTERNAL = {
    "en": (
        "other open cases from this organisation",
        "The customer's other open and recent cases",
        "IT-0999",
        "Salary slip for March is wrong",
        "#priority <low|normal|high|urgent>",
        "never from your own address",
        "Customer:",
        "##-",
    ),
    "no": (
        "andre åpne saker fra denne organisasjonen",
        "Kundens andre åpne og nylige saker",
        "IT-0999",
        "Salary slip for March is wrong",
        "#priority <low|normal|high|urgent>",
        "aldri\nfra din egen adresse",
        "Kunde:",
        "##-",
    ),
}


def notification(language: str = "en") -> str:
    """The real notification template, with another case and an organisation count in it."""
    case = SimpleNamespace(
        number="IT-1001",
        subject="Skrivaren på plan 3 fungerar inte",
        priority="normal",
        category="",
        assignee="",
        group="it-agents",
        status="new",
        tags=["printer"],
        satisfaction_score=None,
        satisfaction_comment="",
    )
    context = {
        "why": "New case",
        "case": case,
        "customer": SimpleNamespace(
            name="Kari Nordmann", address="kari@kunde.example", organisation="kunde.example"
        ),
        "department": SimpleNamespace(
            display_name="IT Support", address="it-support@example.test", group="it-agents"
        ),
        "message": SimpleNamespace(text="Skrivaren skriver inte ut.\nMvh Kari", attachments=[]),
        "other_cases": [
            SimpleNamespace(number="IT-0999", status="open", subject="Salary slip for March is wrong")
        ],
        "organisation_open_cases": 7,
        "organisation_open_cases_or_more": False,
    }
    return Templates(ROOT / "templates").render("it", "notify", (language,), context).text


def quoted(text: str, prefix: str = "> ") -> str:
    return "\n".join(f"{prefix}{line}".rstrip() for line in text.split("\n"))


def assert_internal_gone(answer: str, language: str = "en") -> None:
    for line in INTERNAL[language]:
        assert line not in answer, f"{line!r} reached the customer:\n{answer}"


@dataclass(frozen=True)
class Quoting:
    """How one language's clients write above the mail they quote."""

    original: str  # Outlook's "-----Original Message-----"
    fields: tuple[str, str, str, str]  # From, Sent, To, Subject
    sent: str
    gmail: str
    gmail_mobile: str
    apple: str
    thunderbird: str
    iphone: str
    samsung: str  # Samsung Email's separator
    date: str  # and its Date field


LANGUAGES = {
    "en": Quoting(
        "-----Original Message-----",
        ("From", "Sent", "To", "Subject"),
        "Tuesday, November 24, 2026 10:00 AM",
        "On Tue, Nov 24, 2026 at 10:00 AM IT Support <{a}> wrote:",
        "On Tue, 24 Nov 2026, 10:00 IT Support, <{a}> wrote:",
        "On 24 Nov 2026, at 10:00, IT Support <{a}> wrote:",
        "On 24/11/2026 10:00, IT Support wrote:",
        "Sent from my iPhone",
        "-------- Original message --------",
        "Date",
    ),
    "sv": Quoting(
        "-----Ursprungligt meddelande-----",
        ("Från", "Skickat", "Till", "Ämne"),
        "den 24 november 2026 10:00",
        "Den tis 24 nov. 2026 kl 10:00 skrev IT Support <{a}>:",
        "Den tis 24 nov. 2026 10:00IT Support <{a}> skrev:",
        "24 nov. 2026 kl. 10:00 skrev IT Support <{a}>:",
        "Den 2026-11-24 kl. 10:00, skrev IT Support:",
        "Skickat från min iPhone",
        "-------- Originalmeddelande --------",
        "Datum",
    ),
    "no": Quoting(
        "-----Opprinnelig melding-----",
        ("Fra", "Sendt", "Til", "Emne"),
        "tirsdag 24. november 2026 10:00",
        "tir. 24. nov. 2026 kl. 10:00 skrev IT Support <{a}>:",
        "tir. 24. nov. 2026, 10:00 skrev IT Support <{a}>:",
        "24. nov. 2026 kl. 10:00 skrev IT Support <{a}>:",
        "Den 24.11.2026 10:00, skrev IT Support:",
        "Sendt fra min iPhone",
        "-------- Opprinnelig melding --------",
        "Dato",
    ),
    "da": Quoting(
        "-----Oprindelig meddelelse-----",
        ("Fra", "Sendt", "Til", "Emne"),
        "24. november 2026 10:00",
        "tir. 24. nov. 2026 kl. 10.00 skrev IT Support <{a}>:",
        "tir. 24. nov. 2026 10.00 skrev IT Support <{a}>:",
        "Den 24. nov. 2026 kl. 10.00 skrev IT Support <{a}>:",
        "Den 24.11.2026 kl. 10.00 skrev IT Support:",
        "Sendt fra min iPhone",
        "-------- Original meddelelse --------",
        "Dato",
    ),
    "fi": Quoting(
        "-----Alkuperäinen viesti-----",
        ("Lähettäjä", "Lähetetty", "Vastaanottaja", "Aihe"),
        "tiistai 24. marraskuuta 2026 10.00",
        "ti 24. marrask. 2026 klo 10.00 IT Support (<{a}>) kirjoitti:",
        "ti 24.11.2026 klo 10.00 IT Support <{a}> kirjoitti:",
        "IT Support <{a}> kirjoitti 24.11.2026 kello 10.00:",
        "IT Support kirjoitti 24.11.2026 klo 10.00:",
        "Lähetetty iPhonesta",
        "-------- Alkuperäinen viesti --------",
        "Päivämäärä",
    ),
    "de": Quoting(
        "-----Ursprüngliche Nachricht-----",
        ("Von", "Gesendet", "An", "Betreff"),
        "Dienstag, 24. November 2026 10:00",
        "Am Di., 24. Nov. 2026 um 10:00 Uhr schrieb IT Support <{a}>:",
        "IT Support <{a}> schrieb am Di., 24. Nov. 2026, 10:00:",
        "Am 24.11.2026 um 10:00 schrieb IT Support <{a}>:",
        "Am 24.11.26 um 10:00 schrieb IT Support:",
        "Von meinem iPhone gesendet",
        "-------- Originalnachricht --------",
        "Datum",
    ),
    "nl": Quoting(
        "-----Oorspronkelijk bericht-----",
        ("Van", "Verzonden", "Aan", "Onderwerp"),
        "dinsdag 24 november 2026 10:00",
        "Op di 24 nov 2026 om 10:00 schreef IT Support <{a}>:",
        "Op di 24 nov. 2026 10:00 schreef IT Support <{a}>:",
        "Op 24 nov. 2026 om 10:00 heeft IT Support <{a}> het volgende geschreven:",
        "Op 24-11-2026 om 10:00 schreef IT Support:",
        "Verstuurd vanaf mijn iPhone",
        "-------- Oorspronkelijk bericht --------",
        "Datum",
    ),
    "fr": Quoting(
        "-----Message d'origine-----",
        ("De", "Envoyé", "À", "Objet"),
        "mardi 24 novembre 2026 10:00",
        "Le mar. 24 nov. 2026 à 10:00, IT Support <{a}> a écrit\u202f:",
        "Le mar. 24 nov. 2026, 10:00, IT Support <{a}> a écrit :",
        "Le 24 nov. 2026 à 10:00, IT Support <{a}> a écrit :",
        "Le 24/11/2026 à 10:00, IT Support a écrit :",
        "Envoyé de mon iPhone",
        "-------- Message d'origine --------",
        "Date",
    ),
}


def _header_block(q: Quoting, fields: tuple[str, str, str, str], bold: bool = False) -> str:
    sep = " :" if q is LANGUAGES["fr"] else ":"  # French Outlook writes "De :"
    values = (f"IT Support <{SIGNED}>", q.sent, "agent1@example.test", SUBJECT)
    star = "*" if bold else ""
    return "\n".join(f"{star}{name}{sep}{star} {value}" for name, value in zip(fields, values, strict=True))


def reply(client: str, q: Quoting, mail: str) -> tuple[str, str]:
    """The reply body the client sends, and what the customer must get of it."""
    attribution = {
        k: getattr(q, k).format(a=SIGNED) for k in ("gmail", "gmail_mobile", "apple", "thunderbird")
    }
    if client == "outlook-desktop":
        body = f"{ANSWER}\n\n{q.original}\n{_header_block(q, q.fields)}\n\n{mail}"
    elif client == "outlook-web":
        body = f"{ANSWER}\n\n________________________________\n{_header_block(q, q.fields)}\n\n{mail}"
    elif client == "outlook-mobile":
        body = (
            f"{ANSWER}\n\nGet Outlook for iOS<https://aka.ms/o0ukef>\n"
            f"________________________________\n{_header_block(q, q.fields)}\n\n{mail}"
        )
        return body, f"{ANSWER}\n\nGet Outlook for iOS<https://aka.ms/o0ukef>"
    elif client == "outlook-bold":  # Gmail's text of an Outlook HTML reply it answers
        body = f"{ANSWER}\n\n{_header_block(q, q.fields, bold=True)}\n\n{quoted(mail)}"
    elif client == "gmail-web":  # Gmail hard-wraps a long attribution line
        wrapped = "\n".join(textwrap.wrap(attribution["gmail"], 76, break_long_words=False))
        body = f"{ANSWER}\n\n{wrapped}\n\n{quoted(mail)}"
    elif client == "gmail-mobile":
        body = f"{ANSWER}\n\n{attribution['gmail_mobile']}\n\n{quoted(mail)}"
    elif client == "apple-mail":
        body = f"{ANSWER}\n\n> {attribution['apple']}\n>\n{quoted(mail)}"
    elif client == "iphone":
        body = f"{ANSWER}\n\n{q.iphone}\n\n> {attribution['apple']}\n>\n{quoted(mail)}"
        return body, f"{ANSWER}\n\n{q.iphone}"
    elif client == "android-samsung":
        fields = (q.fields[0], q.date, q.fields[2], q.fields[3])
        body = f"{ANSWER}\n\n{q.samsung}\n{_header_block(q, fields)}\n\n{mail}"
    elif client == "thunderbird":
        body = f"{ANSWER}\n\n{attribution['thunderbird']}\n{quoted(mail)}"
    else:
        raise AssertionError(client)
    return body, ANSWER


CLIENTS = (
    "outlook-desktop",
    "outlook-web",
    "outlook-mobile",
    "outlook-bold",
    "gmail-web",
    "gmail-mobile",
    "apple-mail",
    "iphone",
    "android-samsung",
    "thunderbird",
)


@pytest.mark.parametrize("language", LANGUAGES)
@pytest.mark.parametrize("client", CLIENTS)
def test_each_clients_quote_of_our_notification_is_cut_at_the_marker(client, language):
    body, expected = reply(client, LANGUAGES[language], notification())
    cut = cut_quoted_history(body)
    assert cut.answer == expected
    assert cut.reason.startswith("at our marker")
    assert_internal_gone(cut.answer)


@pytest.mark.parametrize("language", LANGUAGES)
@pytest.mark.parametrize("client", CLIENTS)
def test_each_clients_quote_header_is_found_without_the_marker(client, language):
    """Mail without our marker (a forward, a reminder from before it, a client that dropped it)
    is cut at the client's own quote header, in every language's form."""
    mail = notification().replace(quoting.MARKER, "")
    body, expected = reply(client, LANGUAGES[language], mail)
    answer = strip_quoted_history(body)
    assert answer == expected
    assert_internal_gone(answer)


def test_the_norwegian_notification_is_cut_at_its_translated_marker():
    mail = notification("no")
    assert quoting.MARKER not in mail
    body, expected = reply("outlook-desktop", LANGUAGES["no"], mail)
    cut = cut_quoted_history(body)
    assert cut.answer == expected and cut.reason.startswith("at our marker")
    assert_internal_gone(cut.answer, "no")


MARKER_QUOTED = {
    "gt-space": lambda m: quoted(m, "> "),
    "gt-gt": lambda m: quoted(m, ">> "),
    "gt-space-gt": lambda m: quoted(m, "> > "),
    "gt-no-space": lambda m: quoted(m, ">"),
    "indented": lambda m: quoted(m, "    "),
    "tab": lambda m: quoted(m, "\t"),
    "bar": lambda m: quoted(m, "| "),
    "no-prefix": lambda m: m,
    "wrapped": lambda m: quoted(m, "> ").replace("answer above", "answer\n> above"),
}


@pytest.mark.parametrize("how", MARKER_QUOTED)
def test_the_marker_is_found_however_it_was_quoted(how):
    """Under a header no table knows (Polish Gmail): only the marker shows where the quote is."""
    mail = MARKER_QUOTED[how](notification())
    body = f"{ANSWER}\n\nW dniu wt., 24.11.2026 o 10:00 IT Support <{SIGNED}>\nnapisał(a):\n\n{mail}"
    cut = cut_quoted_history(body)
    assert cut.answer == ANSWER and cut.reason == "at our marker"
    assert_internal_gone(cut.answer)


def test_an_unknown_languages_outlook_header_block_above_the_marker_goes_too():
    block = (
        f"Od: IT Support <{SIGNED}>\nWysłane: wtorek, 24 listopada 2026 10:00\nDo: agent1\nTemat: {SUBJECT}"
    )
    body = f"{ANSWER}\n\n________________________________\n{block}\n\n{notification()}"
    assert strip_quoted_history(body) == ANSWER


def _outlook_html(language: str) -> tuple[str, str]:
    q = LANGUAGES[language]
    header = "<br>\n".join(
        f"<b>{name}:</b> {html.escape(value)}"
        for name, value in zip(
            q.fields, (f"IT Support <{SIGNED}>", q.sent, "agent1@example.test", SUBJECT), strict=True
        )
    )
    answer = "".join(
        f'<p class="MsoNormal">{html.escape(line)}<o:p></o:p></p>\n' for line in ANSWER.split("\n")
    )
    mail = "<br>\n".join(html.escape(line) for line in notification().split("\n"))
    markup = (
        '<html><head><style>p.MsoNormal {margin:0cm}</style></head><body lang="DE">'
        f'<div class="WordSection1">{answer}<p class="MsoNormal"><o:p>&nbsp;</o:p></p>'
        '<div style="border:none;border-top:solid #E1E1E1 1.0pt;padding:3.0pt 0cm 0cm 0cm">'
        f'<p class="MsoNormal">{header}<o:p></o:p></p></div>'
        f'<p class="MsoNormal"><o:p>&nbsp;</o:p></p><p class="MsoNormal">{mail}</p></div></body></html>'
    )
    return markup, html_to_text(answer)


def _gmail_html() -> tuple[str, str]:
    attribution = html.escape(LANGUAGES["fi"].gmail.format(a=SIGNED))
    mail = "<br>\n".join(html.escape(line) for line in notification().split("\n"))
    answer = "<br>".join(html.escape(line) for line in ANSWER.split("\n"))
    markup = (
        f'<div dir="ltr">{answer}</div><br><div class="gmail_quote"><div dir="ltr" class="gmail_attr">'
        f'{attribution}<br></div><blockquote class="gmail_quote" style="margin:0px 0px 0px 0.8ex">'
        f"{mail}</blockquote></div>"
    )
    return markup, html_to_text(f'<div dir="ltr">{answer}</div>')


@pytest.mark.parametrize("client", ["outlook-de", "gmail-fi"])
def test_an_html_only_reply_turned_into_text_is_cut_at_the_marker(client):
    markup, expected = _outlook_html("de") if client == "outlook-de" else _gmail_html()
    text = html_to_text(markup)
    assert quoting.MARKER in text
    cut = cut_quoted_history(text)
    assert cut.answer == expected and "Anna" in expected
    assert cut.reason.startswith("at our marker")
    assert_internal_gone(cut.answer)


@pytest.mark.parametrize(
    "quote",
    [
        "On Tue, 24 Nov 2026 at 10:00, Kari <kari@kunde.example> wrote:\n> old",
        "Den tis 24 nov. 2026 kl 10:00 skrev Kari <kari@kunde.example>:\n> gammalt",
        "24. nov. 2026 kl. 10:00 skrev Kari Nordmann <kari@kunde.example>:\n> gammelt",
        "-----Original Message-----\nFrom: Kari\nSent: Tuesday",
        "-----Opprinnelig melding-----\nFra: Kari",
        "From: IT Support <it-support@example.test>\nSent: 24 November 2026 10:00\nTo: agent1",
        "Från: IT Support <it-support@example.test>\nSkickat: den 24 november 2026 10:00",
        "On Tue, Nov 24, 2026 at 10:00 AM IT Support <\nit-support+it-1001.abc@example.test> wrote:\n> old",
        "Kari wrote:\n> old\n> older",
        "---------- Forwarded message ---------\nFrom: Kari <kari@kunde.example>\nDate: Tue",
        "Anfang der weitergeleiteten Nachricht:\n\nVon: Kari",
        "> just a quoted tail\n> more",
    ],
)
def test_quoted_history_is_cut(quote):
    assert strip_quoted_history(f"The answer.\nSecond line.\n\n{quote}\n") == "The answer.\nSecond line."


@pytest.mark.parametrize(
    "text",
    [
        "Jeg skrev til leverandøren i går:\nDe svarer i morgen.",
        "Jeg skrev til leverandøren 24. november:\nDe svarer i morgen.",
        "Am Montag schrieb ich dem Hersteller:\nEr antwortet morgen.",
        "The vendor wrote:\n> we ship on Monday\nSo expect it on Tuesday.",
        "Thanks, Anna\nSent from my iPhone",
        "Call me at 10:00.\nBest regards,\nAnna",
    ],
)
def test_the_agents_own_text_is_kept(text):
    assert strip_quoted_history(text) == text


def test_a_line_above_the_attribution_stays_with_the_answer():
    """Gmail's wrap is joined only from a long line; a short one above is the agent's."""
    body = f"Thanks, Anna\nOn Tue, Nov 24, 2026 at 10:00 AM IT Support <{SIGNED}> wrote:\n> old"
    assert strip_quoted_history(body) == "Thanks, Anna"


AGENT_FACING = sorted(
    p for p in (ROOT / "templates").rglob("*.j2") if p.name.startswith(("notify.", "remind."))
)


@pytest.mark.parametrize("path", AGENT_FACING, ids=lambda p: p.relative_to(ROOT / "templates").as_posix())
def test_every_agent_facing_template_starts_with_the_marker(path):
    first = path.read_text().split("\n", 1)[0]
    assert quoting.cut_quoted_history(f"answer\n\n{first}\ninternal").answer == "answer"
    assert first.startswith("##-") and first.endswith("-##")


def test_the_shipped_english_templates_carry_the_marker_constant():
    assert all(quoting.MARKER in p.read_text() for p in AGENT_FACING if ".en." in p.name)


# Built in the test, not at collection: tens of megabytes.
HOSTILE = {
    "long-line": lambda: "Den 24.11.2026 " + " skrev x" * 500_000,  # the patterns' backtracking
    "many-short-attributions": lambda: "\n".join(["Kari wrote:"] * 500_000),  # none above a quote
    "many-joinable-lines": lambda: "\n".join(
        ["On 24 Nov 2026 at 10:00 a line long enough to join with the next:"] * 300_000
    ),
    "marker-frames": lambda: "##-" * 3_000_000,
}


@pytest.mark.parametrize("name", HOSTILE)
def test_hostile_text_is_kept_whole_without_hanging(name):
    """A customer's text is quoted back in the agent's reply: megabytes of it must not stall the
    mailbox. The cutter before its bounds was quadratic on the first three: at this size it would
    run for hours on the first and for a quarter of an hour or more on each of the next two."""
    text = HOSTILE[name]()
    cut = without_hanging(cut_quoted_history, text)
    assert cut.reason == "no quoted history" and cut.answer == text
