"""`--log-format json`: one JSON object per line, with the fields people filter on lifted out."""

from __future__ import annotations

import io
import json
import logging
import subprocess
import sys

import pytest
from sqlalchemy import insert
from sqlmodel import Session, select

from mailrouter import models, store
from mailrouter.cli import main
from mailrouter.config import SmtpSettings
from mailrouter.errors import PermanentDeliveryError
from mailrouter.fetch import Arrival
from mailrouter.logs import JsonFormatter, Redacting, configure, redact
from mailrouter.models import OutboxMessage, utcnow
from mailrouter.outbox import Letter
from mailrouter.plan import Origin, OutcomeKind
from mailrouter.send import Sender
from tests.messages import make_mail
from tests.unit.test_fetch import register, worker_for


def _record(message: str, *args: object, exc: bool = False) -> dict[str, object]:
    record = logging.LogRecord("mailrouter.fetch", logging.WARNING, __file__, 1, message, args, None)
    if exc:
        try:
            raise ValueError("boom")
        except ValueError:
            record.exc_info = sys.exc_info()
    formatted: dict[str, object] = json.loads(JsonFormatter().format(record))
    return formatted


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


# --- no person in any log line -----------------------------------------------------------------

SENDER = "ingrid.hansen@kunde.example"
NAME = "Ingrid Hansen"
SUBJECT = "Sykemelding for Ingrid uke 49"
BODY = "Legen skriver at jeg har influensa og feber"


def _personal(text: str) -> list[str]:
    return [secret for secret in (SENDER, SUBJECT, BODY, NAME, "influensa") if secret in text]


@pytest.fixture
def production_logs(caplog):
    """The records as the daemon's one handler writes them: everything, through its filter."""
    caplog.set_level(logging.DEBUG)
    caplog.handler.addFilter(Redacting())
    return caplog


def _mail() -> bytes:
    return make_mail(sender=f"{NAME} <{SENDER}>", subject=SUBJECT, body=BODY)


def test_a_registration_and_its_reply_log_the_case_and_uid_never_the_sender_subject_or_body(
    intake, production_logs
):
    worker = worker_for(intake)
    first = make_mail(sender=f"{NAME} <{SENDER}>", subject=SUBJECT, body=BODY, message_id="<a@k.example>")
    reply = make_mail(
        sender=f"{NAME} <{SENDER}>",
        subject=f"Re: [IT-1001] {SUBJECT}",
        body=BODY,
        message_id="<b@k.example>",
    )
    arrivals = (Arrival(Origin("it", 7, 1), first), Arrival(Origin("it", 7, 2), reply))
    registered, failure = register(worker, *arrivals)
    assert failure is None and len(registered) == 2
    assert "mailbox=it uid=1 new-case case=IT-1001" in production_logs.text
    assert _personal(production_logs.text) == []


def test_a_refusal_by_the_relay_logs_the_outbox_row_not_the_recipient_the_relay_named(
    intake, production_logs
):
    register(worker_for(intake), Arrival(Origin("it", 7, 1), _mail()))
    with Session(intake.engine) as session:
        row = session.exec(select(OutboxMessage)).first()
        assert row is not None and row.rcpt_to == [SENDER]
        row.claimed_by = "mailrouter"
        session.add(row)
        session.commit()
        assert row.id is not None
        recipients = tuple(row.rcpt_to)
        letter = Letter(row.id, row.case_id, row.kind, row.mail_from, recipients, row.data, 0, utcnow())
    sender = Sender(intake.engine, SmtpSettings(host="127.0.0.1"), None)
    sender._failed(letter, PermanentDeliveryError(f"550 5.1.1 <{SENDER}>: Recipient address rejected"))
    assert f"delivery failed outbox={letter.id}: 550 5.1.1 <address>" in production_logs.text
    assert _personal(production_logs.text) == []


def test_a_database_error_is_logged_with_its_statement_but_without_its_parameters(
    intake, config_file, monkeypatch, capsys, production_logs
):
    """A real IntegrityError out of the engine (the sender's address a parameter of the INSERT),
    in the traceback of a delivered message that fails and is quarantined."""
    apply = store.apply

    def clashing(session, plan):
        if plan.outcome.kind == OutcomeKind.QUARANTINED:
            return apply(session, plan)
        for _ in range(2):
            session.connection().execute(insert(models.CUSTOMER), {"address": SENDER, "name": NAME})
        raise AssertionError("the second insert violates the unique address")

    monkeypatch.setattr(store, "apply", clashing)
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(_mail())))
    assert main(["--config", str(config_file), "deliver", "--mailbox", "hr"]) == 0
    assert "quarantined" in capsys.readouterr().out
    text = production_logs.text
    assert "IntegrityError" in text and "INSERT INTO customer" in text
    assert "parameters hidden" in text
    assert _personal(text) == []


def test_redaction_blanks_addresses_and_a_databases_detail_line():
    postgres = (
        'duplicate key value violates unique constraint "customer_address_key"\n'
        f"DETAIL:  Key (address)=({SENDER}) already exists."
    )
    assert redact(postgres) == (
        'duplicate key value violates unique constraint "customer_address_key"\nDETAIL: (hidden)'
    )
    assert redact(f"550 <{SENDER}>: no, and not Kari@Kunde.Example either") == (
        "550 <address>: no, and not <address> either"
    )
    assert redact("mailbox=it uid=42 case=IT-1001 outbox=7") == "mailbox=it uid=42 case=IT-1001 outbox=7"


def test_the_one_handler_of_the_command_line_redacts(monkeypatch):
    root = logging.getLogger()
    monkeypatch.setattr(root, "handlers", [])
    configure("INFO", "text")
    [handler] = root.handlers
    assert any(isinstance(f, Redacting) for f in handler.filters)
    record = logging.LogRecord("x", logging.ERROR, __file__, 1, "to %s", (SENDER,), None)
    assert handler.filter(record)
    assert handler.format(record).endswith("to <address>")
