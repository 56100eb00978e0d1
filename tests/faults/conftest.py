"""Fault injection on the real stack: the e2e harness (tests/e2e/conftest.py) with fast timings."""

from __future__ import annotations

import os
import random
import re
import signal
import smtplib
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path

import pytest

from tests.e2e.conftest import Account, Daemon, installation, no_daemon_outlives_its_test  # noqa: F401 (fixtures)
from tests.mailstack import MailStack
from tests.messages import make_mail, new_message_id

# Seconds where production waits minutes, so faults heal within a test's patience.
FAST_DAEMON: dict[str, float] = {
    "poll_interval": 0.5,
    "send_interval": 0.5,
    "shutdown_timeout": 5,
    "reconnect_initial": 0.2,
    "reconnect_max": 1,
    "lock_check_interval": 0.5,
    "outbox_lease": 4,
}
FAST_SMTP: dict[str, object] = {"retry_initial": 0.3, "retry_max": 1, "timeout": 5}
FAST_IMAP: dict[str, object] = {"timeout": 5}
# The fault tests send hundreds of mails from a few customers and count one acknowledgement per
# case; the per-sender acknowledgement limit (a defence against mail floods) must not interfere.
FLOOD_LIMITS: dict[str, object] = {
    "acknowledgements_per_sender": 100_000,
    "acknowledgements_per_domain": 100_000,
    "acknowledgements_total": 100_000,
}


@pytest.fixture
def rng() -> random.Random:
    """Random, but repeatable: the seed is printed, and FAULT_SEED replays it."""
    seed = int(os.environ.get("FAULT_SEED") or time.time_ns() % 1_000_000)
    print(f"FAULT_SEED={seed}")
    return random.Random(seed)


def customer_mail(customer: Account, to: Account, subject: str) -> tuple[str, bytes]:
    message_id = new_message_id()
    raw = make_mail(
        sender=f"Kunde <{customer.address}>",
        to=to.address,
        subject=subject,
        body=f"{subject}: the printer is broken again.",
        message_id=message_id,
    )
    return message_id, raw


def preload(stack: MailStack, mailbox: Account, raws: list[bytes]) -> None:
    """Put messages straight into a mailbox over one IMAP connection (much faster than SMTP)."""
    with stack.imap(mailbox.address, mailbox.password) as conn:
        for raw in raws:
            typ, data = conn.append("INBOX", None, None, raw)
            assert typ == "OK", data


@dataclass
class MailStream:
    """A customer mailing the departments steadily over SMTP, from a background thread."""

    stack: MailStack
    customer: Account
    mailboxes: list[Account]
    interval: float
    sent: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    error: BaseException | None = None

    def __enter__(self) -> MailStream:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        assert self._thread is not None
        self._thread.join(timeout=30)
        if self.error is not None:
            raise self.error

    def _run(self) -> None:
        try:
            with smtplib.SMTP(self.stack.host, self.stack.smtp_port, timeout=30) as smtp:
                n = 0
                while not self._stop.is_set():
                    to = self.mailboxes[n % len(self.mailboxes)]
                    message_id, raw = customer_mail(self.customer, to, f"Stream {n}")
                    smtp.sendmail(self.customer.address, [to.address], raw)
                    self.sent.append(message_id)
                    n += 1
                    self._stop.wait(self.interval)
        except BaseException as exc:  # reported by __exit__
            self.error = exc


def restart_imap(stack: MailStack, down: float = 1.0) -> None:
    """Restart Dovecot the way a real server restart looks to a client: every session ends.

    scripts/mailstack stop-imap stops the master, but here its logged-in imap processes live on
    and keep serving (seen on this machine), so end those too: by pid, only this stack's
    (their title names the stack's IMAP port).
    """
    stack.stop_imap()
    title = f"dovecot-mailstack-{stack.imap_port}/imap".encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if (entry / "cmdline").read_bytes().split(b"\0")[0].strip() == title:
                os.kill(int(entry.name), signal.SIGTERM)
        except (OSError, ProcessLookupError):
            continue
    time.sleep(down)
    stack.start_imap()


def registered_message_ids(daemon: Daemon) -> set[str]:
    from sqlmodel import select

    from mailrouter.models import Message
    from mailrouter.vocabulary import Direction

    rows = daemon._select(select(Message.message_id).where(Message.direction == Direction.IN))
    return set(rows)


# The relay's queue id, in the Received header it writes when it accepts a mail.
_ACCEPTED_AS = re.compile(r"\(Postfix\) with E?SMTPS?A? id (\w+)")


def acknowledgements(stack: MailStack, customers: list[Account]) -> list[EmailMessage]:
    """One per mail the relay accepted. Copies of one acceptance count once: a Dovecot restarted
    after it saved a copy but before it said so to Postfix gets that mail again (LMTP delivers
    at least once), which is the mail stack's doing, not a second letter of ours."""
    accepted: dict[str | int, EmailMessage] = {}
    for message in (ack for c in customers for ack in stack.messages(c.address, c.password)):
        received = (_ACCEPTED_AS.search(" ".join(str(h).split())) for h in message.get_all("Received", []))
        queue_id = next((found.group(1) for found in received if found), None)
        accepted.setdefault(queue_id or id(message), message)
    return list(accepted.values())


def assert_acknowledged_exactly_once(
    stack: MailStack, daemon: Daemon, customers: list[Account], *, interruptions: int = 0
) -> None:
    """Every case has exactly one acknowledgement in its customer's inbox, and nothing else came.

    `interruptions`: how many times the test cut a sender off (kill -9, a dropped database
    connection). Cut off after it recorded a letter as `sending` and before the relay had the
    final dot, a sender leaves that letter unsent for good: never twice beats at least once
    (README, "Crash safety"). So each interruption may cost one acknowledgement, and only one
    recorded as mail-sent-unconfirmed."""
    cases = daemon.cases()
    number = {c.id: c.number for c in cases}
    ack_rows = {o.id for o in daemon.outbox("acknowledgement")}
    unconfirmed = {
        number[e.case_id]
        for e in daemon.events("mail-sent-unconfirmed")
        if e.data.get("outbox_id") in ack_rows and e.case_id in number
    }
    deadline = time.monotonic() + 60
    while (
        len(acknowledgements(stack, customers)) < len(cases) - len(unconfirmed)
        and time.monotonic() < deadline
    ):
        time.sleep(0.5)
    daemon.wait_delivered()  # anything more (wrongly) on its way has arrived now
    acks = acknowledgements(stack, customers)
    tags = Counter(str(a["Subject"]).split("]")[0].lstrip("[") for a in acks)
    doubled = {tag: n for tag, n in tags.items() if n > 1}
    assert not doubled, f"acknowledged more than once: {doubled}"
    missing = {c.number for c in cases} - set(tags)
    lost = f"{len(missing)} case(s) without an acknowledgement: {sorted(missing)[:10]}"
    assert missing <= unconfirmed, f"{lost}; unconfirmed: {sorted(unconfirmed)[:10]}"
    assert len(missing) <= interruptions, lost
    assert len(acks) == len(cases) - len(missing), f"{len(acks)} acknowledgements for {len(cases)} cases"


@pytest.fixture
def customers(mailstack: MailStack) -> Iterator[list[Account]]:
    yield [Account(*a) for a in mailstack.new_accounts("customer", "customer")]
