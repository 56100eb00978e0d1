"""Personal data through the real mail stack: sensitive cases keep their mail out of agents'
mailboxes; retention, access export and erasure (issue 19)."""

from __future__ import annotations

import json
import zipfile
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from typing import Any

import pytest
from sqlalchemy import DateTime, MetaData, delete, update
from sqlmodel import Session, select

from mailrouter.models import RawMessage
from tests.database_scan import traces
from tests.e2e.conftest import Account
from tests.e2e.conftest import send_mail as send
from tests.e2e.test_agents import reply_as

pytestmark = pytest.mark.e2e

EXCERPT_LIMIT = 120  # [privacy] excerpt_chars, the default
SICK_NOTE = (
    "Hei, jeg er syk og blir borte resten av uka etter legens råd; jeg sender egenmeldingen og "
    "ringer lederen min i morgen. Diagnosen er lungebetennelse og legen heter dr. Berg på Aker."
)


def sick_leave_mail(sender: str, to: str) -> EmailMessage:
    mail = EmailMessage()
    mail["From"], mail["To"], mail["Subject"] = f"Ingrid Hansen <{sender}>", to, "Sykemelding Ingrid Hansen"
    mail.set_content(SICK_NOTE)
    mail.add_attachment(
        b"%PDF-1.4 sykemelding", maintype="application", subtype="pdf", filename="sykemelding.pdf"
    )
    return mail


def test_a_sick_leave_notification_holds_the_excerpt_only_and_show_sends_the_rest_to_one_agent(
    daemon, customer, mailstack
):
    agent1 = daemon.agents["agent1"]
    config = daemon.config_path.read_text()
    daemon.config_path.write_text(config.replace('hr-payroll = ["', f'hr-payroll = ["{agent1.address}", "'))
    daemon.start(wait=True)
    mailstack.send(
        sick_leave_mail(customer.address, daemon.mailboxes["hr"].address),
        customer.address,
        [daemon.mailboxes["hr"].address],
    )

    [notification] = mailstack.wait_for_messages(agent1.address, agent1.password, 1)
    [case] = daemon.cases()
    assert case.sensitive and case.category == "absence"
    assert str(notification["Subject"]) == f"[{case.number}] New case: (sensitive) absence"
    assert not notification.is_multipart() and list(notification.iter_attachments()) == []
    text = notification.get_content()
    assert case.number in text and "absence" in text
    assert SICK_NOTE[:80] in text
    for beyond in (
        "lungebetennelse",
        "dr. Berg",
        "Aker",
        "Ingrid",
        customer.address,
        "sykemelding.pdf",
        "PDF-1.4",
    ):
        assert beyond not in text, beyond

    reply_as(mailstack, agent1, notification, "#show")
    [_, shown] = mailstack.wait_for_messages(agent1.address, agent1.password, 2)
    assert SICK_NOTE in shown.get_content() and "sykemelding.pdf" in shown.get_content()
    assert str(shown["To"]) == agent1.address
    agent2 = daemon.agents["agent2"]
    daemon.wait_idle()
    assert all(
        "lungebetennelse" not in m.get_content() for m in mailstack.messages(agent2.address, agent2.password)
    )
    assert daemon.stop() == 0


SHIFT = timedelta(days=800)  # about 26 months: past retain_months = 24


def back_date(engine, case_id: int) -> None:
    """Every time of the case and its history moved SHIFT into the past, as if it had been
    opened, answered and closed two years ago: each timestamp column of each table, found by
    inspection, on the rows about the case."""
    metadata = MetaData()
    metadata.reflect(engine)
    with engine.begin() as connection:
        for table in metadata.sorted_tables:
            key = table.c.get("id") if table.name == "case" else table.c.get("case_id")
            times = [c for c in table.c if isinstance(c.type, DateTime)]
            if key is None or not times:
                continue
            for row in connection.execute(table.select().where(key == case_id)).mappings().all():
                shifted = {c.name: _utc(row[c.name]) - SHIFT for c in times if row[c.name] is not None}
                if shifted:
                    pk = next(iter(table.primary_key.columns))
                    connection.execute(update(table).where(pk == row[pk.name]).values(**shifted))
        connection.execute(delete(metadata.tables["reportslot"]))  # the day's retention slot: a new day


def _utc(moment: datetime) -> datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def figures(daemon, day) -> dict[str, Any]:
    """What `mailrouter report` says of that day's cases: the totals and per department."""
    result = daemon.cli("report", "--from", day.isoformat(), "--to", day.isoformat(), "--format", "json")
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    return {"total": document["total"], "departments": document["breakdowns"]["department"]}


def test_a_case_closed_two_years_ago_loses_its_mail_and_personal_data_at_the_next_run_and_the_report_stays(
    installation, customer, mailstack
):
    daemon = installation(mailbox={"it": {"retain_months": 24}}, daemon={"schedule_interval": 1})
    it, agent1 = daemon.mailboxes["it"], daemon.agents["agent1"]
    daemon.start(wait=True)
    send(
        mailstack,
        f"Kari Nordmann <{customer.address}>",
        it.address,
        "Skjermen flimrer",
        "Skjermen min flimrer hele tiden.",
    )
    [notification] = mailstack.wait_for_messages(agent1.address, agent1.password, 1)
    reply_as(mailstack, agent1, notification, "Prøv en annen kabel.")
    reply_as(mailstack, agent1, notification, "#close")
    daemon.wait_until(lambda: daemon.cases()[0].status == "closed", "the case closed")
    daemon.wait_until(lambda: daemon.events("retention-run") != [], "today's retention run")
    daemon.wait_idle()
    assert daemon.stop() == 0
    [case] = daemon.cases()
    engine = daemon.engine()
    back_date(engine, case.id)
    day = _utc(daemon.cases()[0].created_at).date()
    before = figures(daemon, day)
    assert before["total"]["created"] == 1 and before["total"]["closed"] == 1
    personal = (customer.address, "Kari Nordmann", "Skjermen flimrer", "flimrer hele tiden", "annen kabel")
    assert traces(engine, *personal)

    [first] = daemon.events("retention-run")  # today's, when it started: nothing was due
    assert first.data["counts"]["cases"] == 0

    daemon.start(wait=True)
    daemon.wait_until(lambda: len(daemon.events("retention-run")) == 2, "the next day's retention run")
    run = daemon.events("retention-run")[-1]
    assert run.data["counts"]["cases"] == 1 and run.data["counts"]["raw"] >= 3
    assert customer.address not in run.detail
    assert traces(engine, *personal) == []
    with Session(engine) as session:
        assert session.exec(select(RawMessage)).all() == []
    assert figures(daemon, day) == before
    assert len(daemon.cases()) == 1
    assert daemon.stop() == 0
    engine.dispose()


HER_LINE = "Skjermen min flimrer hver gang jeg kobler til dokkingstasjonen"
HER_REPLY = "Jeg har det samme problemet med skriveren på kontoret vårt"


def test_export_gives_the_mails_byte_for_byte_and_erase_leaves_no_trace_anywhere(
    installation, customer, mailstack
):
    """The person writes a case of their own (with an attachment), is copied on a colleague's
    case and answers there; export has it all, erasure leaves nothing of them."""
    daemon = installation()
    daemon.config_path.write_text(
        daemon.config_path.read_text() + '\n[privacy]\nerasure_salt_env = "E2E_SALT"\n'
    )
    daemon.env["E2E_SALT"] = "the-salt-from-a-credential-file"
    it, agent1 = daemon.mailboxes["it"], daemon.agents["agent1"]
    colleague = Account(*mailstack.new_account("colleague"))
    daemon.start(wait=True)
    own = EmailMessage()
    own["From"], own["To"], own["Subject"] = (
        f"Ingrid Hansen <{customer.address}>",
        it.address,
        "Flimrende skjerm",
    )
    own.set_content(HER_LINE)
    own.add_attachment(b"\x89PNG skjermbilde", maintype="image", subtype="png", filename="skjerm.png")
    mailstack.send(own, customer.address, [it.address])
    [notification] = mailstack.wait_for_messages(agent1.address, agent1.password, 1)
    reply_as(mailstack, agent1, notification, f"Prøv en annen kabel.\n\n> {HER_LINE}")
    theirs = send(
        mailstack,
        colleague.address,
        it.address,
        "Skriveren igjen",
        "Skriveren virker ikke.",
        Cc=customer.address,
    )
    daemon.wait_until(lambda: len(daemon.cases()) == 2, "the colleague's case")
    second = daemon.cases()[1]
    send(
        mailstack,
        customer.address,
        it.address,
        f"Re: [{second.number}] Skriveren igjen",
        HER_REPLY,
        In_Reply_To=theirs,
    )
    daemon.wait_until(lambda: len(daemon.incoming(second.id)) == 2, "her reply on the colleague's case")
    daemon.wait_idle()
    assert daemon.stop() == 0
    received = mailstack.raw_messages(it.address, it.password)  # as the department's mailbox has them

    export = daemon.directory / "export.zip"
    result = daemon.cli("privacy", "export", customer.address, "--output", str(export))
    assert result.returncode == 0, result.stderr
    with zipfile.ZipFile(export) as archive:
        document = json.loads(archive.read("export.json"))
        mails = {name: archive.read(name) for name in archive.namelist() if name.endswith(".eml")}
    assert [c["role"] for c in document["cases"]] == ["customer", "participant"]
    hers = [received[0], received[-1]]  # her first mail and her reply, byte for byte
    assert all(mail in mails.values() for mail in hers)
    assert set(mails.values()) <= set(received)

    refused = daemon.cli("privacy", "erase", customer.address)
    assert refused.returncode == 1 and "open cases" in refused.stderr
    report_before = daemon.cli("report", "--period", "today", "--format", "json").stdout
    erased = daemon.cli("privacy", "erase", "--force", customer.address)
    assert erased.returncode == 0, erased.stderr

    engine = daemon.engine()
    assert (
        traces(
            engine, customer.address, "Ingrid Hansen", HER_LINE, HER_REPLY, "Flimrende skjerm", "skjerm.png"
        )
        == []
    )
    with Session(engine) as session:
        raws = [r.data.lower() for r in session.exec(select(RawMessage))]
    assert all(customer.address.encode() not in raw and HER_LINE.lower().encode() not in raw for raw in raws)
    assert len(daemon.cases()) == 2
    report_after = daemon.cli("report", "--period", "today", "--format", "json").stdout
    assert json.loads(report_after)["total"] == json.loads(report_before)["total"]
    [event] = daemon.events("erased")
    assert event.case_id is None and customer.address not in event.detail and len(event.data["subject"]) == 64
    engine.dispose()
