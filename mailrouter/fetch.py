"""fetch: one worker per department mailbox, from IMAP to the intake and back to mark the mail.

Only UIDs above the stored checkpoint are asked for, so a poll costs the same however large the
folder grows. A message is marked on the server (flagged or moved) only after its transaction
has committed; the checkpoint, not the mark, is what decides whether a message is new.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import aioimaplib
from pydantic import SecretStr
from sqlmodel import Session

from mailrouter import store
from mailrouter.config import DaemonSettings, MailboxSettings
from mailrouter.errors import ConnectionLost, DatabaseUnavailable, ImapError, LockLost
from mailrouter.health import MailboxHealth
from mailrouter.imap import Connection, connect
from mailrouter.imap import ok as _ok
from mailrouter.intake import Intake
from mailrouter.lease import MailboxLock
from mailrouter.parsepool import ParsePool
from mailrouter.plan import Origin, Outcome, OutcomeKind
from mailrouter.vocabulary import EventKind

log = logging.getLogger(__name__)
# aioimaplib reports every untagged response it does not use at INFO: noise in a daemon's journal.
logging.getLogger("aioimaplib").setLevel(logging.WARNING)

PROCESSED_KEYWORD = "$Registered"
QUARANTINE_KEYWORD = "$Quarantined"
MAX_ATTEMPTS = 3

_UIDVALIDITY = re.compile(rb"\[UIDVALIDITY (\d+)\]")
_PERMANENT_FLAGS = re.compile(rb"\[PERMANENTFLAGS \(([^)]*)\)\]")
_FETCH_UID = re.compile(rb"\bUID (\d+)")
_FETCH_SIZE = re.compile(rb"\bRFC822\.SIZE (\d+)")
_LITERAL = re.compile(rb"\{(\d+)\}$")


class Arrival(NamedTuple):
    origin: Origin
    raw: bytes  # the message; only its header when it is over the size limit
    oversized: int | None = None  # then: the size the server reported


@dataclass(frozen=True)
class Selected:
    uidvalidity: int
    keywords_allowed: bool
    read_only: bool = False


def quote(mailbox: str) -> str:
    return '"' + mailbox.replace("\\", "\\\\").replace('"', '\\"') + '"'


def parse_search(lines: list[bytes]) -> list[int]:
    """UIDs from a UID SEARCH answer. aioimaplib drops the SEARCH keyword of the untagged data
    (keep accepting it) and puts the tagged status text last (never read it: it has numbers)."""
    uids: list[int] = []
    for line in lines[:-1]:
        tokens = bytes(line).split()
        if tokens[:1] == [b"SEARCH"]:
            tokens = tokens[1:]
        uids.extend(int(token) for token in tokens if token.isdigit())
    return uids


def parse_sizes(lines: list[bytes | bytearray]) -> dict[int, int]:
    """{UID: size} from a UID FETCH (UID RFC822.SIZE) answer."""
    sizes = {}
    for line in lines:
        uid, size = _FETCH_UID.search(line), _FETCH_SIZE.search(line)
        if uid is not None and size is not None and b"FETCH" in line:
            sizes[int(uid.group(1))] = int(size.group(1))
    return sizes


def _uid_set(uids: list[int]) -> str:
    return ",".join(map(str, uids))


def parse_fetch(lines: list[bytes | bytearray]) -> list[tuple[int, bytes]]:
    """(UID, message bytes) pairs from a UID FETCH (UID BODY.PEEK[]) answer, in server order."""
    found: list[tuple[int, bytes]] = []
    for index, line in enumerate(lines):
        if isinstance(line, bytearray) or not _LITERAL.search(line) or b"FETCH" not in line:
            continue
        if index + 1 >= len(lines):
            break
        literal = bytes(lines[index + 1])
        uid = _FETCH_UID.search(line)
        if uid is None and index + 2 < len(lines):
            uid = _FETCH_UID.search(bytes(lines[index + 2]))  # "UID n" after the literal
        if uid is not None:
            found.append((int(uid.group(1)), literal))
    return found


class MailboxWorker:
    def __init__(
        self,
        name: str,
        settings: MailboxSettings,
        password: SecretStr,
        intake: Intake,
        daemon: DaemonSettings,
        on_queued: Callable[[], None],
        lock: MailboxLock | None = None,
        parsers: ParsePool | None = None,
    ) -> None:
        self.name = name
        self.parsers = parsers or ParsePool(0)
        self.settings = settings
        self.password = password
        self.intake = intake
        self.daemon = daemon
        self.on_queued = on_queued
        self.lock = lock or MailboxLock(intake.engine, name, daemon.lock_check_interval)
        self.failures: dict[tuple[int, int], int] = {}
        self._read_only_reported = False
        self.health = MailboxHealth(name)

    async def run(self, stop: asyncio.Event) -> None:
        delay = self.daemon.reconnect_initial
        try:
            while not stop.is_set():
                if not self.lock.held and not await self.lock.acquire(stop):
                    return  # stopping while another instance owned the mailbox
                try:
                    await self._guarded_session(stop)
                    delay = self.daemon.reconnect_initial
                    continue
                except LockLost as exc:
                    self.health.failed(exc)
                    log.error("mailbox=%s stopped fetching: %s; trying to take it again", self.name, exc)
                    self.lock.release()
                except DatabaseUnavailable as exc:
                    self.health.failed(exc)
                    log.error(
                        "mailbox=%s database problem, retrying in about %.1fs: %s", self.name, delay, exc
                    )
                except (OSError, TimeoutError, aioimaplib.AioImapException, ImapError) as exc:
                    self.health.failed(exc)
                    log.warning(
                        "mailbox=%s connection problem, reconnecting in about %.1fs: %s",
                        self.name,
                        delay,
                        exc or type(exc).__name__,
                    )
                wait = random.uniform(delay / 2, delay)
                delay = min(delay * 2, self.daemon.reconnect_max)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=wait)
        finally:
            self.lock.dispose()

    async def _guarded_session(self, stop: asyncio.Event) -> None:
        """The IMAP session, for as long as this instance still holds the mailbox's lock."""
        session = asyncio.ensure_future(self._session(stop))
        watch = asyncio.ensure_future(self.lock.watch())
        try:
            await asyncio.wait({session, watch}, return_when=asyncio.FIRST_COMPLETED)
            if watch.done():
                watch.result()  # raises LockLost
            session.result()
        finally:
            watch.cancel()
            if not session.done():
                session.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await session

    async def _select(self, conn: Connection) -> Selected:
        folder = self.settings.folder
        response = await conn.call(conn.client.select(quote(folder)))
        if response.result != "OK":
            text = b" ".join(bytes(line) for line in response.lines[-1:]).decode(errors="replace")
            raise ImapError(f"cannot select folder {folder!r} (missing, renamed or not permitted?): {text}")
        text = b"\n".join(bytes(line) for line in response.lines)
        uidvalidity = _UIDVALIDITY.search(text)
        if uidvalidity is None:
            raise ImapError(f"SELECT {folder}: the server sent no UIDVALIDITY")
        flags = _PERMANENT_FLAGS.search(text)
        read_only = b"[READ-ONLY]" in text.upper()
        return Selected(int(uidvalidity.group(1)), bool(flags and b"\\*" in flags.group(1)), read_only)

    async def _session(self, stop: asyncio.Event) -> None:
        conn = await connect(self.settings.imap, self.password)
        self.health.logged_in()
        client = conn.client
        try:
            for folder in (self.settings.processed_folder, self.settings.quarantine_folder):
                await conn.call(client.create(quote(folder)))  # NO when it exists already: fine
            selected = await self._select(conn)
            if selected.read_only and not self._read_only_reported:
                self._read_only_reported = True
                await asyncio.to_thread(self._record_read_only)
            last_uid = await asyncio.to_thread(self._checkpoint, selected.uidvalidity)
            idle = self.daemon.idle and client.has_capability("IDLE")
            log.info(
                "mailbox=%s watching %s uidvalidity=%s from uid=%s, %s%s",
                self.name,
                self.settings.folder,
                selected.uidvalidity,
                last_uid,
                "waiting with IDLE" if idle else f"polling every {self.daemon.poll_interval:g}s",
                " (read-only)" if selected.read_only else "",
            )
            while not stop.is_set():
                last_uid, more = await self._drain(conn, selected, last_uid, stop)
                if more or stop.is_set():
                    continue
                if idle:
                    await self._idle(conn, stop)
                else:
                    await self._poll_wait(conn, stop)
        finally:
            await conn.logout()

    def _record_read_only(self) -> None:
        detail = (
            f"folder {self.settings.folder} of mailbox {self.name} is read-only: messages are "
            "registered but cannot be flagged or moved; the checkpoint keeps them from being "
            "registered twice"
        )
        log.warning("mailbox=%s %s", self.name, detail)
        with Session(self.intake.engine) as session:
            store.record(session, EventKind.MAILBOX_READ_ONLY, detail, mailbox=self.name)
            session.commit()

    def _checkpoint(self, uidvalidity: int) -> int:
        with Session(self.intake.engine) as session:
            state = store.checkpoint(session, self.name)
            if state is None:
                return 0
            if state.uidvalidity != uidvalidity:
                detail = (
                    f"UIDVALIDITY of {self.settings.folder} changed {state.uidvalidity} -> {uidvalidity}: "
                    "reading the folder again; messages already registered are recognised by Message-ID"
                )
                log.warning("mailbox=%s %s", self.name, detail)
                store.record(
                    session,
                    EventKind.UIDVALIDITY_CHANGED,
                    detail,
                    mailbox=self.name,
                    old=state.uidvalidity,
                    new=uidvalidity,
                    last_uid=state.last_uid,
                )
                state.uidvalidity = uidvalidity
                state.last_uid = 0
                session.add(state)
                session.commit()
                return 0
            return state.last_uid

    async def _drain(
        self, conn: Connection, selected: Selected, last_uid: int, stop: asyncio.Event
    ) -> tuple[int, bool]:
        """Register one batch of new messages; returns the new last UID and whether more wait."""
        client = conn.client
        # Dovecot looks for newly delivered mail after a UID SEARCH, not before it: without the
        # NOOP a poll finds only what arrived before the previous poll, a whole interval late.
        _ok(await conn.call(client.noop()), "NOOP")
        response = _ok(
            await conn.call(client.uid_search(f"UID {last_uid + 1}:*", charset=None)), "UID SEARCH"
        )
        uids = sorted(uid for uid in parse_search(response.lines) if uid > last_uid)
        self.health.polled(uids[-1] - last_uid if uids else 0)
        if not uids:
            return last_uid, False
        batch = uids[: self.daemon.batch_size]
        # Sizes first: a message over the limit is never downloaded, only its header.
        answer = _ok(await conn.call(client.uid("fetch", _uid_set(batch), "(UID RFC822.SIZE)")), "UID FETCH")
        sizes = parse_sizes(answer.lines)
        limit = self.intake.config.limits.max_message_size
        oversized = {uid for uid in batch if sizes.get(uid, 0) > limit}
        messages: dict[int, bytes] = {}
        for uids_wanted, item in (
            ([uid for uid in batch if uid not in oversized], "BODY.PEEK[]"),
            (sorted(oversized), "BODY.PEEK[HEADER]"),
        ):
            if uids_wanted:
                answer = _ok(
                    await conn.call(client.uid("fetch", _uid_set(uids_wanted), f"(UID {item})")), "UID FETCH"
                )
                messages.update(parse_fetch(answer.lines))
        del answer  # aioimaplib's copy of the batch: a big message would otherwise be held twice
        arrivals: list[Arrival] = []
        for uid in batch:
            raw = messages.pop(uid, None)
            if raw is None:
                log.info(
                    "mailbox=%s uid=%s vanished before it could be fetched (deleted or moved by a person)",
                    self.name,
                    uid,
                )
                continue
            origin = Origin(self.name, selected.uidvalidity, uid)
            arrivals.append(Arrival(origin, raw, sizes[uid] if uid in oversized else None))
        self.health.batch(len(arrivals))
        halt = threading.Event()
        try:
            registered, failure = await asyncio.to_thread(
                self._register_all, arrivals, stop, halt, asyncio.get_running_loop()
            )
        finally:
            halt.set()  # cancelled (lock lost, shutdown): the thread stops after the message in hand
        if registered:
            last_uid = registered[-1][0].uid
            await self._mark_all(conn, selected, registered)
        if failure is not None:
            origin, raw, exc = failure
            if isinstance(exc, DatabaseUnavailable):
                raise exc  # the database, not the message: reconnect and try again later
            outcome = await self._failed(raw, origin, exc)
            if outcome is None:
                return last_uid, True
            self._log(origin, outcome)
            last_uid = origin.uid
            await self._mark_all(conn, selected, [(origin, outcome)])
        # Always SEARCH again before IDLE: mail that arrived while this batch was processed was
        # announced (EXISTS) in the answer to a FETCH or STORE, and IDLE will not announce it again.
        return last_uid, True

    def _register_all(
        self,
        arrivals: list[Arrival],
        stop: asyncio.Event,
        halt: threading.Event,
        loop: asyncio.AbstractEventLoop,
    ) -> tuple[list[tuple[Origin, Outcome]], tuple[Origin, bytes, Exception] | None]:
        """Register a fetched batch back to back, each message in its own transaction, in one
        worker thread: a hop back to the event loop between messages left the intake idle while
        the loop served the sender. Stops at the first failure, which it returns."""
        registered: list[tuple[Origin, Outcome]] = []
        parses = self.parsers.submit([None if a.oversized is not None else a.raw for a in arrivals])
        for (origin, raw, oversized), parsing in zip(arrivals, parses, strict=True):
            if stop.is_set() or halt.is_set():
                break
            try:
                if oversized is not None:
                    outcome = self.intake.refuse_oversized(raw, oversized, origin)
                else:
                    outcome = self.intake.process(raw, origin, self.parsers.result(parsing))
            except Exception as exc:  # judged by the caller: retry, quarantine, or reconnect
                return registered, (origin, raw, exc)
            self.failures.pop((origin.uidvalidity, origin.uid), None)
            self._log(origin, outcome)
            if outcome.queued_mail:
                loop.call_soon_threadsafe(self.on_queued)
            registered.append((origin, outcome))
        return registered, None

    async def _failed(self, raw: bytes, origin: Origin, exc: Exception) -> Outcome | None:
        """One bad message must not stop the mailbox: count the failure, wait a little and let the
        next round try again; after MAX_ATTEMPTS quarantine it. None while it stays to be retried."""
        key = (origin.uidvalidity, origin.uid)
        attempts = self.failures.get(key, 0) + 1
        self.failures[key] = attempts
        log.error(
            "mailbox=%s uid=%s processing failed (attempt %s of %s)",
            self.name,
            origin.uid,
            attempts,
            MAX_ATTEMPTS,
            exc_info=exc,
        )
        if attempts < MAX_ATTEMPTS:
            await asyncio.sleep(min(2.0**attempts, 30.0))
            return None
        quarantined = await self._quarantine(raw, origin, exc)
        if quarantined is not None:
            self.failures.pop(key, None)
        return quarantined

    async def _mark_all(
        self, conn: Connection, selected: Selected, registered: list[tuple[Origin, Outcome]]
    ) -> None:
        """Flag or move registered messages, one command per destination. Registered and
        checkpointed already, so a message that cannot be marked is only a cosmetic problem."""
        if selected.read_only:
            return
        quarantined: list[int] = []
        processed: list[int] = []
        for origin, outcome in registered:
            aside = outcome.kind in (OutcomeKind.QUARANTINED, OutcomeKind.REFUSED)
            (quarantined if aside else processed).append(origin.uid)
        for uids, aside in ((_uid_set(processed), False), (_uid_set(quarantined), True)):
            if not uids:
                continue
            try:
                await self._mark(conn, selected, uids, quarantined=aside)
            except ImapError as exc:
                log.warning(
                    "mailbox=%s uid=%s registered but could not be marked "
                    "(deleted or moved by a person?): %s",
                    self.name,
                    uids,
                    exc,
                )

    async def _quarantine(self, raw: bytes, origin: Origin, error: Exception) -> Outcome | None:
        """Set the message aside; None when even that failed (the database is away, say): then
        the worker must live on and try again later, not die with the mailbox unwatched."""
        try:
            return await asyncio.to_thread(self.intake.quarantine, raw, origin, error)
        except Exception:
            log.exception("mailbox=%s uid=%s could not be quarantined; will try again", self.name, origin.uid)
            await asyncio.sleep(30.0)
            return None

    def _log(self, origin: Origin, outcome: Outcome) -> None:
        self.health.counted(outcome.kind)
        log.info(
            "mailbox=%s uid=%s %s%s: %s",
            self.name,
            origin.uid,
            outcome.kind.value,
            f" case={outcome.case_number}" if outcome.case_number else "",
            outcome.summary,
        )

    async def _mark(self, conn: Connection, selected: Selected, uids: str, *, quarantined: bool) -> None:
        if quarantined:
            folder: str | None = self.settings.quarantine_folder
        elif self.settings.after_processing == "move":
            folder = self.settings.processed_folder
        else:
            folder = None
        if folder is not None and await self._move(conn, uids, folder):
            return
        keyword = QUARANTINE_KEYWORD if quarantined else PROCESSED_KEYWORD
        flags = f"(\\Seen {keyword})" if selected.keywords_allowed else "(\\Seen)"
        _ok(await conn.call(conn.client.uid("store", uids, "+FLAGS.SILENT", flags)), "UID STORE")

    async def _move(self, conn: Connection, uids: str, folder: str) -> bool:
        """Move messages (a UID set); False where the server cannot, so the caller flags them instead."""
        client = conn.client
        if client.has_capability("MOVE"):
            response = await conn.call(client.uid("move", uids, quote(folder)))
            if response.result == "OK":
                return True
            log.warning(
                "mailbox=%s uid=%s cannot move to %s: %s",
                self.name,
                uids,
                folder,
                response.lines[-1:],
            )
            return False
        if not client.has_capability("UIDPLUS"):
            return False
        if (await conn.call(client.uid("copy", uids, quote(folder)))).result != "OK":
            return False
        _ok(await conn.call(client.uid("store", uids, "+FLAGS.SILENT", "(\\Deleted)")), "UID STORE")
        _ok(await conn.call(client.uid("expunge", uids)), "UID EXPUNGE")
        return True

    async def _poll_wait(self, conn: Connection, stop: asyncio.Event) -> None:
        stopping = asyncio.ensure_future(stop.wait())
        try:
            await asyncio.wait({stopping, conn.lost}, timeout=self.daemon.poll_interval)
        finally:
            stopping.cancel()
        if conn.lost.done():
            raise ConnectionLost("the IMAP server closed the connection while we waited to poll")

    async def _idle(self, conn: Connection, stop: asyncio.Event) -> None:
        """Wait for the server to announce new mail, re-issuing IDLE before its timeout.

        aioimaplib ends the wait after idle_timeout (< the 30 minutes RFC 2177 lets servers drop
        an idle client); the caller then looks for new mail and issues IDLE again. A connection
        that dies meanwhile (server restart, network) ends the wait at once.
        """
        client = conn.client
        idle = await conn.call(client.idle_start(timeout=self.daemon.idle_timeout))
        self.health.idling(True)
        push = asyncio.ensure_future(client.wait_server_push(timeout=self.daemon.idle_timeout + 10))
        stopping = asyncio.ensure_future(stop.wait())
        try:
            await asyncio.wait({push, stopping, conn.lost}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            self.health.idling(False)
            stopping.cancel()
            push.cancel()
            if not conn.lost.done():
                if client.has_pending_idle():
                    client.idle_done()
                await asyncio.wait_for(conn.call(idle), timeout=10)
        if conn.lost.done():
            raise ConnectionLost("the IMAP server closed the connection during IDLE")
