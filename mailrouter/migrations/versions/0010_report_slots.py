"""scheduled reports: each slot of each report is claimed once, by the instance that mails it

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-03 09:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
import sqlmodel.sql.sqltypes
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "reportslot",
        sa.Column("report", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("slot_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.Column("claimed_by", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("created_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("report", "slot_at"),
    )


def downgrade() -> None:
    op.drop_table("reportslot")
