"""`mailrouter status`, the cases filters, `outbox list|retry` and every listing's --json."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
from collections.abc import Iterator
from datetime import timedelta

import pytest
from sqlalchemy import update
from sqlmodel import Session, select

from mailrouter import models
from mailrouter.cli import main
from mailrouter.config import HttpSettings
from mailrouter.errors import ImapError
from mailrouter.health import Health, MailboxHealth
from mailrouter.http import Endpoint
from mailrouter.models import Event, OutboxMessage, utcnow
from mailrouter.plan import Origin
from mailrouter.vocabulary import OutboxState
from tests.messages import make_mail


def _cli(capsys, config_file, *args: str) -> tuple[int, str, str]:
    code = main(["--config", str(config_file), *args])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def desk(intake):
    """Three cases: IT-1001 (new, a day old), IT-1002 (pending, assigned), HR-1001 (fresh)."""
    intake.process(make_mail(message_id="<a@kunde.example>", subject="Printer"), Origin("it", 1, 1))
    intake.process(make_mail(message_id="<b@kunde.example>", subject="VPN"), Origin("it", 1, 2))
    intake.process(
        make_mail(message_id="<c@kunde.example>", subject="Ferie", to="hr@example.test"), Origin("hr", 1, 1)
    )
    with intake.engine.begin() as connection:
        connection.execute(
            update(models.CASE)
            .where(models.CASE.c.number == "IT-1001")
            .values(created_at=utcnow() - timedelta(days=3))
        )
        connection.execute(
            update(models.CASE)
            .where(models.CASE.c.number == "IT-1002")
            .values(status="pending", assignee="agent1@example.test")
        )
    return intake


@pytest.mark.parametrize(
    ("filters", "numbers"),
    [
        ([], ["IT-1001", "IT-1002", "HR-1001"]),
        (["--status", "pending"], ["IT-1002"]),
        (["--department", "hr"], ["HR-1001"]),
        (["--assignee", "agent1@example.test"], ["IT-1002"]),
        (["--older-than", "2d"], ["IT-1001"]),
        (["--department", "it", "--status", "new"], ["IT-1001"]),
    ],
)
def test_cases_filters_by_status_department_assignee_and_age(desk, config_file, capsys, filters, numbers):
    code, out, _ = _cli(capsys, config_file, "cases", "--json", *filters)
    assert code == 0
    assert [row["number"] for row in json.loads(out)] == numbers
    code, out, _ = _cli(capsys, config_file, "cases", *filters)
    assert [line.split()[0] for line in out.splitlines()[1:]] == numbers


def test_cases_refuses_an_age_it_cannot_read(desk, config_file, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--config", str(config_file), "cases", "--older-than", "two days"])
    assert exit_.value.code == 2
    assert "expected an age such as 30m, 12h, 3d or 2w" in capsys.readouterr().err


def test_screened_and_quarantine_list_speak_json(intake, config_file, capsys):
    intake.process(make_mail(headers={"Auto-Submitted": "auto-replied"}), Origin("it", 1, 1))
    intake.quarantine(make_mail(message_id="<q@kunde.example>"), Origin("it", 1, 2), ValueError("boom"))
    [screened] = json.loads(_cli(capsys, config_file, "screened", "--json")[1])
    assert screened["verdict"] == "auto-reply" and screened["mailbox"] == "it"
    [held] = json.loads(_cli(capsys, config_file, "quarantine", "list", "--json")[1])
    assert held["kind"] == "quarantined" and held["uid"] == 2 and "ValueError: boom" in held["reason"]


def _fail(engine, number: str, error: str) -> int:
    with Session(engine) as session:
        row = session.exec(select(OutboxMessage).where(OutboxMessage.kind == "acknowledgement")).all()
        chosen = next(r for r in row if number.encode() in r.data)
        chosen.state, chosen.last_error, chosen.attempts = OutboxState.FAILED, error, 4
        session.add(chosen)
        session.commit()
        assert chosen.id is not None
        return chosen.id


def test_outbox_list_shows_failed_mail_and_retry_queues_it_again_with_an_event(desk, config_file, capsys):
    row_id = _fail(desk.engine, "IT-1002", "550 5.1.1 no such user")
    code, out, _ = _cli(capsys, config_file, "outbox", "list")
    assert code == 0 and f"{row_id:>6} IT-1002" in out and "550 5.1.1 no such user" in out
    [listed] = json.loads(_cli(capsys, config_file, "outbox", "list", "--json")[1])
    assert (listed["id"], listed["state"]) == (row_id, "failed")
    assert listed["rcpt_to"] == ["kari@kunde.example"]

    code, out, _ = _cli(capsys, config_file, "outbox", "retry", str(row_id))
    assert code == 0 and f"{row_id}: queued again" in out
    with Session(desk.engine) as session:
        row = session.get(OutboxMessage, row_id)
        assert row is not None and (row.state, row.attempts) == ("queued", 0)
        [event] = session.exec(select(Event).where(Event.kind == "mail-requeued")).all()
    assert event.data["outbox_id"] == row_id and "it was failed after 4 attempt(s): 550 5.1.1" in event.detail
    assert json.loads(_cli(capsys, config_file, "outbox", "list", "--json")[1]) == []
    queued = json.loads(_cli(capsys, config_file, "outbox", "list", "--state", "queued", "--json")[1])
    assert row_id in [r["id"] for r in queued]


def test_outbox_retry_refuses_mail_that_did_not_fail(desk, config_file, capsys):
    with Session(desk.engine) as session:
        queued = session.exec(select(OutboxMessage)).first()
        assert queued is not None
    code, _, err = _cli(capsys, config_file, "outbox", "retry", str(queued.id))
    assert code == 1
    assert err == f"error: outgoing mail {queued.id} is queued: only failed or bounced mail is retried\n"
    assert _cli(capsys, config_file, "outbox", "retry", "999")[2] == "error: no outgoing mail 999\n"


def test_status_reports_mailboxes_outbox_and_quarantine_from_the_database(desk, config_file, capsys):
    desk.quarantine(make_mail(message_id="<q@kunde.example>"), Origin("it", 1, 3), ValueError("boom"))
    _fail(desk.engine, "IT-1001", "550 refused")
    code, out, _ = _cli(capsys, config_file, "status", "--json")
    assert code == 0
    report = json.loads(out)
    it = report["mailboxes"]["it"]
    assert it["last_uid"] == 3 and it["last_poll_at"] is not None and it["live"] is None
    assert it["last_event"].startswith("quarantined: ")
    assert report["mailboxes"]["hr"]["last_uid"] == 1
    assert report["outbox"]["failed"] == 1 and report["outbox"]["queued"] >= 2
    assert report["oldest_queued"]["state"] == "queued"
    assert report["quarantined"] == 1
    assert report["daemon"] == "no [http] endpoint configured"
    code, out, _ = _cli(capsys, config_file, "status")
    assert "mailbox it:" in out and "quarantine: 1 message(s)" in out and "1 failed" in out


@pytest.fixture
def live_endpoint(intake) -> Iterator[str]:
    """The daemon's real HTTP endpoint on its own loop: mailbox it connected, hr refused."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    it, hr = MailboxHealth("it"), MailboxHealth("hr")
    it.logged_in()
    it.polled(0)
    hr.failed(ImapError("LOGIN as hr@example.test: NO [AUTHENTICATIONFAILED]"))
    listen = f"127.0.0.1:{port}"
    endpoint = Endpoint(HttpSettings(listen=listen), None, Health({"it": it, "hr": hr}), intake.engine, 60)
    loop = asyncio.new_event_loop()
    loop.run_until_complete(endpoint.start())
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    yield listen
    loop.call_soon_threadsafe(loop.stop)
    thread.join()
    loop.run_until_complete(endpoint.close())
    loop.close()


def test_status_reads_the_running_daemons_readyz_for_live_facts(intake, config_file, capsys, live_endpoint):
    config_file.write_text(config_file.read_text() + f'[http]\nlisten = "{live_endpoint}"\n')
    code, out, _ = _cli(capsys, config_file, "status", "--json")
    report = json.loads(out)
    assert code == 0
    assert report["mailboxes"]["it"]["live"]["connected"] is True
    assert report["mailboxes"]["hr"]["live"]["login_failed"] is True
    assert report["daemon"]["ready"] is False
    out = _cli(capsys, config_file, "status")[1]
    assert "NOT ready: mailbox hr: cannot log in" in out and "NOT connected" in out


def test_status_says_when_the_daemon_does_not_answer(intake, config_file, capsys):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config_file.write_text(config_file.read_text() + f'[http]\nlisten = "127.0.0.1:{port}"\n')
    code, out, _ = _cli(capsys, config_file, "status")
    assert code == 0
    assert f"daemon: http://127.0.0.1:{port}/readyz: not answering" in out
