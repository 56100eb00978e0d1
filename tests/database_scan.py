"""Every value of every column of every table, searched for what must not be there any more:
found by inspecting the database, so a table or column added later is searched too."""

from __future__ import annotations

import json

from sqlalchemy import Engine, MetaData, select


def traces(engine: Engine, *needles: str) -> list[str]:
    """`table.column (row n)` for each value holding one of the needles, case-insensitively:
    text, JSON as written, bytes as stored."""
    metadata = MetaData()
    metadata.reflect(engine)
    wanted = [needle.casefold() for needle in needles]
    found = []
    with engine.connect() as connection:
        for table in metadata.sorted_tables:
            for number, row in enumerate(connection.execute(select(table)), 1):
                for column, value in row._mapping.items():
                    if value is None:
                        continue
                    if isinstance(value, bytes):
                        text = value.decode("utf-8", "replace")
                    elif isinstance(value, str):
                        text = value
                    else:
                        text = json.dumps(value, ensure_ascii=False, default=str)
                    folded = text.casefold()
                    found += [f"{table.name}.{column} (row {number}): {n!r}" for n in wanted if n in folded]
    return found
