"""the reports' history of next-response targets: one row per clock, from the customer's
message to the answer that settled it

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-04 10:00:00

Nothing to backfill: the clocks of earlier cases were not kept (a case held only its latest due
time), so the reports count next responses from this revision on.
"""

from __future__ import annotations

import sqlalchemy as sa
import sqlmodel.sql.sqltypes
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "nextresponse",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("case_id", sa.Integer(), nullable=False),
        sa.Column("started_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.Column("due", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.Column("settled_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=True),
        sa.Column("met", sa.Boolean(), nullable=True),
        sa.ForeignKeyConstraint(["case_id"], ["case.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    for column in ("case_id", "started_at", "settled_at"):
        op.create_index(f"ix_nextresponse_{column}", "nextresponse", [column], unique=False)


def downgrade() -> None:
    for column in ("case_id", "started_at", "settled_at"):
        op.drop_index(f"ix_nextresponse_{column}", table_name="nextresponse")
    op.drop_table("nextresponse")
