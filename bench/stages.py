"""Time per stage: the daemon's own stage functions, run in this process over the same messages.

Production code is not touched: the stage functions are wrapped with timers where
mailrouter.intake looks them up, and the outbox is drained by mailrouter's own Sender.
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aioimaplib
from sqlmodel import Session, col, func, select

from mailrouter import intake as intake_module
from mailrouter import language, notices, store
from mailrouter.config import load_config
from mailrouter.daemon import load
from mailrouter.db import create_schema, ensure_counters, make_engine
from mailrouter.imap import parse_fetch, parse_search
from mailrouter.models import OutboxMessage
from mailrouter.plan import Origin
from mailrouter.send import Sender
from mailrouter.vocabulary import OutboxState
from tests.mailstack import MailStack

Timings = dict[str, float]


def _timed(timings: Timings, key: str, function: Callable[..., Any]) -> Callable[..., Any]:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            timings[key] += time.perf_counter() - started

    return wrapper


async def _fetch_and_mark(
    stack: MailStack, address: str, password: str, batch: int
) -> tuple[float, float, int]:
    """The fetch worker's IMAP traffic: UID SEARCH, UID FETCH and UID STORE in batches."""
    client = aioimaplib.IMAP4(host=stack.host, port=stack.imap_port, timeout=60)
    await client.wait_hello_from_server()
    await client.login(address, password)
    await client.select("INBOX")
    fetch_time = mark_time = 0.0
    count = 0
    started = time.perf_counter()
    response = await client.uid_search("UID 1:*", charset=None)
    uids = sorted(parse_search(response.lines))
    fetch_time += time.perf_counter() - started
    for start in range(0, len(uids), batch):
        chunk = uids[start : start + batch]
        started = time.perf_counter()
        answer = await client.uid("fetch", ",".join(map(str, chunk)), "(UID BODY.PEEK[])")
        count += len(parse_fetch(answer.lines))
        fetch_time += time.perf_counter() - started
        started = time.perf_counter()
        await client.uid("store", ",".join(map(str, chunk)), "+FLAGS.SILENT", "(\\Seen $Registered)")
        mark_time += time.perf_counter() - started
    await client.logout()
    return fetch_time, mark_time, count


def run_stages(
    stack: MailStack,
    config_path: Path,
    database: Path,
    address: str,
    password: str,
    messages: list[bytes],
    send_sample: int,
) -> dict[str, Any]:
    """Seconds per message for each stage, measured one stage at a time over the same mail."""
    fetch_time, mark_time, fetched = asyncio.run(_fetch_and_mark(stack, address, password, 50))

    loaded = load(load_config(config_path, resolve_secrets=False))
    engine = make_engine(f"sqlite:///{database}")
    create_schema(engine)
    ensure_counters(engine, [m.prefix for m in loaded.config.mailboxes.values()], 1001)
    intake = intake_module.Intake(loaded.config, loaded.rules, loaded.templates, engine, loaded.agents)
    language.prepare()  # as the daemon does at start: the models' load is not a message's cost

    timings: Timings = defaultdict(float)
    originals = {name: getattr(intake_module, name) for name in ("parse", "screen", "thread", "route")}
    # The stages are timed by replacing the names intake and notices look them up by, which
    # those modules import without re-exporting: hence the attr-defined ignores.
    compose = notices.compose  # type: ignore[attr-defined]
    render = intake.casework.notices.templates.render
    apply = store.apply
    commit = Session.commit
    try:
        intake_module.parse = _timed(timings, "parse", originals["parse"])  # type: ignore[attr-defined]
        for name in ("screen", "thread", "route"):
            setattr(intake_module, name, _timed(timings, "screen/thread/route", originals[name]))
        notices.compose = _timed(timings, "compose ack", compose)  # type: ignore[attr-defined]
        intake.casework.notices.templates.render = _timed(timings, "compose ack", render)  # type: ignore[method-assign]
        store.apply = _timed(timings, "apply", apply)
        Session.commit = _timed(timings, "commit", commit)  # type: ignore[method-assign]
        started = time.perf_counter()
        for uid, raw in enumerate(messages, start=1):
            intake.process(raw, Origin("it", 1, uid))
        total = time.perf_counter() - started
    finally:
        for name, function in originals.items():
            setattr(intake_module, name, function)
        notices.compose = compose  # type: ignore[attr-defined]
        store.apply = apply
        Session.commit = commit  # type: ignore[method-assign]

    sent_time, smtp_time, letters = _send(engine, loaded.config, send_sample)
    engine.dispose()
    n = len(messages)
    measured = ("parse", "screen/thread/route", "compose ack", "apply", "commit")
    decide = total - sum(timings[name] for name in measured)
    per_message = {
        "fetch (IMAP FETCH, batches of 50)": fetch_time / max(fetched, 1),
        "mark (one UID STORE per batch)": mark_time / max(fetched, 1),
        "parse (mail-parser → Inbound)": timings["parse"] / n,
        "screen/thread/route": timings["screen/thread/route"] / n,
        "compose ack (render + MIME)": timings["compose ack"] / n,
        "decide (reads + casework's plan)": decide / n,
        "store (apply the plan + commit)": (timings["apply"] + timings["commit"]) / n,
        "  of which commit": timings["commit"] / n,
        "send (SMTP dialogue, per ack)": smtp_time / max(letters, 1),
        "send (rest: claim, mark, loop)": (sent_time - smtp_time) / max(letters, 1),
    }
    return {"per_message": per_message, "intake_total": total, "messages": n, "letters": letters}


def _send(engine: Any, config: Any, sample: int) -> tuple[float, float, int]:
    """Drain up to `sample` queued acknowledgements with mailrouter's Sender; returns
    (seconds for deliver+record, seconds in the SMTP dialogue, letters sent)."""
    with Session(engine) as session:
        queued = session.exec(
            select(OutboxMessage.id)
            .where(OutboxMessage.state == OutboxState.QUEUED)
            .order_by(col(OutboxMessage.id))
        ).all()
        if len(queued) > sample:  # keep the sample; the rest is marked failed so the sender skips it
            for row in session.exec(select(OutboxMessage).where(col(OutboxMessage.id).in_(queued[sample:]))):
                row.state = OutboxState.FAILED
                session.add(row)
            session.commit()
    sender = Sender(engine, config.smtp, None)
    smtp_time = 0.0

    async def drain() -> float:
        nonlocal smtp_time
        transaction, mark_sending = sender._transaction, sender._mark_sending
        marking = 0.0

        async def timed_transaction(*args: Any) -> Any:
            nonlocal smtp_time
            started = time.perf_counter()
            try:
                return await transaction(*args)
            finally:
                smtp_time += time.perf_counter() - started

        def timed_mark_sending(*args: Any) -> Any:
            # inside the transaction (before the final dot), but database work, not SMTP
            nonlocal marking
            started = time.perf_counter()
            try:
                return mark_sending(*args)
            finally:
                marking += time.perf_counter() - started

        sender._transaction = timed_transaction  # type: ignore[method-assign,assignment]
        sender._mark_sending = timed_mark_sending  # type: ignore[method-assign,assignment]
        stop = asyncio.Event()
        started = time.perf_counter()
        task = asyncio.create_task(sender.run(stop, 0.05))
        while await asyncio.to_thread(_queued, engine):
            await asyncio.sleep(0.02)
        elapsed = time.perf_counter() - started
        stop.set()
        await task
        smtp_time -= marking
        return elapsed

    elapsed = asyncio.run(drain())
    return elapsed, smtp_time, min(sample, len(queued))


def _queued(engine: Any) -> int:
    with Session(engine) as session:
        return session.exec(
            select(func.count()).select_from(OutboxMessage).where(OutboxMessage.state == OutboxState.QUEUED)
        ).one()
