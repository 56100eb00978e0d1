"""the reports find the status changes they count by kind, and read them from the index alone

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-04 15:00:00

The reopenings (from resolved or closed back to new, open or pending) by (from_status,
to_status, at), and the resolutions and closings by (to_status, at): each with the columns the
reports read, so neither the table nor a range of other kinds' changes is read. They replace the
(from_status, at) and (to_status, at) indexes, which only the reports used.
"""

from __future__ import annotations

from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.drop_index("ix_statuschange_from_status_at", table_name="statuschange")
    op.drop_index("ix_statuschange_to_status_at", table_name="statuschange")
    op.create_index(
        "ix_statuschange_from_status_to_status_at_case_id",
        "statuschange",
        ["from_status", "to_status", "at", "case_id"],
        unique=False,
    )
    op.create_index(
        "ix_statuschange_to_status_at_from_status_case_id",
        "statuschange",
        ["to_status", "at", "from_status", "case_id"],
        unique=False,
    )


def downgrade() -> None:
    op.drop_index("ix_statuschange_to_status_at_from_status_case_id", table_name="statuschange")
    op.drop_index("ix_statuschange_from_status_to_status_at_case_id", table_name="statuschange")
    op.create_index("ix_statuschange_to_status_at", "statuschange", ["to_status", "at"], unique=False)
    op.create_index("ix_statuschange_from_status_at", "statuschange", ["from_status", "at"], unique=False)
