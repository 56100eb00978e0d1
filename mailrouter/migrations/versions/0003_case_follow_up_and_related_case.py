"""cases remember the follow-up an agent set (#followup) and the case they continue

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-24 23:02:53
"""

from __future__ import annotations

import sqlalchemy as sa
import sqlmodel.sql.sqltypes
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

RELATED_CASE_FK = "fk_case_related_case_id_case"


def upgrade() -> None:
    with op.batch_alter_table("case", schema=None) as batch_op:
        batch_op.add_column(sa.Column("follow_up_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=True))
        batch_op.add_column(sa.Column("related_case_id", sa.Integer(), nullable=True))
        batch_op.create_index(batch_op.f("ix_case_follow_up_at"), ["follow_up_at"], unique=False)
        batch_op.create_foreign_key(RELATED_CASE_FK, "case", ["related_case_id"], ["id"])


def downgrade() -> None:
    with op.batch_alter_table("case", schema=None) as batch_op:
        batch_op.drop_constraint(RELATED_CASE_FK, type_="foreignkey")
        batch_op.drop_index(batch_op.f("ix_case_follow_up_at"))
        batch_op.drop_column("related_case_id")
        batch_op.drop_column("follow_up_at")
