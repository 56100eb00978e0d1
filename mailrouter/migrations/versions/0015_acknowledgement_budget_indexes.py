"""the acknowledgement budgets count the window's acknowledgements from the outbox's indexes

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-04 19:30:00

The desk's and a domain's budgets counted the cases created within the window and asked each
whether it had been acknowledged: a case row, its customer and an outbox row for every case of
the last hour, at every new case. An acknowledgement now carries its customer's mail domain, and
both counts read a range of (created_at, kind) or (domain, created_at, kind) index entries.
Earlier acknowledgements get the domain the count compared until now, their customer's
organisation.
"""

from __future__ import annotations

import sqlalchemy as sa
import sqlmodel.sql.sqltypes
from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None

# Not in batch mode (see 0011): SQLite adds and drops a plain column and an index in place.


def upgrade() -> None:
    op.add_column("outboxmessage", sa.Column("domain", sqlmodel.sql.sqltypes.AutoString(), nullable=True))
    op.execute(
        'UPDATE outboxmessage SET domain = (SELECT customer.organisation FROM "case" '
        'JOIN customer ON customer.id = "case".customer_id WHERE "case".id = outboxmessage.case_id) '
        "WHERE kind = 'acknowledgement'"
    )
    op.create_index("ix_outboxmessage_created_at_kind", "outboxmessage", ["created_at", "kind"], unique=False)
    op.create_index(
        "ix_outboxmessage_domain_created_at_kind",
        "outboxmessage",
        ["domain", "created_at", "kind"],
        unique=False,
    )


def downgrade() -> None:
    op.drop_index("ix_outboxmessage_domain_created_at_kind", table_name="outboxmessage")
    op.drop_index("ix_outboxmessage_created_at_kind", table_name="outboxmessage")
    op.drop_column("outboxmessage", "domain")
