"""What a SQLite database file holds by itself, its write-ahead log unread: what checkpoints copied."""

from __future__ import annotations

import sqlite3
from pathlib import Path


def rows_in_database_file(path: Path, table: str) -> int:
    """The table's rows in the file alone (immutable: no log, no locks); 0 before even the table
    has been copied in."""
    reader = sqlite3.connect(f"file:{path}?immutable=1", uri=True)
    try:
        return int(reader.execute(f'SELECT count(*) FROM "{table}"').fetchone()[0])
    except sqlite3.OperationalError:
        return 0
    finally:
        reader.close()
