"""`--log-format json`: one JSON object per line, with the fields people filter on lifted out."""

from __future__ import annotations

import json
import logging
import subprocess
import sys

from mailrouter.logs import JsonFormatter


def _record(message: str, *args: object, exc: bool = False) -> dict[str, object]:
    record = logging.LogRecord("mailrouter.fetch", logging.WARNING, __file__, 1, message, args, None)
    if exc:
        try:
            raise ValueError("boom")
        except ValueError:
            record.exc_info = sys.exc_info()
    return json.loads(JsonFormatter().format(record))


def test_a_line_is_one_object_with_time_level_logger_and_message():
    line = _record("mailbox=%s uid=%s database problem, retrying: %s", "it", 42, "locked")
    assert line["level"] == "WARNING" and line["logger"] == "mailrouter.fetch"
    assert line["message"] == "mailbox=it uid=42 database problem, retrying: locked"
    assert (line["mailbox"], line["uid"]) == ("it", 42)
    assert str(line["time"]).endswith("+00:00")


def test_case_and_outbox_fields_and_an_exception_stay_on_one_line():
    line = _record("case=%s outbox=%s: failed", "IT-1001", 7, exc=True)
    assert (line["case"], line["outbox"]) == ("IT-1001", 7)
    assert "ValueError: boom" in str(line["exception"])
    assert "\n" not in JsonFormatter().format(
        logging.LogRecord("x", logging.ERROR, __file__, 1, "a\nb", (), None)
    )


def test_the_command_line_writes_json_lines(config_file, tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "mailrouter", "--config", str(config_file), "--log-format", "json", "migrate"],
        capture_output=True,
        text=True,
        check=True,
    )
    lines = [json.loads(line) for line in result.stderr.splitlines()]
    assert lines and all({"time", "level", "logger", "message"} <= set(line) for line in lines)
