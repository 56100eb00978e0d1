"""Where an agent's answer ends and the mail their client quoted below it begins.

What a client appends to an answer is the mail being answered, and ours carry internal text (the
customer's other cases, the organisation's case count, the command help) that must never reach a
customer. So every mail we send agents starts with MARKER, and the cut is made there first —
whatever the client did to it: a `> ` prefix at any depth, indentation, Outlook's unprefixed
quote, HTML turned into text. Mail without the marker (a forward, a client that dropped it) is
cut at the first quote header a client writes, from a table per language, or at the quoted lines
at its end. The header a client puts just above a quote goes with it; everything above the cut
stays as the agent wrote it ("Sent from my iPhone" included: that is the agent's).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

MARKER = "##- Write your answer above this line -##"
# Templates may translate the words between the frames; the cut looks only for "##-" … "-##",
# anywhere on a line, and across one line break should a client have wrapped it.
_MARKER = re.compile(r"##-[^\n#]{1,80}?(?:\n[ \t>|]*[^\n#]{0,80}?)?-##")


@dataclass(frozen=True)
class QuoteLanguage:
    """How the mail clients quote in one language.

    `attributions` are regexes for the line a client writes above a quote ("On … wrote:"),
    matched whole after a wrap is joined; a match counts only if it holds a digit or an address
    (a date, a time, an e-mail address), so a sentence of the agent's never does. `wrote` are
    the verbs, for any client's line that names an address, and for the short "Kari wrote:"
    that counts only when quoted lines follow. `header_from` and `header_fields` are the field
    names of Outlook's header block; `separators` the "-----Original Message-----" and
    forwarding lines (those ending in a colon stand alone, the others between dashes)."""

    code: str
    attributions: tuple[str, ...]
    wrote: tuple[str, ...]
    header_from: tuple[str, ...]
    header_fields: tuple[str, ...]
    separators: tuple[str, ...]


_WEEKDAY = r"(?:[^\W\d]{2,10}\.?,?\s+)?"  # Tue, / tis / tir. / Di., / ti / mar.
_DATE = (
    r"(?:\d{1,2}\.?\s*[^\W\d]{3,}\.?,?\s+\d{4}"  # 24 Nov 2026 / 24. nov. 2026 / 24. marrask. 2026
    r"|[^\W\d]{3,}\.?\s+\d{1,2},?\s+\d{4}"  # Nov 24, 2026
    r"|\d{1,4}[./-]\d{1,2}[./-]\d{1,4})"  # 24.11.2026 / 2026-11-24 / 24/11/26
)

LANGUAGES = (
    QuoteLanguage(
        "en",
        (rf"On\s+{_WEEKDAY}{_DATE}.*\swrote\s*:",),
        ("wrote",),
        ("From",),
        ("Sent", "Date", "To", "Cc", "Subject"),
        ("Original Message", "Forwarded message", "Begin forwarded message:"),
    ),
    QuoteLanguage(
        "sv",
        (rf"(?:Den\s+)?{_WEEKDAY}{_DATE}.*\sskrev\b.*:",),
        ("skrev",),
        ("Från",),
        ("Skickat", "Datum", "Till", "Kopia", "Ämne"),
        (
            "Ursprungligt meddelande",
            "Originalmeddelande",
            "Vidarebefordrat meddelande",
            "Vidarebefordrat brev:",
        ),
    ),
    QuoteLanguage(
        "no",
        (rf"(?:Den\s+)?{_WEEKDAY}{_DATE}.*\sskrev\b.*:",),
        ("skrev",),
        ("Fra",),
        ("Sendt", "Dato", "Til", "Kopi", "Emne"),
        ("Opprinnelig melding", "Original melding", "Videresendt melding", "Videresendt melding:"),
    ),
    QuoteLanguage(
        "da",
        (rf"(?:Den\s+)?{_WEEKDAY}{_DATE}.*\sskrev\b.*:",),
        ("skrev",),
        ("Fra",),
        ("Sendt", "Dato", "Til", "Cc", "Emne"),
        ("Oprindelig meddelelse", "Original meddelelse", "Videresendt meddelelse", "Videresendt besked:"),
    ),
    QuoteLanguage(
        "fi",
        (rf"{_WEEKDAY}{_DATE}.*\skirjoitti\s*:", rf".+\skirjoitti\s+{_WEEKDAY}{_DATE}.*:"),
        ("kirjoitti",),
        ("Lähettäjä",),
        ("Lähetetty", "Päivämäärä", "Vastaanottaja", "Kopio", "Aihe"),
        ("Alkuperäinen viesti", "Välitetty viesti", "Välitetty viesti alkaa:"),
    ),
    QuoteLanguage(
        "de",
        (rf"Am\s+{_WEEKDAY}{_DATE}.*\sschrieb\b.*:",),
        ("schrieb",),
        ("Von",),
        ("Gesendet", "Datum", "An", "Cc", "Betreff"),
        (
            "Ursprüngliche Nachricht",
            "Originalnachricht",
            "Weitergeleitete Nachricht",
            "Anfang der weitergeleiteten Nachricht:",
            "Anfang der weitergeleiteten E-Mail:",
        ),
    ),
    QuoteLanguage(
        "nl",
        (rf"Op\s+{_WEEKDAY}{_DATE}.*\s(?:schreef|het volgende geschreven)\b.*:",),
        ("schreef", "het volgende geschreven"),
        ("Van",),
        ("Verzonden", "Datum", "Aan", "CC", "Onderwerp"),
        (
            "Oorspronkelijk bericht",
            "Origineel bericht",
            "Doorgestuurd bericht",
            "Begin doorgestuurd bericht:",
        ),
    ),
    QuoteLanguage(
        "fr",
        (rf"Le\s+{_WEEKDAY}{_DATE}.*\sa\s+écrit\s*:",),
        ("a écrit",),
        ("De",),
        ("Envoyé", "Date", "À", "Cc", "Objet"),
        ("Message d'origine", "Message original", "Message transféré", "Début du message réexpédié :"),
    ),
)


def _names(names: set[str]) -> str:
    """An alternation of the names, longest first; any space may be a no-break one (French
    "a écrit\u202f:"), any apostrophe a typographic one."""
    escaped = (
        re.escape(n).replace(r"\ ", r"\s+").replace("'", "['’]") for n in sorted(names, key=len, reverse=True)
    )
    return "|".join(escaped)


def _field(names: set[str]) -> re.Pattern[str]:
    """A header line as Outlook writes it, and as Gmail's text of a bold one (`*From:* …`)."""
    return re.compile(rf"\*{{0,2}}(?:{_names(names)})\s?:\*{{0,2}}(?:\s|$)", re.IGNORECASE)


_ATTRIBUTIONS = [
    (language.code, re.compile(pattern, re.IGNORECASE))
    for language in LANGUAGES
    for pattern in language.attributions
]
_WROTE = {verb for language in LANGUAGES for verb in language.wrote}
# Any language's client, as long as it names the address and uses a verb we know:
# "Kari <kari@…> skrev:", "skrev Kari <kari@…>:", "Kari <kari@…> schrieb am Di., 24. Nov. 2026:".
_ADDRESSED = re.compile(
    rf"(?=.*<[^<>\s]+@[^<>\s]+>)(?=.*\s(?:{_names(_WROTE)})\b).*:",
    re.IGNORECASE,
)
_VERB = re.compile(rf"\s(?:{_names(_WROTE)})\b", re.IGNORECASE)
_SHORT_WROTE = re.compile(rf".{{1,80}}\s(?:{_names(_WROTE)})\s*:", re.IGNORECASE)
_FROM = _field({n for language in LANGUAGES for n in language.header_from})
_HEADER_FIELD = _field({n for language in LANGUAGES for n in language.header_fields})
_SEPARATORS = {s for language in LANGUAGES for s in language.separators}
_SEPARATOR = re.compile(  # "-----Original Message-----" style, or Apple's "Begin forwarded message:"
    rf"-{{2,}}\s*(?:{_names({s for s in _SEPARATORS if not s.endswith(':')})})\s*-{{2,}}"
    rf"|(?:{_names({s for s in _SEPARATORS if s.endswith(':')})})",
    re.IGNORECASE,
)
_RULE = re.compile(r"(?:_{10,}|-{10,})")  # Outlook's line above its header block
# Any language's header line ("Od: …", "Wysłane: …"), trusted only just above our marker.
_ANY_FIELD = re.compile(r"\*{0,2}[^\W\d][\w'.-]{0,20}(?: [\w'.-]{1,20})?\s?:\*{0,2}\s+\S")


# Longer is not an attribution (a long name and address are ~200 characters); the bound also
# keeps the patterns' backtracking small on a megabyte-long line.
_LONGEST_ATTRIBUTION = 400


@dataclass(frozen=True)
class QuoteCut:
    answer: str
    reason: str  # where and why the cut was made, for the record


def cut_quoted_history(text: str) -> QuoteCut:
    """The agent's answer without the quoted mail, and what the cut was made at."""
    text = text.replace("\r\n", "\n")
    marker = _MARKER.search(text)
    lines = (text[: marker.start()] if marker else text).split("\n")
    if marker is not None and not re.search(r"\w", lines[-1]):
        lines.pop()  # whatever prefix the client put before the marker on its line
    found = _quote_start(lines)
    if marker is not None:
        reason = "at our marker" + (f", and {found[1]} above it" if found else "")
        return QuoteCut(_trim(lines[: found[0]] if found else lines, quoted=True, ours=True), reason)
    if found is not None:
        return QuoteCut(_trim(lines[: found[0]], quoted=True, ours=False), found[1])
    answer = _trim(lines, quoted=False, ours=False)
    return QuoteCut(
        answer, "no quoted history" if answer == text.strip() else "at the quoted lines at its end"
    )


def strip_quoted_history(text: str) -> str:
    return cut_quoted_history(text).answer


def _quote_start(lines: list[str]) -> tuple[int, str] | None:
    """The first line where a client's quote header starts, with what it is."""
    stripped = [line.strip() for line in lines]
    quoted_tail = len(stripped)  # from here on, every line is blank or quoted
    while quoted_tail and (not stripped[quoted_tail - 1] or stripped[quoted_tail - 1].startswith(">")):
        quoted_tail -= 1
    for index, line in enumerate(stripped):
        if not line or line.startswith(">"):
            continue
        if _SEPARATOR.fullmatch(line):
            return index, f"the separator {line!r}"
        if _FROM.match(line) and any(_HEADER_FIELD.match(n) for n in stripped[index + 1 : index + 5]):
            return index, f"the header block {line.split(':')[0].strip('* ')!r}"
        attribution = _attribution(stripped, index)
        if attribution is not None:
            return index, attribution
        quoted_follow = index + 1 >= quoted_tail and any(stripped[index + 1 :])
        if quoted_follow and _SHORT_WROTE.fullmatch(line):
            return index, "the attribution line above the quoted lines"
    return None


def _attribution(lines: list[str], index: int) -> str | None:
    """An attribution line starting at `index`, alone or wrapped over the next one or two
    (Gmail wraps a long one); a wrap is only joined from a long line that ends no sentence,
    and not when the attribution really starts on the next line."""
    joined = ""
    for count, line in enumerate(lines[index : index + 3], 1):
        if not line or (count > 1 and (len(joined) < 40 or joined[-1] in ".!?")):
            return None
        joined = f"{joined} {line}".strip()
        if len(joined) > _LONGEST_ATTRIBUTION:
            return None
        if not (joined.endswith(":") and _VERB.search(joined) and re.search(r"[\d@]", joined)):
            continue  # every attribution ends in a colon and has a verb: cheap refusals first
        code = next((c for c, p in _ATTRIBUTIONS if p.fullmatch(joined)), None)
        what = f"the attribution line ({code})" if code else "the attribution line (with an address)"
        if (code or _ADDRESSED.fullmatch(joined)) and not (count > 1 and _attribution(lines, index + 1)):
            return what
    return None


def _trim(lines: list[str], *, quoted: bool, ours: bool) -> str:
    """Drop the quote's remains at the end: blank and `>` lines and separators; when a quote
    followed, an attribution just above it in a language we have no table for; and above our
    marker, a header block in such a language too (nothing but a client's header sits there)."""
    lines = list(lines)

    def drop_tail() -> bool:
        dropped = False
        while lines and (
            not (last := lines[-1].strip())
            or last.startswith(">")
            or _SEPARATOR.fullmatch(last)
            or _RULE.fullmatch(last)
            or re.fullmatch(r"-{2,}[^-]{3,40}-{2,}", last)
        ):
            lines.pop()
            dropped = True
        return dropped

    quoted = drop_tail() or quoted
    if quoted and lines:
        start = len(lines)
        while start and lines[start - 1].strip():
            start -= 1
        while _RULE.fullmatch(lines[start].strip()) or _SEPARATOR.fullmatch(lines[start].strip()):
            start += 1  # left to drop_tail, with the header below it
        paragraph = [line.strip() for line in lines[start:]]
        joined = " ".join(paragraph)
        if len(paragraph) <= 3 and joined.endswith(":") and re.search(r"[\d@]", joined):
            del lines[start:]
        elif paragraph[-1].endswith(":") and re.search(r"[\d@]", paragraph[-1]):
            lines.pop()
        elif (
            ours
            and len(paragraph) <= 8
            and _ANY_FIELD.match(paragraph[0])
            and sum(1 for p in paragraph if _ANY_FIELD.match(p)) >= 2
        ):
            del lines[start:]
        drop_tail()
    return "\n".join(lines).strip()
