"""a sender's recent cases found by index, for the acknowledgement rate limit

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-25 05:20:00
"""

from __future__ import annotations

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_case_customer_id_created_at", "case", ["customer_id", "created_at"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_case_customer_id_created_at", table_name="case")
