"""logs: one JSON object per line for journald and ELK (`--log-format json`).

The fields a person filters on are lifted out of the message's own `key=value` words, the form
every log call here already uses (`mailbox=it uid=42`), so no call site changes. Message bodies
never reach a log; SQL parameters are hidden by the engines (db.py, hide_parameters).
"""

from __future__ import annotations

import json
import logging
import re
from datetime import UTC, datetime

_FIELDS = re.compile(r"\b(mailbox|case|uid|outbox)=([^\s,;:]+)")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        line: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": message,
        }
        for key, value in _FIELDS.findall(message):
            line.setdefault(key, int(value) if value.isdigit() else value)
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False)


def configure(level: str, form: str) -> None:
    handler = logging.StreamHandler()
    if form == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=level, handlers=[handler])
