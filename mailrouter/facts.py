"""facts: what /metrics, /readyz and the systemd status line read from the database (a storage
module, read-only, beside store and outbox).

Read-only and blocking: callers run these in a thread, never on the event loop.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC

from sqlalchemy import Engine, func, select
from sqlmodel import col

from mailrouter import models
from mailrouter.models import Event, utcnow
from mailrouter.vocabulary import EventKind, OutboxState

# The sender's events, counted as its deliveries and failures: the database keeps them across
# restarts, so the counters never go back.
DELIVERY_EVENTS = {
    EventKind.MAIL_SENT: "sent",
    EventKind.DELIVERY_FAILED: "failed",
    EventKind.MAIL_SENT_UNCONFIRMED: "unconfirmed",
}


@dataclass(frozen=True)
class DatabaseFacts:
    outbox: dict[str, int]  # rows by state, every state present
    oldest_queued_age: float | None  # seconds since the oldest queued row was written
    deliveries: dict[str, int]  # sent / failed / unconfirmed


def queued_mail(engine: Engine) -> int:
    with engine.connect() as connection:
        statement = select(func.count()).where(models.OUTBOX.c.state == OutboxState.QUEUED)
        return connection.execute(statement).scalar_one()


def read_facts(engine: Engine) -> DatabaseFacts:
    outbox = models.OUTBOX.c
    with engine.connect() as connection:
        states: dict[str, int] = dict(
            connection.execute(select(outbox.state, func.count()).group_by(outbox.state)).all()
        )
        oldest = connection.execute(
            select(func.min(outbox.created_at)).where(outbox.state == OutboxState.QUEUED)
        ).scalar_one()
        kinds: dict[EventKind, int] = dict(
            connection.execute(
                select(col(Event.kind), func.count())
                .where(col(Event.kind).in_(DELIVERY_EVENTS))
                .group_by(col(Event.kind))
            ).all()
        )
    if oldest is not None and oldest.tzinfo is None:
        oldest = oldest.replace(tzinfo=UTC)  # SQLite returns the stored UTC time without its zone
    return DatabaseFacts(
        outbox={state.value: states.get(state.value, 0) for state in OutboxState},
        oldest_queued_age=(utcnow() - oldest).total_seconds() if oldest is not None else None,
        deliveries={label: kinds.get(kind, 0) for kind, label in DELIVERY_EVENTS.items()},
    )
