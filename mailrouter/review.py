"""review: the mail that did not become (part of) a case, for a person to find, judge and retry.

Screening keeps auto-replies, bounces and loops out of cases but keeps the message; refusal and
quarantine keep the raw bytes and the reason. Everything here reads what the intake recorded;
a retry puts the kept bytes through the same `Intake` the daemon uses and records the outcome.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Engine
from sqlmodel import Session

from mailrouter import store
from mailrouter.errors import ReviewError
from mailrouter.intake import Intake
from mailrouter.models import Event
from mailrouter.plan import Origin, Outcome, OutcomeKind
from mailrouter.vocabulary import SET_ASIDE, EventKind


@dataclass(frozen=True)
class Screened:
    message_id: int
    received_at: datetime
    mailbox: str
    sender: str
    subject: str
    verdict: str
    reason: str


@dataclass(frozen=True)
class SetAside:
    event_id: int
    created_at: datetime
    kind: EventKind
    mailbox: str
    uid: int | None
    reason: str
    raw_kept: bool


def screened(engine: Engine, limit: int = 50) -> list[Screened]:
    """Incoming mail that screening kept out of any case, newest last."""
    with Session(engine) as session:
        rows = store.screened_messages(session, limit)
        return [
            Screened(
                message_id=m.id or 0,
                received_at=m.received_at,
                mailbox=m.mailbox,
                sender=m.from_addr,
                subject=m.subject,
                verdict=str(e.data.get("verdict", "")),
                reason=e.detail.removeprefix("no case opened: "),
            )
            for m, e in reversed(rows)
        ]


def set_aside(engine: Engine) -> list[SetAside]:
    """Quarantined and refused messages not yet released by a successful retry, oldest first."""
    with Session(engine) as session:
        return [
            SetAside(
                event_id=e.id or 0,
                created_at=e.created_at,
                kind=e.kind,
                mailbox=e.mailbox,
                uid=e.data.get("uid"),
                reason=str(e.data.get("reason") or e.detail),
                raw_kept=bool(e.data.get("raw_sha256")),
            )
            for e in store.set_aside_events(session)
        ]


def retry(intake: Intake, event_id: int) -> Outcome:
    """Process a set-aside message's kept bytes again, as if it had just arrived where it did."""
    listed = {entry.event_id for entry in set_aside(intake.engine)}
    with Session(intake.engine) as session:
        event = session.get(Event, event_id)
        if event is None or event.kind not in SET_ASIDE:
            raise ReviewError(f"no quarantined or refused message with id {event_id}")
        if event_id not in listed:
            raise ReviewError(f"message {event_id} was already released")
        sha256 = event.data.get("raw_sha256")
        data = store.kept_bytes(session, sha256) if sha256 else None
        if data is None:
            raise ReviewError(
                f"message {event_id}: its bytes were not kept ({event.data.get('reason', event.detail)}); "
                f"the original is in the {event.mailbox} mailbox's quarantine folder"
            )
        origin = Origin(
            event.mailbox, int(event.data.get("uidvalidity") or 0), int(event.data.get("uid") or 0)
        )
    try:
        outcome = intake.process(data, origin)
    except Exception as exc:  # the same failure as before, most likely: record it, keep it listed
        reason = f"{type(exc).__name__}: {exc}"
        _record(
            intake.engine,
            EventKind.QUARANTINE_RETRY_FAILED,
            f"retry of {event_id} failed again: {reason}",
            event_id,
            origin,
        )
        return Outcome(OutcomeKind.QUARANTINED, None, reason)
    _record(
        intake.engine,
        EventKind.QUARANTINE_RELEASED,
        f"retry of {event_id}: {outcome.kind.value}"
        + (f" {outcome.case_number}" if outcome.case_number else "")
        + f": {outcome.summary}",
        event_id,
        origin,
        outcome=outcome.kind.value,
        case=outcome.case_number,
    )
    return outcome


def _record(engine: Engine, kind: EventKind, detail: str, event_id: int, origin: Origin, **data: Any) -> None:
    with Session(engine) as session:
        store.record(
            session,
            kind,
            detail,
            mailbox=origin.mailbox,
            quarantine_event=event_id,
            uid=origin.uid,
            **data,
        )
        session.commit()
