"""Single-stage limits: how fast each library alone does its part, over the same messages."""

from __future__ import annotations

import asyncio
import time

import aioimaplib
import aiosmtplib
import mailparser
from sqlmodel import Session

from bench.harness import imap_login
from mailrouter.db import create_schema, make_engine
from mailrouter.models import Event
from tests.mailstack import MailStack


def imaplib_fetch(stack: MailStack, address: str, password: str) -> tuple[float, list[bytes]]:
    """Messages per second for one UID FETCH 1:* (BODY.PEEK[]) with the stdlib client."""
    conn = imap_login(stack, address, password)
    try:
        conn.select("INBOX", readonly=True)
        started = time.perf_counter()
        typ, data = conn.uid("FETCH", "1:*", "(BODY.PEEK[])")
        elapsed = time.perf_counter() - started
        assert typ == "OK", data
        messages = [part[1] for part in data if isinstance(part, tuple)]
    finally:
        conn.logout()
    return len(messages) / elapsed, messages


async def _aioimaplib_fetch(stack: MailStack, address: str, password: str, batch: int) -> tuple[float, int]:
    client = aioimaplib.IMAP4(host=stack.host, port=stack.imap_port, timeout=60)
    await client.wait_hello_from_server()
    await client.login(address, password)
    await client.select("INBOX")
    response = await client.uid_search("ALL")
    uids = [int(t) for line in response.lines[:-1] for t in bytes(line).split() if t.isdigit()]
    started = time.perf_counter()
    fetched = 0
    for start in range(0, len(uids), batch):
        chunk = ",".join(map(str, uids[start : start + batch]))
        answer = await client.uid("fetch", chunk, "(UID BODY.PEEK[])")
        fetched += sum(1 for line in answer.lines if isinstance(line, bytearray))
    elapsed = time.perf_counter() - started
    await client.logout()
    return fetched / elapsed, fetched


def aioimaplib_fetch(stack: MailStack, address: str, password: str, batch: int) -> float:
    rate, _ = asyncio.run(_aioimaplib_fetch(stack, address, password, batch))
    return rate


def mailparser_parse(messages: list[bytes]) -> float:
    started = time.perf_counter()
    for raw in messages:
        mailparser.parse_from_bytes(raw)
    return len(messages) / (time.perf_counter() - started)


def commits(url: str, count: int) -> float:
    """One sqlmodel row per commit on mailrouter's own engine (SQLite: WAL, synchronous=NORMAL)."""
    engine = make_engine(url)
    create_schema(engine)
    started = time.perf_counter()
    for index in range(count):
        with Session(engine) as session:
            session.add(Event(kind="bench", detail=f"commit {index}"))
            session.commit()
    elapsed = time.perf_counter() - started
    engine.dispose()
    return count / elapsed


async def _smtp_handoff(stack: MailStack, sender: str, recipient: str, letters: list[bytes]) -> float:
    smtp = aiosmtplib.SMTP(hostname=stack.host, port=stack.smtp_port, timeout=60)
    await smtp.connect()
    started = time.perf_counter()
    for data in letters:
        await smtp.sendmail(sender, [recipient], data)
    elapsed = time.perf_counter() - started
    await smtp.quit()
    return len(letters) / elapsed


def smtp_handoff(stack: MailStack, sender: str, recipient: str, letters: list[bytes]) -> float:
    """Messages per second handed to the relay over one reused aiosmtplib connection."""
    return asyncio.run(_smtp_handoff(stack, sender, recipient, letters))
