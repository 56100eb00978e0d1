"""logs: what reaches the journal, and in what form (`--log-format text|json`).

A log line names cases, mailboxes, UIDs and outbox rows, never a person: every call here logs
ids, and the one handler's filter (`Redacting`) blanks what a driver or a relay put into an
error anyway (an address in a relay's refusal, PostgreSQL's `DETAIL: Key (address)=(…)`), in
tracebacks too. SQL parameters are hidden by the engines (db.py, hide_parameters).

In JSON the fields a person filters on are lifted out of the message's own `key=value` words,
the form every log call here uses (`mailbox=it uid=42`), so no call site changes.
"""

from __future__ import annotations

import json
import logging
import re
from datetime import UTC, datetime

_FIELDS = re.compile(r"\b(mailbox|case|uid|outbox)=([^\s,;:]+)")
_ADDRESS = re.compile(r"<?[^\s<>()\[\]\"',;:@]+@[A-Za-z0-9.-]+\.[A-Za-z0-9-]+>?")
_DETAIL = re.compile(r"DETAIL:[^\n]*")
ADDRESS_WORD = "<address>"


def redact(text: str) -> str:
    """`text` without addresses and without a database's DETAIL line (the row's values)."""
    return _DETAIL.sub("DETAIL: (hidden)", _ADDRESS.sub(ADDRESS_WORD, text))


class Redacting(logging.Filter):
    """Rewrites a record in place before any formatter sees it: message and traceback redacted."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = redact(record.getMessage())
        record.args = ()
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        return True


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
        if record.exc_info or record.exc_text:
            line["exception"] = record.exc_text or self.formatException(record.exc_info)  # type: ignore[arg-type]
        return json.dumps(line, ensure_ascii=False)


def configure(level: str, form: str) -> None:
    handler = logging.StreamHandler()
    handler.addFilter(Redacting())
    if form == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=level, handlers=[handler])
