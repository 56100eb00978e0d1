"""SLA policies on cases: chosen, due times stored, paused while pending, warned and escalated once."""

from datetime import UTC, datetime, timedelta

import pytest
from sqlmodel import Session, select

from mailrouter import sla
from mailrouter.cli import main
from mailrouter.config import MailboxSettings, load_config
from mailrouter.daemon import load
from mailrouter.db import open_database
from mailrouter.errors import ConfigError, RuleError
from mailrouter.intake import Intake
from mailrouter.models import Case, Event, OutboxMessage
from mailrouter.parse import parse
from mailrouter.route import load_rules, route
from mailrouter.schedule import check_sla
from mailrouter.vocabulary import CaseStatus, EventKind, OutboxKind
from tests.messages import make_mail
from tests.unit.test_agent_flow import agent_reply, deliver, new_case

SLA = """
[business_hours.oslo]
time_zone = "Europe/Oslo"
holidays = "NO"
[sla.standard]
first_response = "4h"
resolution = "2d"
next_response = "8h"
escalate_to = "lead@example.test"
raise_priority = true
[sla.urgent]
first_response = "1h"
resolution = "8h"
warn_at = 0.5
escalate_to = "hr-agents"
reassign_to = "hr-agents"
[sla_by_priority]
urgent = "urgent"
"""


def with_sla(config_file, extra: str = SLA, department: str = 'sla = "standard"\n'):
    text = config_file.read_text().replace('group = "it-agents"\n', f'group = "it-agents"\n{department}', 1)
    config_file.write_text(text + extra)
    return load_config(config_file)


@pytest.fixture
def sla_intake(config_file):
    loaded = load(with_sla(config_file))
    return Intake(loaded.config, loaded.rules, loaded.templates, open_database(loaded.config), loaded.agents)


def the_case(intake) -> Case:
    with Session(intake.engine) as session:
        return session.exec(select(Case)).one()


def set_case(intake, **values):
    with Session(intake.engine) as session:
        row = session.exec(select(Case)).one()
        for key, value in values.items():
            setattr(row, key, value)
        session.add(row)
        session.commit()


def mail_of(intake, kind):
    with Session(intake.engine) as session:
        return session.exec(select(OutboxMessage).where(OutboxMessage.kind == kind)).all()


def events(intake, kind):
    with Session(intake.engine) as session:
        return session.exec(select(Event).where(Event.kind == kind)).all()


def test_policy_comes_from_the_rule_then_the_priority_then_the_department(config_file):
    config = with_sla(config_file)
    assert sla.choose(config, "urgent", "it", "normal").policy == "urgent"
    assert sla.choose(config, None, "it", "urgent").policy == "urgent"
    assert sla.choose(config, None, "it", "normal").policy == "standard"
    assert sla.choose(config, None, "hr", "normal").policy == ""


def test_an_unknown_policy_or_escalation_group_is_a_config_error(config_file):
    with pytest.raises(ConfigError, match=r"sla_by_priority\.high 'nope' is not an"):
        with_sla(config_file, SLA.replace('urgent = "urgent"', 'high = "nope"'))


def test_new_case_stores_due_times_counted_in_the_departments_calendar(config_file, sla_intake):
    deliver(sla_intake, subject="Printer")
    case = the_case(sla_intake)
    assert case.sla == "standard"
    # No business hours named for it: every hour counts.
    assert case.first_response_due == case.created_at + timedelta(hours=4)
    assert case.first_response_warn == case.created_at + timedelta(hours=4) * 0.8
    assert case.resolution_due == case.created_at + timedelta(days=2)
    [event] = events(sla_intake, EventKind.SLA_SET)
    assert "department it's default sla standard" in event.detail


def test_business_hours_of_the_department_move_the_due_time(config_file):
    config = with_sla(config_file, department='sla = "standard"\nbusiness_hours = "oslo"\n')
    # Friday 15:00 in Oslo + 4h: one hour on Friday, three on Monday.
    opened = datetime(2026, 5, 8, 13, 0, tzinfo=UTC)
    due = sla.clock(config, "it", "standard", opened, timedelta(0))["first_response_due"]
    assert due == datetime(2026, 5, 11, 9, 0, tzinfo=UTC)  # 11:00 in Oslo


def test_pending_stops_the_clock_and_the_customers_reply_moves_the_targets(sla_intake):
    notification = new_case(sla_intake)
    agent_reply(sla_intake, notification, "#pending\nCan you send a screenshot?")
    case = the_case(sla_intake)
    assert case.status == CaseStatus.PENDING and case.sla_paused_at is not None
    an_hour_ago = case.sla_paused_at - timedelta(hours=1)
    set_case(sla_intake, sla_paused_at=an_hour_ago)
    deliver(sla_intake, subject="Re: [IT-1001] Skrivaren virker ikke", body="Here it is")
    case = the_case(sla_intake)
    assert case.status == CaseStatus.OPEN and case.sla_paused_at is None
    assert 3600 <= case.sla_paused_seconds < 3660
    assert case.resolution_due == case.created_at + timedelta(days=2, seconds=case.sla_paused_seconds)
    # The reply also starts the next-response target.
    assert case.next_response_due is not None


def test_priority_change_recomputes_with_the_priority_policy(sla_intake):
    notification = new_case(sla_intake)
    agent_reply(sla_intake, notification, "#priority urgent\n#note escalating")
    case = the_case(sla_intake)
    assert case.sla == "urgent"
    assert case.resolution_due == case.created_at + timedelta(hours=8)


def test_a_near_target_is_warned_once_and_a_missed_one_escalated_once(sla_intake):
    new_case(sla_intake)
    assert check_sla(sla_intake.engine, sla_intake.casework) == 0
    case = the_case(sla_intake)
    set_case(sla_intake, first_response_warn=case.created_at - timedelta(minutes=1))
    assert check_sla(sla_intake.engine, sla_intake.casework) == 2  # the group's two agents
    assert check_sla(sla_intake.engine, sla_intake.casework) == 0
    [warning] = events(sla_intake, EventKind.SLA_WARNING)
    assert warning.data["target"] == "first-response" and warning.data["remaining_seconds"] > 0
    set_case(sla_intake, first_response_due=case.created_at - timedelta(seconds=30))
    assert check_sla(sla_intake.engine, sla_intake.casework) == 1  # the lead
    assert check_sla(sla_intake.engine, sla_intake.casework) == 0
    [breach] = events(sla_intake, EventKind.SLA_BREACHED)
    assert breach.data["target"] == "first-response" and breach.data["overshoot_seconds"] >= 30
    [escalation] = mail_of(sla_intake, OutboxKind.SLA_ESCALATION)
    assert escalation.rcpt_to == ["lead@example.test"]
    case = the_case(sla_intake)
    assert case.priority == "high"  # raise_priority: normal → high
    assert case.breached_first_response_at is not None
    assert len(mail_of(sla_intake, OutboxKind.SLA_WARNING)) == 2


def test_an_answered_or_pending_case_is_not_escalated(sla_intake):
    notification = new_case(sla_intake)
    agent_reply(sla_intake, notification, "Hello, on it.")
    case = the_case(sla_intake)
    set_case(sla_intake, first_response_due=case.created_at, first_response_warn=case.created_at)
    assert check_sla(sla_intake.engine, sla_intake.casework) == 0
    agent_reply(sla_intake, notification, "#pending\nWaiting for you")
    set_case(sla_intake, resolution_due=case.created_at, resolution_warn=case.created_at)
    assert check_sla(sla_intake.engine, sla_intake.casework) == 0
    assert not events(sla_intake, EventKind.SLA_BREACHED)


def test_escalation_can_reassign_to_a_group(sla_intake):
    deliver(sla_intake, subject="Printer", headers={"X-Priority": "1"})
    set_case(sla_intake, priority="urgent", sla="urgent")
    case = the_case(sla_intake)
    set_case(sla_intake, resolution_due=case.created_at, resolution_warn=case.created_at)
    assert check_sla(sla_intake.engine, sla_intake.casework) == 1  # hr-agents has one member
    case = the_case(sla_intake)
    assert (case.group, case.assignee, case.priority) == ("hr-agents", "", "urgent")


def test_a_rule_chooses_the_policy_and_an_unknown_one_is_refused(tmp_path):
    (tmp_path / "10.toml").write_text('[[rule]]\nname = "vip"\nthen.sla = "urgent"\n')
    rules = load_rules(tmp_path, frozenset({"it"}), frozenset({"urgent"}))
    assert rules[0].then.sla == "urgent"
    with pytest.raises(RuleError, match=r"then\.sla 'urgent' is not an \[sla\] policy"):
        load_rules(tmp_path, frozenset({"it"}), frozenset({"standard"}))
    mailbox = MailboxSettings.model_validate(
        {
            "address": "it@x.test",
            "display_name": "IT",
            "prefix": "IT",
            "imap": {"host": "h", "user": "u", "password_env": "P"},
        }
    )
    assert route(parse(make_mail()), "it", {"it": mailbox}, rules).sla == "urgent"


def test_show_gives_each_targets_due_time_and_standing(config_file, sla_intake, capsys):
    notification = new_case(sla_intake)
    case = the_case(sla_intake)
    set_case(sla_intake, first_response_due=case.created_at - timedelta(minutes=5))
    agent_reply(sla_intake, notification, "Hello, on it.")
    assert main(["--config", str(config_file), "show", "IT-1001"]) == 0
    out = capsys.readouterr().out
    assert "sla standard:" in out
    assert "first-response  due " in out and "overshot by 5m" in out
    assert "resolution      due " in out and "of business time left" in out


def test_rules_explain_shows_the_sla_a_message_would_get(config_file, tmp_path, capsys):
    with_sla(config_file)
    eml = tmp_path / "m.eml"
    eml.write_bytes(make_mail())
    assert main(["--config", str(config_file), "rules", "explain", str(eml)]) == 0
    out = capsys.readouterr().out
    assert (
        "sla         standard (department it's default sla standard): first response 4h 00m, "
        "next response 8h 00m, resolution 2d 0h of business time"
    ) in out
