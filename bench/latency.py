"""Latency: customer mail through SMTP at a steady rate → the acknowledgement in the customer's inbox.

The clock starts when the relay has accepted the customer's mail (smtplib's sendmail returned) and
stops when a watcher, asking the customer's INBOX every 10 ms, first sees the acknowledgement.
"""

from __future__ import annotations

import random
import re
import smtplib
import threading
import time

from bench.corpus import build
from bench.harness import imap_login
from tests.mailstack import MailStack

_IN_REPLY_TO = re.compile(rb"In-Reply-To:\s*(<[^>]+>)", re.IGNORECASE)


class InboxWatcher(threading.Thread):
    def __init__(self, stack: MailStack, address: str, password: str) -> None:
        super().__init__(daemon=True)
        self.conn = imap_login(stack, address, password)
        self.conn.select("INBOX", readonly=True)
        self.arrived: dict[bytes, float] = {}
        self.halt = threading.Event()

    def run(self) -> None:
        last = 0
        while not self.halt.is_set():
            self.conn.noop()  # lets Dovecot notice new mail in the selected folder
            _, data = self.conn.uid("SEARCH", f"UID {last + 1}:*")
            now = time.monotonic()
            uids = [int(u) for u in (data[0] or b"").split() if int(u) > last]
            if uids:
                _, parts = self.conn.uid(
                    "FETCH", ",".join(map(str, uids)), "(BODY.PEEK[HEADER.FIELDS (IN-REPLY-TO)])"
                )
                for part in parts:
                    if isinstance(part, tuple):
                        match = _IN_REPLY_TO.search(part[1])
                        if match:
                            self.arrived.setdefault(match.group(1), now)
                last = max(uids)
            time.sleep(0.01)
        self.conn.logout()


def measure(
    stack: MailStack,
    department: str,
    customer: tuple[str, str],
    rate: float,
    seconds: float,
    run: str,
) -> tuple[list[float], int]:
    """Latencies in seconds of every acknowledgement seen, and how many mails were sent."""
    watcher = InboxWatcher(stack, *customer)
    watcher.start()
    accepted: dict[bytes, float] = {}
    rng = random.Random(5)
    count = int(rate * seconds)
    with smtplib.SMTP(stack.host, stack.smtp_port, timeout=30) as smtp:
        started = time.monotonic()
        for index in range(count):
            delay = started + index / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            # Replies would be follow-ups without acknowledgement: send only first messages.
            raw, _ = build(index * 4, run=run, to=department, customers=[customer[0]], rng=rng)
            smtp.sendmail(customer[0], [department], raw)
            accepted[f"<bench-{run}-{index * 4}@kunde.example>".encode()] = time.monotonic()
    deadline = time.monotonic() + 30
    while len(watcher.arrived.keys() & accepted.keys()) < count and time.monotonic() < deadline:
        time.sleep(0.1)
    watcher.halt.set()
    watcher.join(timeout=5)
    latencies = [watcher.arrived[mid] - at for mid, at in accepted.items() if mid in watcher.arrived]
    return sorted(latencies), count


def percentile(values: list[float], fraction: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]
