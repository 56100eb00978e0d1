"""privacy: personal data kept only as long as needed (retention), and found and erased on request.

Retention runs daily from the scheduler (`retention`): a case closed and left alone for its
department's `retain_months` loses its raw mail, its letters and its personal data (addresses,
names, subjects, texts, attachment names, the events' words) and keeps what the reports count
(times, department, category, priority, SLA outcome, satisfaction score, status history).
Screened mail, quarantined and refused mail's kept bytes, and sent letters' bodies have shorter
lives of their own ([privacy]). Each kind of work goes in bounded batches, one transaction each;
a case is claimed by setting its `anonymised_at` only where it is still unset, so instances
never take one twice, and one instance a day runs at all (its slot). Every run is one
`retention-run` event of counts.

Like outbox.py, this is a storage module: Core statements over the tables, plain data out.
"""

from __future__ import annotations

import binascii
import calendar
import hashlib
import hmac
import logging
import re
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, fields
from datetime import UTC, datetime, time, timedelta
from email import message_from_bytes
from email.errors import HeaderParseError
from email.header import decode_header, make_header
from email.policy import compat32
from typing import Any

from sqlalchemy import (
    JSON,
    Connection,
    Engine,
    LargeBinary,
    String,
    TypeDecorator,
    bindparam,
    cast,
    delete,
    exists,
    func,
    or_,
    select,
    update,
)
from sqlmodel import Session, SQLModel

from mailrouter import models, store
from mailrouter.config import Config
from mailrouter.errors import PrivacyError
from mailrouter.models import utcnow
from mailrouter.vocabulary import FINISHED, SET_ASIDE, CaseStatus, EventKind, OutboxState

log = logging.getLogger(__name__)

_C, _M, _A, _E = models.CASE.c, models.MESSAGE.c, models.ATTACHMENT.c, models.EVENT.c
_O, _R, _P = models.OUTBOX.c, models.RAW_MESSAGE.c, models.CUSTOMER.c
ANONYMISED = "(anonymised)"
# The daily run's slot, in the scheduled reports' table: no report can be named so.
RETENTION_SLOT = "(retention)"


def months_before(moment: datetime, months: int) -> datetime:
    """The same day and time `months` calendar months earlier (the month's last day if shorter)."""
    month_index = moment.year * 12 + moment.month - 1 - months
    year, month = divmod(month_index, 12)
    day = min(moment.day, calendar.monthrange(year, month + 1)[1])
    return moment.replace(year=year, month=month + 1, day=day)


@dataclass(frozen=True)
class Policy:
    """What is due for retention at `now`: each a moment before which it goes."""

    closed_before: Mapping[str, datetime]  # per department with retain_months: last changed before
    screened_before: datetime
    set_aside_before: datetime
    sent_before: datetime


def policy(config: Config, now: datetime) -> Policy:
    privacy = config.file.privacy
    return Policy(
        closed_before={
            name: months_before(now, mailbox.retain_months)
            for name, mailbox in config.mailboxes.items()
            if mailbox.retain_months
        },
        screened_before=now - timedelta(days=privacy.screened_days),
        set_aside_before=now - timedelta(days=privacy.quarantine_days),
        sent_before=now - timedelta(days=privacy.sent_body_days),
    )


@dataclass(frozen=True)
class Counts:
    cases: int = 0  # anonymised
    messages: int = 0  # of those cases, anonymised
    letters: int = 0  # outbox rows of those cases, deleted
    screened: int = 0  # messages screening kept out of any case, deleted
    set_aside: int = 0  # quarantined or refused: kept bytes deleted, reason blanked
    sent_bodies: int = 0  # sent letters' bodies emptied
    raw: int = 0  # raw messages deleted

    def __add__(self, other: Counts) -> Counts:
        return Counts(**{f.name: getattr(self, f.name) + getattr(other, f.name) for f in fields(self)})

    def __str__(self) -> str:
        return ", ".join(f"{f.name.replace('_', ' ')} {getattr(self, f.name)}" for f in fields(self))

    def as_data(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


# --- what is due ------------------------------------------------------------------------------


def _due_cases(closed_before: Mapping[str, datetime]) -> Any:
    departments = [
        (_C.department == department) & (_C.updated_at < before)
        for department, before in closed_before.items()
    ]
    return (
        select(_C.id)
        .where(_C.status == CaseStatus.CLOSED, _C.anonymised_at.is_(None), or_(*departments))
        .order_by(_C.id)
    )


_SCREENED = select(_M.id).where(_M.case_id.is_(None), _M.received_at < bindparam("before")).order_by(_M.id)
_SET_ASIDE = (
    select(_E.id, _E.data)
    .where(_E.kind.in_(sorted(SET_ASIDE)), _E.created_at < bindparam("before"), _E.detail != ANONYMISED)
    .order_by(_E.id)
)
_SENT_BODIES = (
    select(_O.id)
    .where(
        _O.state == OutboxState.SENT,
        _O.sent_at < bindparam("before"),
        (func.length(_O.data) > 0) | _O.original_sha256.is_not(None),
    )
    .order_by(_O.id)
)


def due(connection: Connection, rules: Policy) -> Counts:
    """What the next run would remove, counted without changing anything (`--dry-run`). Raw
    messages: those the due items refer to (one shared with mail that stays is kept)."""
    case_ids = (
        list(connection.execute(_due_cases(rules.closed_before)).scalars()) if rules.closed_before else []
    )
    screened = [row.id for row in connection.execute(_SCREENED, {"before": rules.screened_before})]
    set_aside = connection.execute(_SET_ASIDE, {"before": rules.set_aside_before}).all()
    shas = set(
        connection.execute(
            select(_M.raw_sha256).where(
                _M.case_id.in_(case_ids) | _M.id.in_(screened), _M.raw_sha256.is_not(None)
            )
        ).scalars()
    ) | {str(row.data["raw_sha256"]) for row in set_aside if row.data.get("raw_sha256")}

    def count(statement: Any, **params: Any) -> int:
        return int(
            connection.execute(select(func.count()).select_from(statement.subquery()), params).scalar_one()
        )

    return Counts(
        cases=len(case_ids),
        messages=count(select(_M.id).where(_M.case_id.in_(case_ids))),
        letters=count(select(_O.id).where(_O.case_id.in_(case_ids))),
        screened=len(screened),
        set_aside=len(set_aside),
        sent_bodies=count(_SENT_BODIES, before=rules.sent_before),
        raw=len(shas),
    )


# --- the work ---------------------------------------------------------------------------------


def anonymise_cases(session: Session, case_ids: Collection[int], now: datetime) -> Counts:
    """Take the cases' mail and personal data, keeping what the reports count; a case already
    anonymised (by another instance, say) is left alone. Customers left without a case go."""
    connection = session.connection()
    if not case_ids:
        return Counts()
    customers = set(
        connection.execute(
            select(_C.customer_id).where(_C.id.in_(list(case_ids)), _C.customer_id.is_not(None))
        ).scalars()
    )
    claimed = list(
        connection.execute(
            update(models.CASE)
            .where(_C.id.in_(list(case_ids)), _C.anonymised_at.is_(None))
            .values(
                anonymised_at=now,
                subject="",
                customer_id=None,
                satisfaction_comment="",
                survey_message_id="",
            )
            .returning(_C.id)
        ).scalars()
    )
    if not claimed:
        return Counts()
    messages = select(_M.id).where(_M.case_id.in_(claimed))
    shas = _raw_of(connection, claimed)
    connection.execute(update(models.ATTACHMENT).where(_A.message_id.in_(messages)).values(filename=""))
    anonymised = connection.execute(
        update(models.MESSAGE).where(_M.case_id.in_(claimed)).values(**_NO_PERSON)
    )
    connection.execute(update(models.EVENT).where(_E.case_id.in_(claimed)).values(detail=ANONYMISED, data={}))
    letters = connection.execute(delete(models.OUTBOX).where(_O.case_id.in_(claimed)))
    connection.execute(
        delete(models.CUSTOMER).where(_P.id.in_(customers), ~exists().where(_C.customer_id == _P.id))
    )
    return Counts(
        cases=len(claimed),
        messages=anonymised.rowcount,
        letters=letters.rowcount,
        raw=_delete_unreferenced_raw(connection, shas),
    )


# A message without the person: where it went and when stay; who, what and the bytes go.
_NO_PERSON: dict[str, Any] = {
    "from_addr": "",
    "from_name": "",
    "to_addrs": [],
    "cc_addrs": [],
    "subject": "",
    "text": "",
    "html": "",
    "in_reply_to": "",
    "references": [],
    "message_id": "",
    "dedupe_key": None,
    "raw_sha256": None,
}


def _raw_of(connection: Connection, case_ids: Collection[int]) -> set[str]:
    """The raw messages the cases' messages and letters refer to."""
    return set(
        connection.execute(
            select(_M.raw_sha256).where(_M.case_id.in_(list(case_ids)), _M.raw_sha256.is_not(None))
        ).scalars()
    ) | set(
        connection.execute(
            select(_O.original_sha256).where(_O.case_id.in_(list(case_ids)), _O.original_sha256.is_not(None))
        ).scalars()
    )


def _delete_unreferenced_raw(connection: Connection, shas: Collection[str]) -> int:
    """Delete these raw messages where nothing refers to them any more: no message, no letter,
    no quarantine or refusal whose bytes are kept for a retry."""
    deleted = 0
    for sha in sorted(shas):
        kept_for_retry = select(_E.id).where(
            _E.kind.in_(sorted(SET_ASIDE)), cast(_E.data, String).contains(sha)
        )
        referenced = (
            connection.execute(select(_M.id).where(_M.raw_sha256 == sha).limit(1)).first()
            or connection.execute(select(_O.id).where(_O.original_sha256 == sha).limit(1)).first()
            or connection.execute(kept_for_retry.limit(1)).first()
        )
        if not referenced:
            deleted += connection.execute(delete(models.RAW_MESSAGE).where(_R.sha256 == sha)).rowcount
    return deleted


def _delete_screened(session: Session, rows: list[Any]) -> Counts:
    return _delete_caseless(session.connection(), [row.id for row in rows])


def _delete_caseless(connection: Connection, message_ids: list[int]) -> Counts:
    """Messages on no case (screened), with their events and attachments, and their raw mail."""
    shas = set(
        connection.execute(
            select(_M.raw_sha256).where(_M.id.in_(message_ids), _M.raw_sha256.is_not(None))
        ).scalars()
    )
    connection.execute(delete(models.EVENT).where(_E.message_id.in_(message_ids)))
    connection.execute(delete(models.ATTACHMENT).where(_A.message_id.in_(message_ids)))
    deleted = connection.execute(delete(models.MESSAGE).where(_M.id.in_(message_ids))).rowcount
    return Counts(screened=deleted, raw=_delete_unreferenced_raw(connection, shas))


def _forget_set_aside(session: Session, rows: list[Any]) -> Counts:
    """The quarantine's and refusal's record stays (that it happened, when, where); the bytes
    and the reason, which may quote the mail, go."""
    connection = session.connection()
    for row in rows:
        data = {key: value for key, value in row.data.items() if key in ("uid", "uidvalidity")}
        connection.execute(update(models.EVENT).where(_E.id == row.id).values(detail=ANONYMISED, data=data))
    shas = {str(row.data["raw_sha256"]) for row in rows if row.data.get("raw_sha256")}
    return Counts(set_aside=len(rows), raw=_delete_unreferenced_raw(connection, shas))


def _empty_sent(session: Session, rows: list[Any]) -> Counts:
    emptied = session.connection().execute(
        update(models.OUTBOX)
        .where(_O.id.in_([row.id for row in rows]))
        .values(data=b"", original_sha256=None, original_at=None)
    )
    return Counts(sent_bodies=emptied.rowcount)


def run(engine: Engine, rules: Policy, batch: int, now: datetime | None = None) -> Counts:
    """One retention run, batch after batch until nothing is due; the `retention-run` event."""
    now = now or utcnow()
    total = Counts()
    steps: list[tuple[Any, dict[str, Any], Callable[[Session, list[Any]], Counts]]] = [
        (_SCREENED, {"before": rules.screened_before}, _delete_screened),
        (_SET_ASIDE, {"before": rules.set_aside_before}, _forget_set_aside),
        (_SENT_BODIES, {"before": rules.sent_before}, _empty_sent),
    ]
    if rules.closed_before:
        anonymise = lambda session, rows: anonymise_cases(session, [row.id for row in rows], now)  # noqa: E731
        steps.insert(0, (_due_cases(rules.closed_before), {}, anonymise))
    for statement, params, apply in steps:
        while True:
            with Session(engine) as session:
                rows = list(session.connection().execute(statement.limit(batch), params))
                if rows:
                    total = total + apply(session, rows)
                session.commit()
            if len(rows) < batch:
                break
    with Session(engine) as session:
        store.record(session, EventKind.RETENTION_RUN, f"retention: {total}", counts=total.as_data())
        session.commit()
    log.info("retention run: %s", total)
    return total


def day_slot(now: datetime) -> datetime:
    """The day's retention slot: midnight UTC."""
    return datetime.combine(now.astimezone(UTC).date(), time(0), UTC)


def run_daily(engine: Engine, config: Config, instance: str, now: datetime | None = None) -> Counts | None:
    """The day's run, by the one instance that takes its slot; None when another has it."""
    now = now or utcnow()
    with Session(engine) as session:
        if store.report_slot_taken(session, RETENTION_SLOT, day_slot(now)) is not None:
            return None
        if not store.claim_report_slot(session, RETENTION_SLOT, day_slot(now), instance):
            return None
        session.commit()
    try:
        return run(engine, policy(config, now), config.file.privacy.retention_batch, now)
    except BaseException:  # the database away, say: the day's run is tried again at the next round
        with Session(engine) as session:
            store.release_report_slot(session, RETENTION_SLOT, day_slot(now), instance)
            session.commit()
        raise


# --- access and erasure: everything about one address ------------------------------------------

ERASED = "(erased)"
# Lines of a person's own mail at least this long are looked for elsewhere (quoted in an
# agent's answer, say) and erased there too; shorter ones ("Thanks!") say nothing about anyone.
QUOTED_LINE = 24
_RAW_SCAN = 200  # raw messages read per query when searching the raw store


@dataclass(frozen=True)
class Holdings:
    """What the desk holds about one address."""

    address: str
    customer_id: int | None
    own_cases: tuple[int, ...]  # the person is the customer
    other_cases: tuple[int, ...]  # the person wrote, or was in To or Cc, on someone else's case
    messages: tuple[int, ...]  # written by the person, or to them or copying them
    caseless: tuple[int, ...]  # of those, the ones screening kept out of any case
    raw: tuple[str, ...]  # raw messages naming the address as read (decoded): theirs and others'
    set_aside: tuple[int, ...]  # quarantine and refusal events whose kept bytes hold the address
    open_cases: tuple[str, ...]  # numbers of own cases not yet resolved or closed


def _mentions(address: str) -> Any:
    pattern = f"%{address}%"
    return or_(
        func.lower(_M.from_addr) == address,
        func.lower(cast(_M.to_addrs, String)).like(pattern),
        func.lower(cast(_M.cc_addrs, String)).like(pattern),
    )


def holdings(connection: Connection, address: str) -> Holdings:
    address = address.strip().lower()
    customer_id = connection.execute(select(_P.id).where(func.lower(_P.address) == address)).scalar()
    own = connection.execute(
        select(_C.id, _C.number, _C.status).where(_C.customer_id == customer_id).order_by(_C.id)
    ).all()
    candidates = connection.execute(
        select(_M.id, _M.case_id, _M.from_addr, _M.to_addrs, _M.cc_addrs).where(_mentions(address))
    ).all()
    messages = [
        row
        for row in candidates
        if address in {a.lower() for a in (row.from_addr, *row.to_addrs, *row.cc_addrs)}
    ]
    own_ids = {row.id for row in own}
    raw = _raw_naming(connection, [address])
    set_aside = _set_aside_keeping(connection, raw)
    return Holdings(
        address=address,
        customer_id=customer_id,
        own_cases=tuple(sorted(own_ids)),
        other_cases=tuple(sorted({r.case_id for r in messages if r.case_id is not None} - own_ids)),
        messages=tuple(r.id for r in messages),
        caseless=tuple(r.id for r in messages if r.case_id is None),
        raw=tuple(sorted(raw)),
        set_aside=tuple(set_aside),
        open_cases=tuple(row.number for row in own if row.status not in FINISHED),
    )


def _raw_naming(connection: Connection, needles: Collection[str]) -> set[str]:
    """The raw messages that, read as their reader reads them (`_read`), hold one of the needles:
    read in pages, since no SQL searches bytes alike in SQLite and PostgreSQL, let alone decoded
    mail. Rare work (a request), bounded memory."""
    if not needles:
        return set()
    pattern = _pattern(needles)
    found: set[str] = set()
    after = ""
    while True:
        page = connection.execute(
            select(_R.sha256, _R.data).where(_R.sha256 > after).order_by(_R.sha256).limit(_RAW_SCAN)
        ).all()
        found.update(row.sha256 for row in page if pattern.search(_read(row.data)))
        if len(page) < _RAW_SCAN:
            return found
        after = page[-1].sha256


def _set_aside_keeping(connection: Connection, shas: Collection[str]) -> list[int]:
    """The quarantine and refusal events whose kept bytes are among these raw messages."""
    return [
        row.id
        for row in connection.execute(select(_E.id, _E.data).where(_E.kind.in_(sorted(SET_ASIDE))))
        if row.data.get("raw_sha256") in shas
    ]


# Between the words of a line quoted elsewhere: mail clients re-wrap quoted lines and quote them
# again, so any run of whitespace and `>` prefixes stands for the one space.
_GAP = r"[\s>]+"
# What hides a mail's words from a search of its bytes: a transfer encoding, RFC 2047 encoded words.
_ENCODED = re.compile(rb"content-transfer-encoding:\s*(?:base64|quoted-printable)|=\?", re.IGNORECASE)


def _pattern(needles: Iterable[str]) -> re.Pattern[str]:
    """Any of the needles (the longest first, so a line goes whole), in any letter case, whatever
    runs of whitespace and quote prefixes stand between its words."""
    words = [needle.split() for needle in sorted(needles, key=len, reverse=True)]
    return re.compile("|".join(_GAP.join(map(re.escape, each)) for each in words if each), re.IGNORECASE)


def _read(data: bytes) -> str:
    """A mail as its reader reads it, to search: the bytes as they stand and, when a transfer
    encoding or an encoded word hides words from them, every part's headers decoded and every
    text part's payload decoded in its charset."""
    as_stored = data.decode("utf-8", "replace")
    if not _ENCODED.search(data):
        return as_stored
    read = [as_stored]
    for part in message_from_bytes(data, policy=compat32).walk():
        read += [_header_text(value) for value in part.values()]
        payload = part.get_payload(decode=True) if part.get_content_maintype() == "text" else None
        if isinstance(payload, bytes):
            read.append(_text(payload, part.get_content_charset()))
    return "\n".join(read)


def _header_text(value: Any) -> str:
    """A header's RFC 2047 encoded words decoded; as it stands where they cannot be (an unknown
    charset, broken base64): its bytes were searched as they are."""
    try:
        return str(make_header(decode_header(value)))
    except (HeaderParseError, LookupError, UnicodeError, binascii.Error):
        return str(value)


def _text(payload: bytes, charset: str | None) -> str:
    """A text part in its charset; bytes that charset does not read (unknown, absent or wrong)
    are searched as UTF-8 (with replacement characters) and as Latin-1 both."""
    try:
        return payload.decode(charset or "utf-8")
    except (LookupError, UnicodeError):
        return payload.decode("utf-8", "replace") + "\n" + payload.decode("latin-1")


# --- export ----------------------------------------------------------------------------------


def export(connection: Connection, address: str) -> tuple[dict[str, Any], dict[str, bytes]]:
    """Everything held about the address, as a JSON-ready document and the raw mails by file
    name (`mail/<n>.eml`, byte for byte as received); the document names each message's file."""
    held = holdings(connection, address)
    customer = connection.execute(select(models.CUSTOMER).where(_P.id == held.customer_id)).mappings().first()
    case_ids = [*held.own_cases, *held.other_cases]
    shown_messages = select(models.MESSAGE).where(
        _M.case_id.in_(list(held.own_cases)) | _M.id.in_(list(held.messages))
    )
    files: dict[str, bytes] = {}
    by_sha: dict[str, str] = {}

    def mail_file(sha: str | None) -> str | None:
        if sha is None:
            return None
        if sha not in by_sha:
            data = connection.execute(select(_R.data).where(_R.sha256 == sha)).scalar()
            if data is None:
                return None
            by_sha[sha] = f"mail/{len(by_sha) + 1:04d}.eml"
            files[by_sha[sha]] = data
        return by_sha[sha]

    messages = [
        {**_plain(row), "eml": mail_file(row["raw_sha256"])}
        for row in connection.execute(shown_messages.order_by(_M.id)).mappings()
    ]
    for sha in held.raw:  # kept bytes of quarantined mail naming the person, too
        mail_file(sha)
    document = {
        "address": held.address,
        "exported_at": utcnow().isoformat(),
        "customer": _plain(customer) if customer else None,
        "cases": [
            {
                **_plain(case_row),
                "role": "customer" if case_row["id"] in held.own_cases else "participant",
                "events": [
                    _plain(e)
                    for e in connection.execute(
                        select(models.EVENT).where(_E.case_id == case_row["id"]).order_by(_E.id)
                    ).mappings()
                ],
            }
            for case_row in connection.execute(
                select(models.CASE).where(_C.id.in_(case_ids)).order_by(_C.id)
            ).mappings()
        ],
        "messages": messages,
        "set_aside": [
            _plain(e)
            for e in connection.execute(
                select(models.EVENT).where(_E.id.in_(list(held.set_aside)))
            ).mappings()
        ],
        "mail_files": {name: sha for sha, name in by_sha.items()},
    }
    return document, files


def _plain(row: Mapping[Any, Any]) -> dict[str, Any]:
    return {key: value.isoformat() if isinstance(value, datetime) else value for key, value in row.items()}


# --- erasure ---------------------------------------------------------------------------------


def subject_hash(address: str, salt: str) -> str:
    """Who an erasure concerned, provable by whoever holds the salt and the address, and by
    nobody from the database alone."""
    return hmac.new(salt.encode(), address.strip().lower().encode(), hashlib.sha256).hexdigest()


def erase(session: Session, address: str, salt: str, *, force: bool = False) -> Counts:
    """Delete or anonymise everything about the address, in the session's transaction (the
    caller commits): the person's own cases as retention does it; elsewhere their messages, their
    address in others' To and Cc, what quotes their mail, and raw mail naming or quoting them
    (read decoded, as its reader reads it). Refused while one of their cases is open, unless
    `force`."""
    connection = session.connection()
    held = holdings(connection, address)
    if held.open_cases and not force:
        raise PrivacyError(
            f"the person has open cases ({', '.join(held.open_cases)}): resolve or close them first, "
            "or erase with --force"
        )
    texts = _quoted_lines(connection, held)
    quoting = _raw_naming(connection, texts) - set(held.raw)  # others' mail quoting the person
    counts = anonymise_cases(session, held.own_cases, utcnow())
    theirs = [m for m in held.messages if m not in held.caseless]
    written = select(_M.id).where(_M.id.in_(theirs), func.lower(_M.from_addr) == held.address)
    connection.execute(update(models.ATTACHMENT).where(_A.message_id.in_(written)).values(filename=""))
    counts += Counts(
        messages=connection.execute(
            update(models.MESSAGE).where(_M.id.in_(written)).values(**_NO_PERSON)
        ).rowcount
    )
    if held.caseless:
        counts += _delete_caseless(connection, list(held.caseless))
    set_aside = [*held.set_aside, *_set_aside_keeping(connection, quoting)]
    if set_aside:
        rows = connection.execute(select(_E.id, _E.data).where(_E.id.in_(set_aside))).all()
        counts += _forget_set_aside(session, list(rows))
    counts += _drop_raw(connection, {*held.raw, *quoting})
    counts += Counts(letters=_scrub_everywhere(connection, [held.address, *texts]))
    if held.customer_id is not None:
        connection.execute(delete(models.CUSTOMER).where(_P.id == held.customer_id))
    store.record(
        session,
        EventKind.ERASED,
        f"erasure on request: {counts}",
        subject=subject_hash(held.address, salt),
        counts=counts.as_data(),
    )
    return counts


def _quoted_lines(connection: Connection, held: Holdings) -> list[str]:
    """The long lines of the person's own mail (subject and text, without the quote prefix of a
    line they quoted), to erase where others quote them."""
    rows = connection.execute(
        select(_M.subject, _M.text).where(
            _M.id.in_(list(held.messages)) | _M.case_id.in_(list(held.own_cases)),
            func.lower(_M.from_addr) == held.address,
        )
    ).all()
    lines = {line.lstrip("> \t").strip() for row in rows for line in (row.subject, *row.text.splitlines())}
    return sorted((line for line in lines if len(line) >= QUOTED_LINE), key=len, reverse=True)


def _drop_raw(connection: Connection, shas: Collection[str]) -> Counts:
    """Raw mail naming or quoting the person goes, whoever wrote it: messages keep their text
    (scrubbed), letters attaching it go."""
    if not shas:
        return Counts()
    connection.execute(update(models.MESSAGE).where(_M.raw_sha256.in_(list(shas))).values(raw_sha256=None))
    letters = connection.execute(delete(models.OUTBOX).where(_O.original_sha256.in_(list(shas)))).rowcount
    return Counts(letters=letters, raw=_delete_unreferenced_raw(connection, shas))


def _scrub_everywhere(connection: Connection, needles: list[str]) -> int:
    """Every text and JSON column of every table: each needle (the address, the person's lines,
    however re-wrapped and re-quoted) replaced by ERASED; a letter that holds one as its reader
    reads it is deleted. Found by the tables' own description (SQLModel.metadata), so a column
    added later is searched too. Returns the letters deleted."""
    pattern = _pattern(needles)
    prefilters = _like_runs(needles)
    letters = 0
    for table in SQLModel.metadata.sorted_tables:
        key = list(table.primary_key.columns)
        for column in table.columns:
            if column.primary_key:
                continue
            kind = column.type  # through a TypeDecorator (sqlmodel's AutoString) to what it stores
            kind = kind.impl_instance if isinstance(kind, TypeDecorator) else kind
            if isinstance(kind, LargeBinary):
                if table is models.OUTBOX:
                    letters += _delete_letters_naming(connection, pattern)
                continue  # the raw store: _drop_raw
            if not isinstance(kind, (String, JSON)):
                continue
            like = or_(*(func.lower(cast(column, String)).like(f"%{run}%") for run in prefilters))
            # Read whole before writing: SQLite ends a cursor over the table being updated.
            for row in connection.execute(select(*key, column).where(like)).mappings().all():
                value = _scrubbed(row[column.name], pattern)
                connection.execute(
                    update(table).where(*(k == row[k.name] for k in key)).values({column.name: value})
                )
    return letters


def _like_runs(needles: list[str]) -> set[str]:
    """Each needle's longest stretch that LIKE finds however a column holds the rest, lowered:
    no non-ASCII letter (JSON escapes them, SQLite lowers only ASCII ones), no whitespace or
    `>` (a quoted line is re-wrapped and re-quoted), no character JSON escapes. The pattern then
    confirms on the value itself."""
    return {max(re.split(r'[^\x21-\x7e]+|[>"\\]', n), key=len).lower() or n.lower() for n in needles}


def _delete_letters_naming(connection: Connection, pattern: re.Pattern[str]) -> int:
    deleted = 0
    for row in connection.execute(select(_O.id, _O.data)).all():
        if pattern.search(_read(row.data)):
            deleted += connection.execute(delete(models.OUTBOX).where(_O.id == row.id)).rowcount
    return deleted


def _scrubbed(value: Any, pattern: re.Pattern[str]) -> Any:
    if isinstance(value, str):
        return pattern.sub(ERASED, value)
    if isinstance(value, list):
        return [_scrubbed(item, pattern) for item in value]
    if isinstance(value, dict):
        return {key: _scrubbed(item, pattern) for key, item in value.items()}
    return value
