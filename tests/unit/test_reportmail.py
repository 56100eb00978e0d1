"""Scheduled reports through the real intake on SQLite: the mail's shape (HTML with the charts
inline, text, the CSV), each slot queued once whichever instance asks, a missed slot sent at
start within its grace and not beyond it (where it is recorded as missed, once), and
[[reports]] validated with errors naming the key."""

from __future__ import annotations

import email
import re
from datetime import UTC, datetime, timedelta
from email.policy import default

import pytest
from sqlmodel import Session, col, select

from mailrouter import store
from mailrouter.config import load_config
from mailrouter.daemon import load
from mailrouter.db import open_database
from mailrouter.errors import ConfigError
from mailrouter.intake import Intake
from mailrouter.models import Case, Event, Message, OutboxMessage, ReportSlot
from mailrouter.plan import Origin, OutcomeKind
from mailrouter.reportmail import Reports, period_of
from mailrouter.vocabulary import EventKind, OutboxKind
from tests.messages import make_mail, plain_text
from tests.unit.test_agent_flow import agent_reply, new_case

REPORT = """
[[reports]]
name = "weekly"
schedule = "mon 07:00"
time_zone = "Europe/Oslo"
recipients = ["lead@example.test", "boss@example.test"]
departments = ["it"]
period = "last-week"
language = "{language}"
grace = "6h"
"""
SLOT = datetime(2026, 11, 9, 6, 0, tzinfo=UTC)  # Monday 9 November, 07:00 in Oslo


@pytest.fixture
def reporting(config_file):
    def make(language: str = "en") -> Intake:
        config_file.write_text(config_file.read_text() + REPORT.format(language=language))
        loaded = load(load_config(config_file))
        return Intake(
            loaded.config, loaded.rules, loaded.templates, open_database(loaded.config), loaded.agents
        )

    return make


def reports(intake: Intake, instance: str = "a") -> Reports:
    return Reports(intake.engine, intake.config, intake.casework.notices.templates, instance)


def queued(intake: Intake) -> list[email.message.EmailMessage]:
    with Session(intake.engine) as session:
        rows = session.exec(select(OutboxMessage).where(OutboxMessage.kind == OutboxKind.REPORT)).all()
    return [email.message_from_bytes(row.data, policy=default) for row in rows]


def a_week_of_work(intake, clock) -> None:
    clock.now = datetime(2026, 11, 3, 9, tzinfo=UTC)  # Tuesday of the week before the slot
    notification = new_case(intake)
    clock.advance(hours=2)
    agent_reply(intake, notification, "Try the other tray.")


def test_the_report_mail_shows_its_charts_inline_beside_a_text_part(reporting, clock):
    intake = reporting()
    a_week_of_work(intake, clock)
    assert reports(intake).send_due(SLOT) == 1
    [mail] = queued(intake)
    assert mail["From"] == "IT Support <it-support@example.test>"
    assert mail["To"] == "lead@example.test, boss@example.test"
    assert mail["Subject"] == "Service desk report: IT Support (2026-11-02 – 2026-11-08)"
    assert mail["Auto-Submitted"] == "auto-generated"
    assert mail.get_content_type() == "multipart/mixed"
    [alternative] = [p for p in mail.iter_parts() if p.get_content_type() == "multipart/alternative"]
    text, related = alternative.iter_parts()
    assert related.get_content_type() == "multipart/related"
    html, *images = related.iter_parts()
    assert len(images) == 4 and all(i.get_content_type() == "image/png" for i in images)
    assert all(i.get_content()[:8] == b"\x89PNG\r\n\x1a\n" for i in images)
    page = html.get_content()
    for image in images:  # every picture is shown in place, none is left as an attachment
        assert f'src="cid:{image["Content-ID"].strip("<>")}"' in page
        assert image["Content-Disposition"].startswith("inline")
    plain = text.get_content()
    assert re.search(r"^New cases: +1\r?$", plain, re.M)
    assert re.search(r"^First answer \(median / 90 %\): +2h 00m / 2h 00m\r?$", plain, re.M)
    assert re.search(r"^Next answer within SLA: +-\r?$", plain, re.M)  # no SLA: nothing counted


def test_the_report_speaks_its_configured_language(reporting, clock):
    intake = reporting("sv")
    a_week_of_work(intake, clock)
    reports(intake).send_due(SLOT)
    [mail] = queued(intake)
    assert mail["Subject"].startswith("Rapport från servicedesken: IT Support")
    assert "Nya ärenden" in plain_text(mail)


def test_a_slot_is_queued_once_however_many_instances_ask(reporting, clock):
    intake = reporting()
    first, second = reports(intake, "host-a:1"), reports(intake, "host-b:2")
    assert first.send_due(SLOT) == 1
    assert second.send_due(SLOT + timedelta(seconds=1)) == 0
    assert first.send_due(SLOT + timedelta(minutes=5)) == 0  # restarted after the slot was sent
    assert len(queued(intake)) == 1
    with Session(intake.engine) as session:
        [slot] = session.exec(select(ReportSlot)).all()
        [event] = session.exec(select(Event).where(Event.kind == EventKind.REPORT_QUEUED)).all()
    assert (slot.report, slot.claimed_by) == ("weekly", "host-a:1")
    assert "report weekly for slot 2026-11-09 07:00:00 CET" in event.detail
    assert "by host-a:1" in event.detail and "lead@example.test" not in event.detail


def test_the_claim_itself_refuses_a_second_taker_of_the_slot(engine):
    """The last word, for two instances that both found the slot free and drew the mail."""
    with Session(engine) as session:
        assert store.claim_report_slot(session, "weekly", SLOT, "a")
        session.commit()
    with Session(engine) as session:
        assert not store.claim_report_slot(session, "weekly", SLOT, "b")
        assert store.report_slot_taken(session, "weekly", SLOT) == "a"
        assert store.claim_report_slot(session, "weekly", SLOT + timedelta(days=7), "b")


def test_a_slot_missed_while_down_is_sent_at_start_within_its_grace(reporting):
    intake = reporting()
    down_until = SLOT + timedelta(hours=5, minutes=59)
    assert reports(intake).send_due(down_until) == 1
    with Session(intake.engine) as session:
        [event] = session.exec(select(Event).where(Event.kind == EventKind.REPORT_QUEUED)).all()
    assert f"{5 * 3600 + 59 * 60}s after its slot" in event.detail


def test_a_slot_older_than_its_grace_is_not_sent(reporting):
    intake = reporting()
    assert reports(intake).send_due(SLOT + timedelta(hours=6, seconds=1)) == 0
    assert reports(intake).send_due(SLOT - timedelta(seconds=1)) == 0  # and none before its time
    assert queued(intake) == []


def missed_events(intake: Intake) -> list[Event]:
    with Session(intake.engine) as session:
        return list(session.exec(select(Event).where(Event.kind == EventKind.REPORT_MISSED)).all())


def test_slots_that_went_by_while_no_instance_ran_are_recorded_once_as_missed(reporting):
    intake = reporting()
    assert reports(intake).send_due(SLOT) == 1
    back = SLOT + timedelta(weeks=3, hours=1)  # down from after that slot until three weeks on
    assert reports(intake, "b").send_due(back) == 1  # the latest is within its grace: sent
    assert reports(intake, "a").send_due(back + timedelta(minutes=1)) == 0  # a second instance
    [event] = missed_events(intake)
    assert event.data["slots"] == [(SLOT + timedelta(weeks=w)).isoformat() for w in (1, 2)]
    assert event.detail == (
        "report weekly: 2 slot(s) not sent, 2026-11-16 07:00:00 CET to 2026-11-23 07:00:00 CET: "
        "no instance ran within their grace of 6:00:00"
    )
    assert len(queued(intake)) == 2  # the missed ones are not sent late


def test_a_report_new_to_the_desk_has_missed_nothing(reporting):
    intake = reporting()
    assert reports(intake).send_due(SLOT + timedelta(days=3)) == 0
    assert missed_events(intake) == []


def test_a_late_slot_reports_on_the_same_days_as_one_on_time(reporting):
    intake = reporting()
    [report] = intake.config.file.reports
    on_time, late = period_of(report, SLOT), period_of(report, SLOT + timedelta(hours=5))
    assert on_time == late and (on_time.first.isoformat(), on_time.last.isoformat()) == (
        "2026-11-02",
        "2026-11-08",
    )


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ('schedule = "mon 07:00"', 'schedule = "someday"'),
        ('time_zone = "Europe/Oslo"', 'time_zone = "Europe/Atlantis"'),
        ('departments = ["it"]', 'departments = ["sales"]'),
        ('period = "last-week"', 'period = "last-fortnight"'),
        ('recipients = ["lead@example.test", "boss@example.test"]', 'recipients = ["lead"]'),
    ],
)
def test_an_invalid_report_names_the_file_and_key(config_file, change, expected):
    config_file.write_text(config_file.read_text() + REPORT.format(language="en").replace(change, expected))
    with pytest.raises(ConfigError) as raised:
        load_config(config_file)
    assert str(config_file) in str(raised.value) and "reports.0" in str(raised.value)


def test_two_reports_may_not_share_a_name(config_file):
    config_file.write_text(config_file.read_text() + REPORT.format(language="en") * 2)
    with pytest.raises(ConfigError, match=r"reports\.1\.name 'weekly': another report has that name"):
        load_config(config_file)


def test_check_renders_the_report_templates_and_shows_when_each_report_goes(reporting, config_file, capsys):
    from mailrouter.cli import main

    reporting("no")
    assert main(["--config", str(config_file), "check"]) == 0
    out = capsys.readouterr().out
    assert "report weekly: mon 07:00 (Europe/Oslo), next " in out
    assert "last-week of IT Support, in no, to 2 recipient(s)" in out


def lead_replies(intake: Intake, report: email.message.EmailMessage, sender: str = "lead@example.test"):
    """The lead answers the report mail from their mail client, to the department's address."""
    reply = make_mail(
        sender=f"Lea Lead <{sender}>",
        to="it-support@example.test",
        subject=f"Re: {report['Subject']}",
        body="Why did the backlog grow? Let us talk on Monday.",
        message_id="<lead-reply@example.test>",
        headers={"In-Reply-To": report["Message-ID"], "References": report["Message-ID"]},
    )
    return intake.process(reply, Origin("it", 1, 900))


def kinds(intake: Intake) -> list[str]:
    with Session(intake.engine) as session:
        return [row.kind for row in session.exec(select(OutboxMessage).order_by(col(OutboxMessage.id)))]


def test_a_leads_reply_to_the_report_is_recorded_and_opens_no_case(reporting):
    """Before: the reply became case IT-1001, and the lead got an acknowledgement."""
    intake = reporting()
    reports(intake).send_due(SLOT)
    [report] = queued(intake)
    assert report["Auto-Submitted"] == "auto-generated" and report["Message-ID"]
    outcome = lead_replies(intake, report)
    assert (outcome.kind, outcome.case_number) == (OutcomeKind.REPORT_REPLY, None)
    assert kinds(intake) == [OutboxKind.REPORT]  # nobody acknowledged, nobody notified
    with Session(intake.engine) as session:
        assert session.exec(select(Case)).all() == []
        [kept] = session.exec(select(Message)).all()
        [event] = session.exec(select(Event).where(Event.kind == EventKind.REPORT_REPLIED)).all()
    assert (kept.message_id, kept.case_id, event.message_id) == ("<lead-reply@example.test>", None, kept.id)
    assert event.data["message_id_header"] == report["Message-ID"]
    assert event.detail.startswith(f"lead@example.test answered the report mail {report['Message-ID']}")


def test_someone_not_sent_the_report_who_answers_it_is_heard_as_anyone_is(reporting):
    """A report forwarded to a customer, and their reply to it: a case like any mail."""
    intake = reporting()
    reports(intake).send_due(SLOT)
    [report] = queued(intake)
    outcome = lead_replies(intake, report, sender="kari@kunde.example")
    assert outcome.kind == OutcomeKind.NEW_CASE
    assert OutboxKind.ACKNOWLEDGEMENT in kinds(intake)
