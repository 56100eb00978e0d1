"""an outbox letter refers to the original it attaches in the raw store instead of holding a copy

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-03 09:00:00

The data migration finds each letter's attached original among the raw messages of its case
(compose's message/rfc822 part, byte for byte), cuts it out and records where it was; the
downgrade puts it back, so a letter's bytes are the same either way.
"""

from __future__ import annotations

import sqlalchemy as sa
import sqlmodel.sql.sqltypes
from alembic import op

from mailrouter.compose import original_part
from mailrouter.store import with_original

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

ORIGINAL_FK = "fk_outboxmessage_original_sha256_rawmessage"
_MARK = b'filename="original.eml"'

outbox = sa.table(
    "outboxmessage",
    sa.column("id", sa.Integer),
    sa.column("case_id", sa.Integer),
    sa.column("data", sa.LargeBinary),
    sa.column("original_sha256", sa.String),
    sa.column("original_at", sa.Integer),
)
message = sa.table("message", sa.column("case_id", sa.Integer), sa.column("raw_sha256", sa.String))
raw = sa.table("rawmessage", sa.column("sha256", sa.String), sa.column("data", sa.LargeBinary))


def upgrade() -> None:
    with op.batch_alter_table("outboxmessage", schema=None) as batch_op:
        batch_op.add_column(sa.Column("original_sha256", sqlmodel.sql.sqltypes.AutoString(), nullable=True))
        batch_op.add_column(sa.Column("original_at", sa.Integer(), nullable=True))
        batch_op.create_foreign_key(ORIGINAL_FK, "rawmessage", ["original_sha256"], ["sha256"])
    connection = op.get_bind()
    letters = connection.execute(sa.select(outbox.c.id, outbox.c.case_id, outbox.c.data)).all()
    for letter in letters:
        if letter.case_id is None or _MARK not in letter.data:
            continue
        candidates = connection.execute(
            sa.select(raw.c.sha256, raw.c.data).where(
                raw.c.sha256.in_(sa.select(message.c.raw_sha256).where(message.c.case_id == letter.case_id))
            )
        ).all()
        for candidate in candidates:
            part = original_part(candidate.data)
            at = letter.data.find(part)
            if at >= 0:
                connection.execute(
                    outbox.update()
                    .where(outbox.c.id == letter.id)
                    .values(
                        data=letter.data[:at] + letter.data[at + len(part) :],
                        original_sha256=candidate.sha256,
                        original_at=at,
                    )
                )
                break


def downgrade() -> None:
    connection = op.get_bind()
    letters = connection.execute(
        sa.select(outbox.c.id, outbox.c.data, outbox.c.original_at, raw.c.data.label("original")).join(
            raw, raw.c.sha256 == outbox.c.original_sha256
        )
    ).all()
    for letter in letters:
        whole = with_original(letter.data, letter.original_at, letter.original)
        connection.execute(outbox.update().where(outbox.c.id == letter.id).values(data=whole))
    with op.batch_alter_table("outboxmessage", schema=None) as batch_op:
        batch_op.drop_constraint(ORIGINAL_FK, type_="foreignkey")
        batch_op.drop_column("original_at")
        batch_op.drop_column("original_sha256")
