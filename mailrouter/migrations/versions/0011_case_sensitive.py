"""a case may be sensitive (health data: sick leave): agents' mail and reports hold it back

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-03 09:10:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


# Not in batch mode: on SQLite that may copy "case" to a new table and drop the old one, which
# the foreign keys of its messages and events refuse once there are any. SQLite adds and drops
# a plain column in place.


def upgrade() -> None:
    op.add_column("case", sa.Column("sensitive", sa.Boolean(), nullable=False, server_default=sa.false()))


def downgrade() -> None:
    op.drop_column("case", "sensitive")
