"""a case remembers when retention or an erasure took its mail and personal data

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-03 09:30:00
"""

from __future__ import annotations

import sqlalchemy as sa
import sqlmodel.sql.sqltypes
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

# Not in batch mode (see 0011): SQLite adds and drops a plain column and an index in place.


def upgrade() -> None:
    op.add_column("case", sa.Column("anonymised_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=True))
    op.create_index("ix_case_anonymised_at", "case", ["anonymised_at"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_case_anonymised_at", table_name="case")
    op.drop_column("case", "anonymised_at")
