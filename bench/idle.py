"""Idle cost: one poll cycle with nothing new, in folders of growing size.

Old mail is written as Maildir files straight into the account (as the mail user), then Dovecot
indexes it on the first SELECT. The poll cycle is the fetch worker's own `_drain`, on an aioimaplib
connection whose bytes in and out are counted.
"""

from __future__ import annotations

import asyncio
import os
import pwd
import statistics
import time
from pathlib import Path
from typing import Any

import aioimaplib

from bench.corpus import small_message
from mailrouter.config import DaemonSettings, ImapSettings, MailboxSettings
from mailrouter.db import make_engine
from mailrouter.fetch import MailboxWorker
from mailrouter.imap import Connection, Selected
from mailrouter.lease import MailboxLock
from tests.mailstack import MailStack


def fill_maildir(stack: MailStack, address: str, count: int) -> float:
    """Write `count` old, already-seen messages into the account's INBOX; returns seconds taken."""
    local, _, domain = address.partition("@")
    maildir = stack.dir / "mail" / domain / local / "Maildir"
    mail = pwd.getpwnam("mail")
    started = time.perf_counter()
    for sub in ("cur", "new", "tmp"):
        (maildir / sub).mkdir(parents=True, exist_ok=True)
    raw = small_message(0, to=address)
    stamp = int(time.time()) - 86_400
    cur = maildir / "cur"
    for index in range(count):
        data = raw if index else small_message(index, to=address)
        (cur / f"{stamp}.M{index}P{os.getpid()}.bench,S={len(data)}:2,S").write_bytes(data)
    for path in (maildir.parent, maildir, *(maildir / s for s in ("cur", "new", "tmp"))):
        os.chown(path, mail.pw_uid, mail.pw_gid)
    for entry in os.scandir(cur):
        os.chown(entry.path, mail.pw_uid, mail.pw_gid)
    return time.perf_counter() - started


class _Counted:
    """Counts the bytes an aioimaplib connection reads and writes."""

    def __init__(self, client: aioimaplib.IMAP4) -> None:
        self.read = self.written = self.writes = 0
        protocol = client.protocol
        receive, transport = protocol.data_received, protocol.transport
        write = transport.write

        def data_received(data: bytes) -> None:
            self.read += len(data)
            receive(data)

        def counted_write(data: Any) -> None:
            self.written += len(data)
            self.writes += 1
            write(data)

        protocol.data_received = data_received
        transport.write = counted_write


async def _poll_cost(stack: MailStack, address: str, password: str, polls: int) -> dict[str, Any]:
    client = aioimaplib.IMAP4(host=stack.host, port=stack.imap_port, timeout=600)
    await client.wait_hello_from_server()
    await client.login(address, password)
    started = time.perf_counter()
    response = await client.select("INBOX")
    select_seconds = time.perf_counter() - started
    assert response.result == "OK", response
    last = await client.uid_search("ALL")
    uids = [int(t) for line in last.lines[:-1] for t in bytes(line).split() if t.isdigit()]
    last_uid = max(uids, default=0)

    # Only _drain is used: it needs no intake (nothing is new) and no mailbox lock.
    lock = MailboxLock(make_engine("sqlite://"), "bench", 60)
    settings = MailboxSettings(
        address=address,
        display_name="bench",
        prefix="B",
        imap=ImapSettings(host=stack.host, user=address, password_env="UNUSED"),
    )
    worker = MailboxWorker("bench", settings, None, None, DaemonSettings(), lambda: None, lock)  # type: ignore[arg-type]
    selected = Selected(1, True)
    stop = asyncio.Event()
    counted = _Counted(client)
    conn = Connection(client, asyncio.get_running_loop().create_future())
    times = []
    for _ in range(polls):
        began = time.perf_counter()
        new_last, more = await worker._drain(conn, selected, last_uid, stop)
        times.append(time.perf_counter() - began)
        assert new_last == last_uid and not more
    per_poll_read, per_poll_written = counted.read / polls, counted.written / polls
    commands = counted.writes / polls

    counted.read = counted.written = 0
    naive = []
    for _ in range(5):
        began = time.perf_counter()
        await client.uid_search("ALL")  # what a poller without a checkpoint would ask
        naive.append(time.perf_counter() - began)
    naive_read = counted.read / 5
    await client.logout()
    return {
        "messages": len(uids),
        "first_select_s": select_seconds,
        "poll_median_ms": statistics.median(times) * 1000,
        "poll_p90_ms": sorted(times)[int(0.9 * (len(times) - 1))] * 1000,
        "poll_commands": commands,
        "poll_bytes_in": per_poll_read,
        "poll_bytes_out": per_poll_written,
        "naive_search_all_ms": statistics.median(naive) * 1000,
        "naive_search_all_bytes_in": naive_read,
    }


def poll_cost(stack: MailStack, address: str, password: str, polls: int = 200) -> dict[str, Any]:
    return asyncio.run(_poll_cost(stack, address, password, polls))


def maildir_of(stack: MailStack, address: str) -> Path:
    local, _, domain = address.partition("@")
    return stack.dir / "mail" / domain / local / "Maildir"
