"""fetch: one worker per department mailbox, from IMAP to the intake and back to mark the mail.

Only UIDs above the stored checkpoint are asked for, so a poll costs the same however large the
folder grows. A message is marked on the server (flagged or moved) only after its transaction
has committed; the checkpoint, not the mark, is what decides whether a message is new.
This is the worker loop and its decisions (what to fetch, what a failure costs); how to say it
to an IMAP server is imap.py's job.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import threading
from collections.abc import Callable
from typing import Any, NamedTuple

import aioimaplib
from pydantic import SecretStr
from sqlmodel import Session

from mailrouter import store
from mailrouter.config import DaemonSettings, MailboxSettings
from mailrouter.errors import AttemptsExhausted, DatabaseUnavailable, ImapError, LockLost, TokenRefused
from mailrouter.health import MailboxHealth
from mailrouter.imap import (
    PROCESSED_KEYWORD,
    QUARANTINE_KEYWORD,
    Connection,
    Selected,
    connect,
    search_date,
)
from mailrouter.intake import Intake
from mailrouter.lease import MailboxLock
from mailrouter.oauth import TokenSource
from mailrouter.parsepool import ParsePool
from mailrouter.plan import Origin, Outcome, OutcomeKind
from mailrouter.vocabulary import EventKind

log = logging.getLogger(__name__)
# aioimaplib reports every untagged response it does not use at INFO: noise in a daemon's journal.
logging.getLogger("aioimaplib").setLevel(logging.WARNING)

MAX_ATTEMPTS = 3


class Arrival(NamedTuple):
    origin: Origin
    raw: bytes  # the message; only its header when it is over the size limit
    oversized: int | None = None  # then: the size the server reported


def take_batch(
    uids: list[int], sizes: dict[int, int | None], budget: int, max_message_size: int
) -> list[int]:
    """The first UIDs whose sizes fit in `budget` bytes, at least one. A message whose size the
    server did not say (None) goes alone: its size is known only once received, and checked
    then; one over max_message_size costs only the header that is fetched of it; one the server
    did not answer for at all (not in sizes) costs nothing, and is looked up after the fetch."""
    batch: list[int] = []
    used = 0
    for uid in uids:
        if uid in sizes and sizes[uid] is None:
            return batch or [uid]
        cost = sizes.get(uid) or 0
        cost = 0 if cost > max_message_size else cost
        if batch and used + cost > budget:
            break
        batch.append(uid)
        used += cost
    return batch


class Failure(NamedTuple):
    origin: Origin
    raw: bytes
    error: Exception
    attempts: int  # tries begun so far, this one included


class MailboxWorker:
    def __init__(
        self,
        name: str,
        settings: MailboxSettings,
        password: SecretStr | TokenSource,
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
        self._read_only_reported = False
        self.health = MailboxHealth(name)
        # Messages whose last counted try ended in a database outage: not their fault, so
        # their next try is not counted again.
        self._uncounted: set[Origin] = set()

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
                except TokenRefused as exc:
                    self.health.failed(exc)  # the event and the alert are the token source's
                    log.error(
                        "mailbox=%s stopped fetching, retrying in about %.1fs: %s", self.name, delay, exc
                    )
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

    async def _session(self, stop: asyncio.Event) -> None:
        conn = await connect(self.settings.imap, self.password)
        self.health.logged_in()
        try:
            await conn.create_folders(self.settings.processed_folder, self.settings.quarantine_folder)
            selected = await conn.select(self.settings.folder)
            if selected.read_only and not self._read_only_reported:
                self._read_only_reported = True
                await asyncio.to_thread(self._record_read_only)
            last_uid = await self._start_position(conn, selected)
            idle = self.daemon.idle and conn.client.has_capability("IDLE")
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
                if isinstance(self.password, TokenSource):
                    # Renewed when due (not per poll): a refusal stops this session now rather
                    # than at the next reconnect, hours later, so the mailbox goes red at once.
                    await self.password.token()
                last_uid, more = await self._drain(conn, selected, last_uid, stop)
                if more or stop.is_set():
                    continue
                if idle:
                    self.health.idling(True)
                    try:
                        await conn.idle_wait(stop, self._until_renewal(self.daemon.idle_timeout))
                    finally:
                        self.health.idling(False)
                else:
                    await conn.poll_wait(stop, self._until_renewal(self.daemon.poll_interval))
        finally:
            await conn.logout()

    def _until_renewal(self, wait: float) -> float:
        """A wait (IDLE, a poll) ends when the token is due, so that it is renewed on time."""
        if isinstance(self.password, TokenSource):
            return min(wait, max(self.password.due_in(), 0.5))
        return wait

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

    async def _start_position(self, conn: Connection, selected: Selected) -> int:
        """The last UID already dealt with: the checkpoint, or where a first start or a new
        UIDVALIDITY begins (recorded with what it leaves alone)."""
        stored = await asyncio.to_thread(self._stored_checkpoint)
        if stored is not None and stored[0] == selected.uidvalidity:
            return stored[1]
        if stored is None:
            kind, last_uid, detail, data = await self._first_start(conn, selected)
        else:
            kind, last_uid, detail, data = await self._new_uidvalidity(conn, selected, *stored)
        log.warning("mailbox=%s %s", self.name, detail)
        await asyncio.to_thread(self._restart_at, selected.uidvalidity, last_uid, kind, detail, data)
        return last_uid

    async def _first_start(
        self, conn: Connection, selected: Selected
    ) -> tuple[EventKind, int, str, dict[str, object]]:
        folder, settings = self.settings.folder, self.settings
        kind = EventKind.MAILBOX_FIRST_START
        if settings.since is not None:
            older = len(await conn.search(f"BEFORE {search_date(settings.since)}"))
            detail = (
                f"first start on {folder}: registering mail that arrived on or after "
                f"{settings.since} ({selected.exists - older} messages); {older} older left untouched"
            )
            return kind, 0, detail, {"since": str(settings.since), "untouched": older}
        if settings.start == "all":
            detail = (
                f"first start on {folder}: registering all {selected.exists} messages in it (start = all)"
            )
            return kind, 0, detail, {"start": "all", "untouched": 0}
        if selected.uidnext is not None:
            last_uid = selected.uidnext - 1
        else:
            last_uid = max(await conn.search("ALL"), default=0)
        detail = (
            f"first start on {folder}: {selected.exists} messages already there left untouched "
            f"(start = now); registering mail from UID {last_uid + 1} on"
        )
        return kind, last_uid, detail, {"start": "now", "untouched": selected.exists, "last_uid": last_uid}

    async def _new_uidvalidity(
        self, conn: Connection, selected: Selected, old: int, old_last_uid: int
    ) -> tuple[EventKind, int, str, dict[str, object]]:
        marked = 0
        if selected.keywords_allowed:
            marked = len(await conn.search(f"OR KEYWORD {PROCESSED_KEYWORD} KEYWORD {QUARANTINE_KEYWORD}"))
        detail = (
            f"UIDVALIDITY of {self.settings.folder} changed {old} -> {selected.uidvalidity}: "
            f"reading the folder again; {marked} of its {selected.exists} messages carry "
            f"{PROCESSED_KEYWORD} or {QUARANTINE_KEYWORD} and are skipped, the others already "
            "registered are recognised by Message-ID (or content) and recorded as duplicates"
        )
        data: dict[str, object] = {
            "old": old,
            "new": selected.uidvalidity,
            "last_uid": old_last_uid,
            "skipped_marked": marked,
        }
        return EventKind.UIDVALIDITY_CHANGED, 0, detail, data

    def _stored_checkpoint(self) -> tuple[int, int] | None:
        with Session(self.intake.engine) as session:
            state = store.checkpoint(session, self.name)
            return None if state is None else (state.uidvalidity, state.last_uid)

    def _restart_at(
        self, uidvalidity: int, last_uid: int, kind: EventKind, detail: str, data: dict[str, Any]
    ) -> None:
        with Session(self.intake.engine) as session:
            store.record(session, kind, detail, mailbox=self.name, **data)
            store.set_checkpoint(session, self.name, uidvalidity, last_uid)
            session.commit()

    def _criteria(self, selected: Selected) -> str:
        """What new mail must also match: arrived since the configured day, and not marked by us
        already (after a UIDVALIDITY change, or a database started afresh)."""
        parts = []
        if self.settings.since is not None:
            parts.append(f"SINCE {search_date(self.settings.since)}")
        if selected.keywords_allowed:
            parts.append(f"UNKEYWORD {PROCESSED_KEYWORD} UNKEYWORD {QUARANTINE_KEYWORD}")
        return " ".join(parts)

    async def _drain(
        self, conn: Connection, selected: Selected, last_uid: int, stop: asyncio.Event
    ) -> tuple[int, bool]:
        """Register one batch of new messages; returns the new last UID and whether more wait."""
        uids = await conn.search_new(last_uid, self._criteria(selected))
        self.health.polled(uids[-1] - last_uid if uids else 0)
        if not uids:
            return last_uid, False
        # Sizes first: a message over the limit is never downloaded, only its header, and a
        # batch holds no more bytes than batch_bytes.
        sizes, arrived = await conn.describe(uids[: self.daemon.batch_size])
        limit = self.intake.config.limits.max_message_size
        batch = take_batch(uids[: self.daemon.batch_size], sizes, self.daemon.batch_bytes, limit)
        oversized = {uid for uid in batch if (sizes.get(uid) or 0) > limit}
        messages, refused = await self._fetch(conn, [uid for uid in batch if uid not in oversized])
        headers, headers_refused = await self._fetch(conn, sorted(oversized), header_only=True)
        messages.update(headers)
        refused.update(headers_refused)
        vanished = []
        for uid in batch:
            if uid in messages or uid in refused:
                continue
            if await conn.search(f"UID {uid}"):
                refused[uid] = ImapError(f"the server left UID {uid} out of its FETCH answer")
            else:
                vanished.append(uid)
        if vanished:
            await asyncio.to_thread(self._record_vanished, selected, vanished)
        arrivals: list[Arrival] = []
        unfetched: tuple[Origin, Exception] | None = None
        for uid in batch:
            origin = Origin(self.name, selected.uidvalidity, uid, arrived.get(uid))
            if uid in refused:
                # Registering what comes after it would move the checkpoint past it: it goes
                # first next round, and counts its failures like a message that fails to process.
                unfetched = (origin, refused[uid])
                break
            raw = messages.pop(uid, None)
            if raw is not None:
                arrivals.append(Arrival(origin, raw, sizes.get(uid) if uid in oversized else None))
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
        if failure is None and unfetched is not None and len(registered) == len(arrivals):
            origin, error = unfetched
            failure = Failure(origin, b"", error, await asyncio.to_thread(self._count_attempt, origin))
        if failure is not None:
            if isinstance(failure.error, DatabaseUnavailable):
                raise failure.error  # the database, not the message: reconnect and try again later
            outcome = await self._failed(failure)
            if outcome is not None:
                self._log(failure.origin, outcome)
                last_uid = failure.origin.uid
                await self._mark_all(conn, selected, [(failure.origin, outcome)])
        if registered or failure is not None:
            await asyncio.to_thread(self._forget_attempts, selected.uidvalidity, last_uid)
        # Always SEARCH again before IDLE: mail that arrived while this batch was processed was
        # announced (EXISTS) in the answer to a FETCH or STORE, and IDLE will not announce it again.
        return last_uid, True

    async def _fetch(
        self, conn: Connection, uids: list[int], *, header_only: bool = False
    ) -> tuple[dict[int, bytes], dict[int, ImapError]]:
        """The messages, and the server's refusals: a NO to a batch (a server's answer when it
        cannot deliver one of them) is asked again one UID at a time, so only that one is left."""
        try:
            return await conn.fetch(uids, header_only=header_only), {}
        except ImapError as exc:
            if len(uids) == 1:
                return {}, {uids[0]: ImapError(f"the server refused to fetch UID {uids[0]}: {exc}")}
            log.warning(
                "mailbox=%s FETCH of %s messages refused (%s): one at a time", self.name, len(uids), exc
            )
        messages: dict[int, bytes] = {}
        refused: dict[int, ImapError] = {}
        for uid in uids:
            try:
                messages.update(await conn.fetch([uid], header_only=header_only))
            except ImapError as exc:
                refused[uid] = ImapError(f"the server refused to fetch UID {uid}: {exc}")
        return messages, refused

    def _record_vanished(self, selected: Selected, uids: list[int]) -> None:
        with Session(self.intake.engine) as session:
            for uid in uids:
                detail = (
                    f"message UID {uid} in {self.settings.folder} of {self.name} vanished before it "
                    "could be fetched: the server no longer has it (deleted or moved by a person)"
                )
                log.info("mailbox=%s %s", self.name, detail)
                store.record(
                    session,
                    EventKind.MESSAGE_VANISHED,
                    detail,
                    mailbox=self.name,
                    uid=uid,
                    uidvalidity=selected.uidvalidity,
                )
            session.commit()

    def _register_all(
        self,
        arrivals: list[Arrival],
        stop: asyncio.Event,
        halt: threading.Event,
        loop: asyncio.AbstractEventLoop,
    ) -> tuple[list[tuple[Origin, Outcome]], Failure | None]:
        """Register a fetched batch back to back, each message in its own transaction, in one
        worker thread: a hop back to the event loop between messages left the intake idle while
        the loop served the sender. Stops at the first failure, which it returns.

        Each try is counted in the database before it begins, so a message that kills or hangs
        the process is known after the restart: one tried MAX_ATTEMPTS times already is set
        aside without being parsed again."""
        registered: list[tuple[Origin, Outcome]] = []
        exhausted = self._exhausted(arrivals)
        parses = self.parsers.submit(
            [None if a.oversized is not None or a.origin.uid in exhausted else a.raw for a in arrivals]
        )
        for (origin, raw, oversized), parsing in zip(arrivals, parses, strict=True):
            if stop.is_set() or halt.is_set():
                break
            attempts = exhausted.get(origin.uid, 0)
            try:
                if attempts:
                    outcome = self.intake.quarantine(
                        raw,
                        origin,
                        AttemptsExhausted(
                            f"processing began {attempts} times and never finished "
                            "(the process died, was killed or hung each time)"
                        ),
                    )
                elif oversized is not None:
                    attempts = self._count_attempt(origin)
                    outcome = self.intake.refuse_oversized(raw, oversized, origin)
                else:
                    # Counted once its parse is back: the wait for a parse worker (one that is
                    # still starting, say) is not a try, and a worker that a message kills is
                    # the pool's to replace; what can take the daemon down comes after.
                    parsed = self.parsers.result(parsing)
                    attempts = self._count_attempt(origin)
                    outcome = self.intake.process(raw, origin, parsed)
            except Exception as exc:  # judged by the caller: retry, quarantine, or reconnect
                if isinstance(exc, DatabaseUnavailable):
                    self._uncounted.add(origin)
                return registered, Failure(origin, raw, exc, attempts)
            self._log(origin, outcome)
            if outcome.queued_mail:
                loop.call_soon_threadsafe(self.on_queued)
            registered.append((origin, outcome))
        return registered, None

    def _exhausted(self, arrivals: list[Arrival]) -> dict[int, int]:
        """{UID: tries begun} of the messages tried MAX_ATTEMPTS times already."""
        if not arrivals:
            return {}
        uidvalidity = arrivals[0].origin.uidvalidity
        with Session(self.intake.engine) as session:
            tried = store.attempts_of(session, self.name, uidvalidity, [a.origin.uid for a in arrivals])
        return {uid: n for uid, n in tried.items() if n >= MAX_ATTEMPTS}

    def _count_attempt(self, origin: Origin) -> int:
        with self.intake.engine.begin() as connection:
            attempts = store.count_attempt(connection, origin, 0 if origin in self._uncounted else 1)
        self._uncounted.discard(origin)
        return attempts

    def _forget_attempts(self, uidvalidity: int, last_uid: int) -> None:
        with Session(self.intake.engine) as session:
            store.forget_attempts(session, self.name, uidvalidity, last_uid)
            session.commit()

    async def _failed(self, failure: Failure) -> Outcome | None:
        """One bad message must not stop the mailbox: wait a little and let the next round try
        again; after MAX_ATTEMPTS quarantine it. None while it stays to be retried."""
        origin, raw, exc, attempts = failure
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
        return await self._quarantine(raw, origin, exc)

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
        for uids, aside in ((processed, False), (quarantined, True)):
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
        # Not the summary: it may quote a subject or name a sender; the case's events say it all.
        log.info(
            "mailbox=%s uid=%s %s%s",
            self.name,
            origin.uid,
            outcome.kind.value,
            f" case={outcome.case_number}" if outcome.case_number else "",
        )

    async def _mark(
        self, conn: Connection, selected: Selected, uids: list[int], *, quarantined: bool
    ) -> None:
        if quarantined:
            folder: str | None = self.settings.quarantine_folder
        elif self.settings.after_processing == "move":
            folder = self.settings.processed_folder
        else:
            folder = None
        keyword = QUARANTINE_KEYWORD if quarantined else PROCESSED_KEYWORD
        await conn.mark(selected, uids, keyword=keyword, move_to=folder)
