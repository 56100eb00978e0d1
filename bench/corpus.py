"""Realistic customer mail as raw bytes, the same on every run for the same arguments.

Headers are encoded with email.header.Header (EmailMessage's folding can drop the space between two
encoded-words, a CPython bug). Every 20th message carries a ~200 KB attachment, every other one is
multipart/alternative, every 4th is a reply (In-Reply-To and References) to an earlier customer mail.
"""

from __future__ import annotations

import random
from email.charset import QP, Charset
from email.header import Header
from email.mime.application import MIMEApplication
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from email.policy import compat32
from email.utils import formatdate
from typing import Any

# Any: MIMEText takes a Charset (as documented), though typeshed types its _charset as str.
_UTF8: Any = Charset("utf-8")
_UTF8.body_encoding = QP
_POLICY = compat32.clone(linesep="\r\n")

SUBJECTS = (
    "Skrivaren på plan 3 fungerar inte",
    "Passord utløpt – trenger hjelp",
    "Kan ikke logge inn på VPN fra hjemmekontoret",
    "Tastaturet mangler æ, ø og å",
    "Outlook kraschar när jag öppnar kalendern",
    "Ny bærbar PC til nyansatt på økonomi",
    "Skjermen flimrer etter oppdatering",
    "Printer on floor 2 jams every morning",
    "Cannot open shared drive Ø:",
    "Tilgang til lønnssystemet for Åse Ødegård",
    "Mötesrummet Älven: projektorn saknar kabel",
    "Wi-Fi drops in the Bergen office",
)
NAMES = ("Kari Nordmann", "Åsa Öberg", "Ole Ærø", "Jens Åkerlund", "Sigrid Bjørnstad", "Pat Smith")
PARAGRAPH = (
    "Hei! Siden i morges har jeg hatt problemer med dette, og kollegene mine på samme gang ser det "
    "samme. Jeg har prøvd å starta om maskinen två gånger utan att det hjälper. Kan dere se på det "
    "så snart som mulig? Det haster litt fordi vi har frist på fredag. Takk for hjelpen!\n"
)


def _subject_header(subject: str) -> str:
    return Header(subject, "us-ascii" if subject.isascii() else "utf-8").encode()


def _from_header(name: str, address: str) -> str:
    shown = Header(name, "utf-8").encode() if not name.isascii() else name
    return f"{shown} <{address}>"


def message_id(run: str, index: int) -> str:
    return f"<bench-{run}-{index}@kunde.example>"


def build(
    index: int,
    *,
    run: str,
    to: str,
    customers: list[str],
    rng: random.Random,
    attachment_every: int = 20,
    reply_every: int = 4,
) -> tuple[bytes, bool]:
    """One message; returns (raw bytes, whether it is a reply to an earlier one)."""
    is_reply = index % reply_every == reply_every - 1 and index >= reply_every
    parent = index - (reply_every - 1) if is_reply else index
    customer = customers[parent % len(customers)]
    name = NAMES[parent % len(NAMES)]
    subject = f"{SUBJECTS[parent % len(SUBJECTS)]} (#{parent})"
    paragraphs = 2 + rng.randrange(6)
    text = f"Hei,\n\n{PARAGRAPH * paragraphs}\nHilsen {name}\n"
    if is_reply:
        subject = f"SV: {subject}"
        text = f"Ein oppfølging: det skjer fortsatt.\n\n> {PARAGRAPH}"

    if index % attachment_every == attachment_every // 2:
        message: MIMEMultipart | MIMEText = MIMEMultipart("mixed")
        message.attach(MIMEText(text, "plain", _UTF8))
        blob = rng.randbytes(200 * 1024)
        part = MIMEApplication(blob, "octet-stream")
        part.add_header("Content-Disposition", "attachment", filename="skjermbilde-feilmelding.bin")
        message.attach(part)
    elif index % 2 == 0:
        message = MIMEMultipart("alternative")
        message.attach(MIMEText(text, "plain", _UTF8))
        html = "".join(f"<p>{line}</p>" for line in text.splitlines() if line)
        message.attach(MIMEText(f"<html><body>{html}</body></html>", "html", _UTF8))
    else:
        message = MIMEText(text, "plain", _UTF8)
    message["From"] = _from_header(name, customer)
    message["To"] = to
    message["Subject"] = _subject_header(subject)
    message["Date"] = formatdate(1_700_000_000 + index * 7, localtime=False)
    message["Message-ID"] = message_id(run, index)
    if is_reply:
        message["In-Reply-To"] = message_id(run, parent)
        message["References"] = message_id(run, parent)
    return message.as_bytes(policy=_POLICY), is_reply


def corpus(count: int, *, run: str, to: str, customers: list[str], seed: int = 6) -> tuple[list[bytes], int]:
    """`count` messages and how many of them are replies (follow-ups, which get no acknowledgement)."""
    rng = random.Random(seed)
    messages: list[bytes] = []
    replies = 0
    for index in range(count):
        raw, is_reply = build(index, run=run, to=to, customers=customers, rng=rng)
        messages.append(raw)
        replies += is_reply
    return messages, replies


def big_message(*, run: str, to: str, customer: str, size: int) -> bytes:
    """One message of about `size` bytes on the wire (a base64 attachment)."""
    message = MIMEMultipart("mixed")
    message.attach(MIMEText("Vedlagt er loggfilene fra serveren.\n", "plain", _UTF8))
    part = MIMEApplication(random.Random(25).randbytes(size * 3 // 4), "octet-stream")
    part.add_header("Content-Disposition", "attachment", filename="serverlogg.tar")
    message.attach(part)
    message["From"] = _from_header("Åsa Öberg", customer)
    message["To"] = to
    message["Subject"] = _subject_header("Stor loggfil fra serveren – kan dere se på den?")
    message["Message-ID"] = message_id(run, 999_999)
    return message.as_bytes(policy=_POLICY)


def small_message(index: int, *, to: str) -> bytes:
    """A short old message for filling a folder to a given size."""
    message = MIMEText(f"Gammel melding nummer {index}.\n{PARAGRAPH}", "plain", _UTF8)
    message["From"] = "Ole Ærø <ole@kunde.example>"
    message["To"] = to
    message["Subject"] = _subject_header(f"Gammel sak {index} – løst")
    message["Message-ID"] = f"<old-{index}@kunde.example>"
    return message.as_bytes(policy=_POLICY)
