"""The customer hears how it goes: status mails, quiet reminders, auto-resolve and auto-close, and
the satisfaction survey — through the real intake and the scheduler's jobs on SQLite, with a
test clock (each job takes `now`)."""

from __future__ import annotations

import email
from datetime import timedelta
from email.policy import default

import pytest
from sqlmodel import Session, col, select

from mailrouter.cli import main
from mailrouter.config import load_config
from mailrouter.daemon import load
from mailrouter.db import open_database
from mailrouter.intake import Intake
from mailrouter.models import Case, Event, OutboxMessage
from mailrouter.satisfaction import Answer, answers_survey, read_answer
from mailrouter.schedule import close_resolved, remind_quiet_cases, resolve_unanswered
from mailrouter.vocabulary import CaseStatus, EventKind, OutboxKind
from tests.messages import plain_text as text_of
from tests.unit.test_agent_flow import CUSTOMER, agent_reply, deliver

SWEDISH = (
    "Hej! Skrivaren på tredje våningen har slutat fungera helt och hållet. Den visar bara ett "
    "felmeddelande om pappersstopp, fast det inte finns något papper som har fastnat. Vad ska jag göra?"
)
DEPARTMENT = """satisfaction_survey = true
quiet_days = 2
auto_resolve_after = "3d"
auto_close_after = "7d"
"""


def configured(config_file, keys: str = DEPARTMENT) -> Intake:
    text = config_file.read_text().replace('group = "it-agents"\n', f'group = "it-agents"\n{keys}', 1)
    config_file.write_text(text)
    loaded = load(load_config(config_file))
    return Intake(loaded.config, loaded.rules, loaded.templates, open_database(loaded.config), loaded.agents)


@pytest.fixture
def desk(config_file) -> Intake:
    return configured(config_file)


def mail(intake, kind):
    with Session(intake.engine) as session:
        rows = session.exec(select(OutboxMessage).order_by(col(OutboxMessage.id))).all()
    return [email.message_from_bytes(r.data, policy=default) for r in rows if kind in (None, r.kind)]


def kinds(intake) -> list[str]:
    with Session(intake.engine) as session:
        return [r.kind for r in session.exec(select(OutboxMessage).order_by(col(OutboxMessage.id)))]


def the_case(intake) -> Case:
    with Session(intake.engine) as session:
        return session.exec(select(Case)).one()


def events(intake, kind) -> list[Event]:
    with Session(intake.engine) as session:
        return list(session.exec(select(Event).where(Event.kind == kind).order_by(col(Event.id))))


def open_case(intake, body: str = SWEDISH):
    deliver(intake, sender=CUSTOMER, subject="Skrivaren", body=body, message_id="<first@kunde.example>")
    return mail(intake, OutboxKind.NOTIFICATION)[0]


def customer_reply(intake, to, body: str):
    return deliver(
        intake,
        sender=CUSTOMER,
        subject=f"Re: {to['Subject']}",
        body=body,
        headers={"In-Reply-To": to["Message-ID"], "References": to["Message-ID"]},
    )


# --- status mails -------------------------------------------------------------------------------


def test_an_agent_setting_the_case_pending_tells_the_customer_in_their_language(desk):
    notification = open_case(desk)
    agent_reply(desk, notification, "#pending\nKan du skicka en bild på felmeddelandet?")
    [update] = mail(desk, OutboxKind.STATUS_UPDATE)
    # The agent's question first, then the status: the customer reads them in that order.
    assert kinds(desk)[-2:] == [OutboxKind.AGENT_REPLY, OutboxKind.STATUS_UPDATE]
    assert the_case(desk).language == "sv"
    assert "väntar på dig" in text_of(update)
    assert update["From"].addresses[0].addr_spec == "it-support@example.test"
    assert update["To"] == "kari@kunde.example"
    assert update["In-Reply-To"] == "<first@kunde.example>"
    assert update["Auto-Submitted"] == "auto-generated"
    assert update["Subject"] == "[IT-1001] Re: Skrivaren"
    [told] = events(desk, EventKind.CUSTOMER_TOLD)
    assert told.data["template"] == "status-pending"


def test_a_status_change_in_an_internal_note_is_not_told_to_the_customer(desk):
    notification = open_case(desk)
    agent_reply(desk, notification, "#note\n#pending\nWaiting for the vendor, not the customer.")
    assert the_case(desk).status == CaseStatus.PENDING
    assert mail(desk, OutboxKind.STATUS_UPDATE) == []
    [not_told] = events(desk, EventKind.CUSTOMER_NOT_TOLD)
    assert "internal note" in not_told.detail


def test_a_department_without_status_mail_tells_nobody(config_file):
    desk = configured(config_file, "status_mail = false\n")
    agent_reply(desk, open_case(desk), "#pending")
    assert mail(desk, OutboxKind.STATUS_UPDATE) == []
    assert "sends no status mail" in events(desk, EventKind.CUSTOMER_NOT_TOLD)[0].detail


def test_resolving_sends_the_resolved_mail_with_how_to_reopen_and_the_survey_once(desk):
    notification = open_case(desk)
    agent_reply(desk, notification, "#resolve")
    [resolved] = mail(desk, OutboxKind.STATUS_UPDATE)
    [survey] = mail(desk, OutboxKind.SURVEY)
    assert "löst" in text_of(resolved) and "inom 7 dagar" in text_of(resolved)  # reopen_days = 7
    assert "Hur nöjd är du" in text_of(survey) and "från 1 till 5" in text_of(survey)
    case = the_case(desk)
    assert case.survey_message_id == survey["Message-ID"] and case.survey_sent_at is not None
    # Reopened and resolved again: the resolved mail again, the survey not.
    customer_reply(desk, resolved, "Den fungerar inte igen, samma fel som förut.")
    assert the_case(desk).status == CaseStatus.OPEN
    agent_reply(desk, notification, "#resolve")
    assert len(mail(desk, OutboxKind.STATUS_UPDATE)) == 2
    assert len(mail(desk, OutboxKind.SURVEY)) == 1


# --- satisfaction --------------------------------------------------------------------------------


def test_a_score_replied_to_the_survey_is_stored_never_reopens_and_reaches_the_agent(desk):
    agent_reply(desk, open_case(desk), "#resolve")
    [survey] = mail(desk, OutboxKind.SURVEY)
    quoted = "\n\nDen 2 dec. 2026 skrev IT Support <it@x>:\n> Hur nöjd är du?"
    customer_reply(desk, survey, "4 - tack för snabb hjälp!" + quoted)
    case = the_case(desk)
    assert case.status == CaseStatus.RESOLVED
    assert (case.satisfaction_score, case.satisfaction_comment) == (4, "tack för snabb hjälp!")
    assert case.survey_answered_at is not None
    [answered] = events(desk, EventKind.SATISFACTION_ANSWERED)
    assert answered.data == {"score": 4, "comment": "tack för snabb hjälp!"}
    told = [m for m in mail(desk, OutboxKind.NOTIFICATION) if "Satisfaction" in m["Subject"]]
    assert told and told[0]["Subject"] == "[IT-1001] Satisfaction 4/5 from kari@kunde.example: Skrivaren"
    assert "Satisfaction: 4 of 5 — tack för snabb hjälp!" in text_of(told[0])


def test_a_digit_on_a_reply_that_is_not_to_the_survey_reopens_the_case(desk):
    agent_reply(desk, open_case(desk), "#resolve")
    [resolved] = mail(desk, OutboxKind.STATUS_UPDATE)
    customer_reply(desk, resolved, "2 printers are broken now")
    case = the_case(desk)
    assert case.status == CaseStatus.OPEN and case.satisfaction_score is None


def test_a_reply_to_the_survey_that_does_not_begin_with_a_score_reopens_the_case(desk):
    agent_reply(desk, open_case(desk), "#resolve")
    [survey] = mail(desk, OutboxKind.SURVEY)
    customer_reply(desk, survey, "2 printers are broken now")
    case = the_case(desk)
    assert case.status == CaseStatus.OPEN and case.satisfaction_score is None


def test_a_late_answer_to_the_survey_stays_on_its_case(desk):
    agent_reply(desk, open_case(desk), "#resolve")
    [survey] = mail(desk, OutboxKind.SURVEY)
    with Session(desk.engine) as session:
        row = session.exec(select(Case)).one()
        assert row.resolved_at is not None
        row.resolved_at = row.resolved_at - timedelta(days=30)  # past the reopen window
        session.add(row)
        session.commit()
    customer_reply(desk, survey, "5")
    with Session(desk.engine) as session:
        [case] = session.exec(select(Case)).all()  # no new case
    assert case.satisfaction_score == 5


def test_show_gives_the_score_and_comment(config_file, desk, capsys):
    agent_reply(desk, open_case(desk), "#resolve")
    customer_reply(desk, mail(desk, OutboxKind.SURVEY)[0], "Betyg: 3. Det tog lite tid")
    assert main(["--config", str(config_file), "show", "IT-1001"]) == 0
    out = capsys.readouterr().out
    assert "satisfaction: asked " in out and "3 of 5, answered " in out and ": Det tog lite tid" in out


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("5", Answer(5, "")),
        ("5!", Answer(5, "")),
        ("4 - thanks", Answer(4, "thanks")),
        ("Betyg: 4", Answer(4, "")),
        ("Karakter 2, det tok for lang tid", Answer(2, "det tok for lang tid")),
        ("Arvosana: 5\n\nKiitos!", Answer(5, "Kiitos!")),
        ("4/5 bra jobbat", Answer(4, "bra jobbat")),
        ("4 av 5", Answer(4, "")),
        ("5 stjerner!", Answer(5, "")),
        ("3\n\nOn Wed, 2 Dec 2026 at 10:00, IT Support <it@x.test> wrote:\n> How satisfied", Answer(3, "")),
        ("2 printers are broken", None),
        ("4 thanks", None),
        ("10", None),
        ("4.5", None),
        ("0", None),
        ("6", None),
        ("The printer works, thanks", None),
    ],
)
def test_the_score_is_read_only_from_the_beginning_of_the_reply(text, expected):
    assert read_answer(text) == expected


def test_only_a_reply_to_the_survey_itself_answers_it():
    assert answers_survey("<s@x>", "<s@x>", ())
    assert answers_survey("<s@x>", "<other@x>", ("<s@x>", "<other@x>"))
    assert not answers_survey("<s@x>", "<resolved@x>", ("<resolved@x>",))
    assert not answers_survey("", "", ())


# --- the scheduler's jobs ------------------------------------------------------------------------


def test_a_quiet_case_reminds_the_group_once_per_silence(desk):
    notification = open_case(desk)  # the acknowledgement is the customer's last mail from us
    opened = the_case(desk).created_at
    # No business hours: every day is a business day.
    assert remind_quiet_cases(desk.engine, desk.casework, opened + timedelta(days=1)) == 0
    assert remind_quiet_cases(desk.engine, desk.casework, opened + timedelta(days=2, minutes=1)) == 2
    assert remind_quiet_cases(desk.engine, desk.casework, opened + timedelta(days=3)) == 0
    reminders = mail(desk, OutboxKind.QUIET_REMINDER)
    assert {m["To"] for m in reminders} == {"agent1@example.test", "agent2@example.test"}
    assert "heard nothing from us for 2 business day(s)" in " ".join(text_of(reminders[0]).split())
    [quiet] = events(desk, EventKind.CUSTOMER_QUIET)
    assert quiet.data["days"] == 2
    # An answer to the customer ends the silence: a later one is reminded of again.
    agent_reply(desk, notification, "Vi tittar på det.")
    heard = the_case(desk).customer_heard_at
    assert heard is not None and the_case(desk).quiet_reminded_at is None
    assert remind_quiet_cases(desk.engine, desk.casework, heard + timedelta(days=1)) == 0
    assert remind_quiet_cases(desk.engine, desk.casework, heard + timedelta(days=2, minutes=1)) == 2


def test_a_quiet_case_can_send_the_customer_a_status_update(config_file):
    desk = configured(config_file, "quiet_days = 1\nquiet_status_mail = true\n")
    open_case(desk)
    opened = the_case(desk).created_at
    assert remind_quiet_cases(desk.engine, desk.casework, opened + timedelta(days=1, minutes=1)) == 3
    [update] = mail(desk, OutboxKind.STATUS_UPDATE)
    assert "arbetar fortfarande" in text_of(update)
    # The update ended the silence: the next reminder is a business day after it.
    assert remind_quiet_cases(desk.engine, desk.casework, opened + timedelta(days=1, minutes=30)) == 0


def test_a_pending_case_without_an_answer_is_resolved_and_the_customer_told(desk):
    agent_reply(desk, open_case(desk), "#pending\nKan du starta om skrivaren?")
    since = the_case(desk).pending_since
    assert since is not None
    assert since is not None
    assert resolve_unanswered(desk.engine, desk.casework, since + timedelta(days=2)) == 0
    assert resolve_unanswered(desk.engine, desk.casework, since + timedelta(days=3, seconds=1)) == 2
    assert resolve_unanswered(desk.engine, desk.casework, since + timedelta(days=4)) == 0
    case = the_case(desk)
    assert case.status == CaseStatus.RESOLVED and case.pending_since is None
    told = [m for m in mail(desk, OutboxKind.STATUS_UPDATE) if "väntat på svar" in text_of(m)]
    assert len(told) == 1 and len(mail(desk, OutboxKind.SURVEY)) == 1
    assert "no answer from the customer in 3d 0h" in events(desk, EventKind.STATUS_CHANGED)[-1].detail


def test_a_pending_case_the_customer_answered_is_not_resolved(desk):
    agent_reply(desk, open_case(desk), "#pending\nKan du starta om skrivaren?")
    since = the_case(desk).pending_since
    assert since is not None
    deliver(desk, sender=CUSTOMER, subject="Re: [IT-1001] Skrivaren", body="Jag har startat om den nu.")
    assert the_case(desk).status == CaseStatus.OPEN
    assert resolve_unanswered(desk.engine, desk.casework, since + timedelta(days=5)) == 0
    assert the_case(desk).status == CaseStatus.OPEN


def test_a_resolved_case_closes_after_auto_close_after(desk):
    agent_reply(desk, open_case(desk), "#resolve")
    resolved = the_case(desk).resolved_at
    assert resolved is not None
    assert close_resolved(desk.engine, desk.casework, resolved + timedelta(days=6)) == 0
    assert close_resolved(desk.engine, desk.casework, resolved + timedelta(days=7, seconds=1)) == 1
    assert close_resolved(desk.engine, desk.casework, resolved + timedelta(days=8)) == 0
    assert the_case(desk).status == CaseStatus.CLOSED
    assert "resolved for 7d 0h" in events(desk, EventKind.STATUS_CHANGED)[-1].detail
