"""the reports' history: every status change with its time, and per case the first answer's and
first resolution's durations and SLA outcome, which a reopen never clears

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-03 08:45:00

The backfill rebuilds status changes from the status-changed events, first resolution and close
times from them (else from the case), calendar durations and answer counts from the stored mail.
Business-time durations and SLA outcomes need the department calendars of the config, which a
migration does not read: they stay empty for cases finished before this revision.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime

import sqlalchemy as sa
import sqlmodel.sql.sqltypes
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

FLOATS = (
    "first_response_seconds",
    "first_response_business_seconds",
    "resolution_seconds",
    "resolution_business_seconds",
)
FLAGS = ("first_response_met", "resolution_met", "first_contact_resolution")
INDEXED_TIMES = ("first_resolved_at", "closed_at")
OLD_TIMES_INDEXED = ("first_response_at", "survey_sent_at", "survey_answered_at")
STATUSES = ("new", "open", "pending", "resolved", "closed")
FINISHED = ("resolved", "closed")
# casework's status-changed event: "<who>: <before> → <after> (<why>)"
_CHANGE = re.compile(rf"({'|'.join(STATUSES)}) → ({'|'.join(STATUSES)}) \(")


def upgrade() -> None:
    op.create_table(
        "statuschange",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("case_id", sa.Integer(), nullable=False),
        sa.Column("at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.Column("from_status", sa.String(), nullable=False),
        sa.Column("to_status", sa.String(), nullable=False),
        sa.ForeignKeyConstraint(["case_id"], ["case.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_statuschange_at", "statuschange", ["at"], unique=False)
    op.create_index("ix_statuschange_case_id_at", "statuschange", ["case_id", "at"], unique=False)
    op.create_index("ix_statuschange_to_status_at", "statuschange", ["to_status", "at"], unique=False)
    op.create_index("ix_statuschange_from_status_at", "statuschange", ["from_status", "at"], unique=False)
    with op.batch_alter_table("case", schema=None) as batch_op:
        batch_op.add_column(sa.Column("agent_replies", sa.Integer(), nullable=False, server_default="0"))
        batch_op.add_column(
            sa.Column("customer_replied_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=True)
        )
        for column in FLOATS:
            batch_op.add_column(sa.Column(column, sa.Float(), nullable=True))
        for column in FLAGS:
            batch_op.add_column(sa.Column(column, sa.Boolean(), nullable=True))
        batch_op.add_column(sa.Column("resolution_replies", sa.Integer(), nullable=True))
        for column in INDEXED_TIMES:
            batch_op.add_column(sa.Column(column, sqlmodel.sql.sqltypes.UTCDateTime(), nullable=True))
        for column in (*INDEXED_TIMES, *OLD_TIMES_INDEXED):
            batch_op.create_index(batch_op.f(f"ix_case_{column}"), [column], unique=False)
    _backfill()


def _aware(moment: datetime | None) -> datetime | None:
    if moment is None or moment.tzinfo is not None:
        return moment
    return moment.replace(tzinfo=UTC)


def _backfill() -> None:
    connection = op.get_bind()
    time = sqlmodel.sql.sqltypes.UTCDateTime
    event = sa.table(
        "event",
        sa.column("case_id", sa.Integer()),
        sa.column("kind", sa.String()),
        sa.column("detail", sa.String()),
        sa.column("created_at", time()),
        sa.column("id", sa.Integer()),
    )
    changes = sa.table(
        "statuschange",
        sa.column("case_id", sa.Integer()),
        sa.column("at", time()),
        sa.column("from_status", sa.String()),
        sa.column("to_status", sa.String()),
    )
    rows = []
    found = connection.execute(
        sa.select(event.c.case_id, event.c.detail, event.c.created_at)
        .where(event.c.kind == "status-changed", event.c.case_id.is_not(None))
        .order_by(event.c.id)
    )
    for case_id, detail, created_at in found:
        if match := _CHANGE.search(detail):
            rows.append(
                {
                    "case_id": case_id,
                    "at": _aware(created_at),
                    **dict(zip(("from_status", "to_status"), match.groups(), strict=True)),
                }
            )
    if rows:
        connection.execute(sa.insert(changes), rows)
    case = sa.table(
        "case",
        sa.column("id", sa.Integer()),
        sa.column("status", sa.String()),
        sa.column("created_at", time()),
        sa.column("updated_at", time()),
        sa.column("resolved_at", time()),
        sa.column("first_response_at", time()),
        sa.column("first_resolved_at", time()),
        sa.column("closed_at", time()),
        sa.column("agent_replies", sa.Integer()),
        sa.column("resolution_replies", sa.Integer()),
        sa.column("first_contact_resolution", sa.Boolean()),
        sa.column("first_response_seconds", sa.Float()),
        sa.column("resolution_seconds", sa.Float()),
    )
    outbox = sa.table(
        "outboxmessage",
        sa.column("case_id", sa.Integer()),
        sa.column("kind", sa.String()),
        sa.column("created_at", time()),
    )
    message = sa.table(
        "message",
        sa.column("case_id", sa.Integer()),
        sa.column("direction", sa.String()),
        sa.column("author_role", sa.String()),
        sa.column("received_at", time()),
    )
    first_finished = (
        sa.select(sa.func.min(changes.c.at))
        .where(
            changes.c.case_id == case.c.id,
            changes.c.to_status.in_(FINISHED),
            changes.c.from_status.not_in(FINISHED),
        )
        .scalar_subquery()
    )
    first_closed = (
        sa.select(sa.func.min(changes.c.at))
        .where(changes.c.case_id == case.c.id, changes.c.to_status == "closed")
        .scalar_subquery()
    )
    answers = sa.select(sa.func.count()).where(outbox.c.case_id == case.c.id, outbox.c.kind == "agent-reply")
    connection.execute(
        sa.update(case).values(
            first_resolved_at=sa.func.coalesce(first_finished, case.c.resolved_at),
            closed_at=sa.func.coalesce(first_closed, sa.case((case.c.status == "closed", case.c.updated_at))),
            agent_replies=answers.scalar_subquery(),
        )
    )
    later_customer_mail = sa.exists().where(
        message.c.case_id == case.c.id,
        message.c.direction == "in",
        message.c.author_role.in_(("customer", "participant")),
        message.c.received_at > case.c.first_response_at,
        message.c.received_at <= case.c.first_resolved_at,
    )
    replies_then = answers.where(outbox.c.created_at <= case.c.first_resolved_at).scalar_subquery()
    connection.execute(
        sa.update(case).where(case.c.first_resolved_at.is_not(None)).values(resolution_replies=replies_then)
    )
    connection.execute(
        sa.update(case)
        .where(case.c.first_resolved_at.is_not(None))
        .values(
            first_contact_resolution=sa.and_(case.c.resolution_replies == 1, sa.not_(later_customer_mail))
        )
    )
    durations = []
    for row in connection.execute(
        sa.select(case.c.id, case.c.created_at, case.c.first_response_at, case.c.first_resolved_at).where(
            sa.or_(case.c.first_response_at.is_not(None), case.c.first_resolved_at.is_not(None))
        )
    ):
        created = _aware(row.created_at)
        assert created is not None
        answered, resolved = _aware(row.first_response_at), _aware(row.first_resolved_at)
        durations.append(
            {
                "case": row.id,
                "answered": (answered - created).total_seconds() if answered else None,
                "resolved": (resolved - created).total_seconds() if resolved else None,
            }
        )
    if durations:
        connection.execute(
            sa.update(case)
            .where(case.c.id == sa.bindparam("case"))
            .values(
                first_response_seconds=sa.bindparam("answered"), resolution_seconds=sa.bindparam("resolved")
            ),
            durations,
        )


def downgrade() -> None:
    with op.batch_alter_table("case", schema=None) as batch_op:
        for column in (*INDEXED_TIMES, *OLD_TIMES_INDEXED):
            batch_op.drop_index(batch_op.f(f"ix_case_{column}"))
        for column in (
            "agent_replies",
            "customer_replied_at",
            *FLOATS,
            *FLAGS,
            "resolution_replies",
            *INDEXED_TIMES,
        ):
            batch_op.drop_column(column)
    op.drop_index("ix_statuschange_from_status_at", table_name="statuschange")
    op.drop_index("ix_statuschange_to_status_at", table_name="statuschange")
    op.drop_index("ix_statuschange_case_id_at", table_name="statuschange")
    op.drop_index("ix_statuschange_at", table_name="statuschange")
    op.drop_table("statuschange")
