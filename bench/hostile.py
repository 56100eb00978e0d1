"""The hostile-input run: how long normal mail waits when hostile mail shares its batch, and the
peak memory of a batch of messages at the size limit."""

from __future__ import annotations

import uuid
from email.mime.text import MIMEText
from pathlib import Path
from typing import Any

from bench.corpus import big_message, corpus
from bench.harness import append_all, make_daemon
from tests.mailstack import DISCARD_DOMAIN, MailStack

TARGET_EXTRA_SECONDS = 2.0
TARGET_RSS_MB = 300.0


def hostile_messages(run: str, to: str) -> list[bytes]:
    """A pathological HTML-only mail (300 KB of unclosed tags: quadratic to convert before
    2026-12-01), one with 20,000 References, and a subject built to make a backtracking regex
    run for seconds."""
    sender = f"hostile-{run}@{DISCARD_DOMAIN}"
    html = MIMEText("<a " * 100_000, "html", "utf-8")
    html["Subject"] = "Se vedlagt"
    references = MIMEText("Hei igjen.", "plain", "utf-8")
    references["Subject"] = "Re: tidligere"
    references["References"] = " ".join(f"<ref{n}-{run}@hostile.example>" for n in range(20_000))
    bait = MIMEText("Hei.", "plain", "utf-8")
    bait["Subject"] = "a" * 40 + "!"
    messages = []
    for n, message in enumerate((html, references, bait)):
        message["From"], message["To"] = sender, to
        message["Message-ID"] = f"<hostile-{n}-{run}@hostile.example>"
        messages.append(message.as_bytes())
    return messages


def acknowledged_in(stack: MailStack, work: Path, name: str, count: int, hostile: bool) -> float:
    """Seconds from the daemon's readiness until `count` normal messages (and the hostile ones
    ahead of them, if asked) are registered and every acknowledgement is with the relay."""
    run = uuid.uuid4().hex[:8]
    daemon = make_daemon(stack, work / name, f"sqlite:///{work}/{name}.db")
    department, password = daemon.accounts["it"]
    customers = [f"kunde-{run}-{k}@{DISCARD_DOMAIN}" for k in range(count)]
    normal, replies = corpus(count, run=run, to=department, customers=customers)
    extra = hostile_messages(run, department) if hostile else []
    append_all(stack, department, password, extra + normal)
    daemon.start()
    try:
        ready = daemon.wait_ready()
        done = daemon.wait_done(count + len(extra), count - replies + len(extra), timeout=300)
    finally:
        daemon.stop()
    return done - ready


def memory(stack: MailStack, work: Path, count: int, megabytes: int) -> float:
    daemon = make_daemon(stack, work / "hostile-memory", f"sqlite:///{work}/hostile-memory.db")
    department, password = daemon.accounts["it"]
    customer = stack.new_account("bench-big")[0]
    messages = [
        big_message(run=uuid.uuid4().hex[:8], to=department, customer=customer, size=megabytes * 1024 * 1024)
        for _ in range(count)
    ]
    append_all(stack, department, password, messages)
    daemon.start()
    try:
        daemon.wait_ready()
        daemon.wait_done(count, count, timeout=600)
        return daemon.peak_rss_mb()
    finally:
        daemon.stop()


def run(stack: MailStack, work: Path, count: int, say: Any) -> dict[str, float]:
    say(f"\n== Hostile input: {count} normal messages, with and without 3 hostile ones ahead ==")
    normal = acknowledged_in(stack, work, "normal", count, hostile=False)
    hostile = acknowledged_in(stack, work, "hostile", count, hostile=True)
    extra = hostile - normal
    say(f"  normal batch acknowledged in {normal:.2f}s; with hostile mail in it {hostile:.2f}s")
    met = "met" if extra <= TARGET_EXTRA_SECONDS else "MISSED"
    say(f"  extra wait {extra:+.2f}s (target ≤ {TARGET_EXTRA_SECONDS:g}s): {met}")
    rss = memory(stack, work, 4, 24)
    say(
        f"  a batch of 4 messages of 24 MB: peak RSS {rss:.0f} MB (target < {TARGET_RSS_MB:g} MB): "
        f"{'met' if rss < TARGET_RSS_MB else 'MISSED'}"
    )
    return {"normal_s": normal, "hostile_s": hostile, "extra_s": extra, "batch_peak_rss_mb": rss}
