"""Single-stage limits: how fast each library alone does its part, over the same messages, and
what that costs the machine: busy CPU time of all cores per message, the servers' share included."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import aioimaplib
import aiosmtplib
import mailparser
from sqlmodel import Session

from bench.harness import Span, imap_login
from mailrouter.db import create_schema, make_engine
from mailrouter.models import Event
from mailrouter.vocabulary import EventKind
from tests.mailstack import MailStack


@dataclass(frozen=True)
class Limit:
    rate: float  # messages per second
    cpu: float  # seconds of the machine's busy CPU time per message


def _limit(count: int, span: Span) -> Limit:
    return Limit(count / span.wall, span.cpu / count)


def imaplib_fetch(stack: MailStack, address: str, password: str) -> tuple[Limit, list[bytes]]:
    """One UID FETCH 1:* (BODY.PEEK[]) with the stdlib client."""
    conn = imap_login(stack, address, password)
    try:
        conn.select("INBOX", readonly=True)
        with Span() as span:
            typ, data = conn.uid("FETCH", "1:*", "(BODY.PEEK[])")
        assert typ == "OK", data
        messages = [part[1] for part in data if isinstance(part, tuple)]
    finally:
        conn.logout()
    return _limit(len(messages), span), messages


async def _aioimaplib_fetch(stack: MailStack, address: str, password: str, batch: int) -> Limit:
    client = aioimaplib.IMAP4(host=stack.host, port=stack.imap_port, timeout=60)
    await client.wait_hello_from_server()
    await client.login(address, password)
    await client.select("INBOX")
    response = await client.uid_search("ALL")
    uids = [int(t) for line in response.lines[:-1] for t in bytes(line).split() if t.isdigit()]
    fetched = 0
    with Span() as span:
        for start in range(0, len(uids), batch):
            chunk = ",".join(map(str, uids[start : start + batch]))
            answer = await client.uid("fetch", chunk, "(UID BODY.PEEK[])")
            fetched += sum(1 for line in answer.lines if isinstance(line, bytearray))
    await client.logout()
    return _limit(fetched, span)


def aioimaplib_fetch(stack: MailStack, address: str, password: str, batch: int) -> Limit:
    return asyncio.run(_aioimaplib_fetch(stack, address, password, batch))


def mailparser_parse(messages: list[bytes]) -> Limit:
    with Span() as span:
        for raw in messages:
            mailparser.parse_from_bytes(raw)
    return _limit(len(messages), span)


def commits(url: str, count: int) -> Limit:
    """One sqlmodel row per commit on mailrouter's own engine (SQLite: WAL, synchronous=NORMAL)."""
    engine = make_engine(url)
    create_schema(engine)
    with Span() as span:
        for index in range(count):
            with Session(engine) as session:
                session.add(Event(kind=EventKind.NOTE, detail=f"commit {index}"))
                session.commit()
    engine.dispose()
    return _limit(count, span)


async def _smtp_handoff(stack: MailStack, sender: str, recipient: str, letters: list[bytes]) -> Limit:
    smtp = aiosmtplib.SMTP(hostname=stack.host, port=stack.smtp_port, timeout=60)
    await smtp.connect()
    with Span() as span:
        for data in letters:
            await smtp.sendmail(sender, [recipient], data)
    await smtp.quit()
    return _limit(len(letters), span)


def smtp_handoff(stack: MailStack, sender: str, recipient: str, letters: list[bytes]) -> Limit:
    """Letters handed to the relay over one reused aiosmtplib connection."""
    return asyncio.run(_smtp_handoff(stack, sender, recipient, letters))
