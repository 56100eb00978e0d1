"""cases carry their SLA: the policy, due and warning times per target, who was warned and
escalated when, and the time the clock stood still while waiting on the customer

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02 00:30:00
"""

from __future__ import annotations

import sqlalchemy as sa
import sqlmodel.sql.sqltypes
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

TARGETS = ("first_response", "next_response", "resolution")


def _times() -> list[str]:
    return [
        column
        for target in TARGETS
        for column in (f"{target}_due", f"{target}_warn", f"warned_{target}_at", f"breached_{target}_at")
    ]


def upgrade() -> None:
    with op.batch_alter_table("case", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("sla", sqlmodel.sql.sqltypes.AutoString(), nullable=False, server_default="")
        )
        for column in _times():
            batch_op.add_column(sa.Column(column, sqlmodel.sql.sqltypes.UTCDateTime(), nullable=True))
        batch_op.add_column(sa.Column("sla_paused_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=True))
        batch_op.add_column(sa.Column("sla_paused_seconds", sa.Float(), nullable=False, server_default="0"))
        for target in TARGETS:
            batch_op.create_index(batch_op.f(f"ix_case_{target}_due"), [f"{target}_due"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("case", schema=None) as batch_op:
        for target in TARGETS:
            batch_op.drop_index(batch_op.f(f"ix_case_{target}_due"))
        for column in ("sla", *_times(), "sla_paused_at", "sla_paused_seconds"):
            batch_op.drop_column(column)
