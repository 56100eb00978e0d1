"""cases remember what the customer heard: since when they wait on the customer, our last mail
to them and the quiet reminder since, and the satisfaction survey with its answer

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02 10:30:00
"""

from __future__ import annotations

import sqlalchemy as sa
import sqlmodel.sql.sqltypes
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

TIMES = ("pending_since", "customer_heard_at", "quiet_reminded_at", "survey_sent_at", "survey_answered_at")
TEXTS = ("survey_message_id", "satisfaction_comment")


def upgrade() -> None:
    with op.batch_alter_table("case", schema=None) as batch_op:
        for column in TIMES:
            batch_op.add_column(sa.Column(column, sqlmodel.sql.sqltypes.UTCDateTime(), nullable=True))
        for column in TEXTS:
            batch_op.add_column(
                sa.Column(column, sqlmodel.sql.sqltypes.AutoString(), nullable=False, server_default="")
            )
        batch_op.add_column(sa.Column("satisfaction_score", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("case", schema=None) as batch_op:
        for column in (*TIMES, *TEXTS, "satisfaction_score"):
            batch_op.drop_column(column)
