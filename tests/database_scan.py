"""Every value of every column of every table, searched for what must not be there any more:
found by inspecting the database, so a table or column added later is searched too."""

from __future__ import annotations

import json
import re
from email import message_from_bytes
from email.message import EmailMessage
from email.policy import default

from sqlalchemy import Engine, MetaData, select

# Mail clients re-wrap quoted lines and quote them again: a line survives as words between
# whitespace and `>` prefixes, whatever their run.
_GAP = re.compile(r"[\s>]+")


def traces(engine: Engine, *needles: str) -> list[str]:
    """`table.column (row n)` for each value holding one of the needles, case-insensitively and
    whatever the whitespace and quote prefixes between its words: text, JSON as written, bytes as
    stored and, for a mail, as a mail client reads it (headers and text parts decoded)."""
    metadata = MetaData()
    metadata.reflect(engine)
    wanted = [_normalised(needle) for needle in needles]
    found = []
    with engine.connect() as connection:
        for table in metadata.sorted_tables:
            for number, row in enumerate(connection.execute(select(table)), 1):
                for column, value in row._mapping.items():
                    if value is None:
                        continue
                    if isinstance(value, bytes):
                        text = value.decode("utf-8", "replace") + "\n" + _as_read(value)
                    elif isinstance(value, str):
                        text = value
                    else:
                        text = json.dumps(value, ensure_ascii=False, default=str)
                    folded = _normalised(text)
                    found += [f"{table.name}.{column} (row {number}): {n!r}" for n in wanted if n in folded]
    return found


def _normalised(text: str) -> str:
    return _GAP.sub(" ", text).casefold().strip()


def _as_read(data: bytes) -> str:
    """The mail's headers and text parts as a client shows them (policy.default decodes encoded
    words, transfer encodings and charsets): independent of the decoding erasure does."""
    mail = message_from_bytes(data, policy=default)
    assert isinstance(mail, EmailMessage)
    shown = []
    for part in mail.walk():
        shown += [f"{name}: {value}" for name, value in part.items()]
        if part.get_content_maintype() == "text":
            shown.append(part.get_content())
    return "\n".join(shown)
