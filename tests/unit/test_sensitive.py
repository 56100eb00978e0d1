"""Sensitive cases (sick leave): agents' mail carries the number, the category and an excerpt;
`#show` sends the rest to the one agent who asks."""

from __future__ import annotations

from zoneinfo import ZoneInfo

from mailrouter import kpi
from mailrouter.cli import main
from mailrouter.config import load_config
from mailrouter.daemon import load
from mailrouter.db import open_database
from mailrouter.intake import Intake
from mailrouter.models import utcnow
from mailrouter.notices import excerpt
from mailrouter.parse import parse
from mailrouter.route import route
from tests.messages import make_mail
from tests.unit.test_agent_flow import agent_reply, case, deliver, events, outbox
from tests.unit.test_route import rules_from

SICK_LEAVE = """
[[rule]]
name = "sick-leave"
when.subject_contains = "sick leave"
then.category = "absence"
then.sensitive = true
"""
BODY = (
    "I am ill and the doctor says two weeks in bed, so I will not be at work from Monday; please "
    "tell my team lead and the payroll office. The certificate from Dr Berg at Aker clinic is "
    "attached, with my diagnosis: pneumonia, code J18."
)


def test_a_rule_a_department_or_a_category_makes_a_case_sensitive(tmp_path, mailboxes):
    inbound = parse(make_mail(subject="Sick leave from Monday"))
    assert route(inbound, "it", mailboxes, rules_from(tmp_path, SICK_LEAVE)).sensitive
    plain = parse(make_mail(subject="Printer"))
    assert not route(plain, "it", mailboxes, ()).sensitive
    hr_sensitive = {**mailboxes, "it": mailboxes["it"].model_copy(update={"sensitive": True})}
    assert route(plain, "it", hr_sensitive, ()).sensitive
    by_category = {
        **mailboxes,
        "it": mailboxes["it"].model_copy(update={"sensitive_categories": ["absence"]}),
    }
    categorised = rules_from(tmp_path, SICK_LEAVE.replace("then.sensitive = true", ""))
    assert route(inbound, "it", by_category, categorised).sensitive
    says_no = rules_from(tmp_path, '[[rule]]\nname = "never"\nthen.sensitive = false\n', name="20-no.toml")
    assert not route(plain, "it", hr_sensitive, says_no).sensitive  # the rule's word comes first


def test_an_excerpt_is_one_line_cut_at_a_word():
    assert excerpt("Hello,\n\n  the printer\tjams.", 100) == "Hello, the printer jams."
    assert excerpt(BODY, 40) == "I am ill and the doctor says two weeks …"
    assert excerpt("", 40) == ""


def sensitive_intake(config_file):
    (config_file.parent / "rules" / "10-sick.toml").write_text(SICK_LEAVE)
    loaded = load(load_config(config_file))
    return Intake(loaded.config, loaded.rules, loaded.templates, open_database(loaded.config), loaded.agents)


def test_a_sensitive_cases_notification_has_number_category_and_excerpt_and_nothing_else(config_file):
    intake = sensitive_intake(config_file)
    deliver(intake, subject="Sick leave Kari Nordmann", body=BODY)
    assert case(intake).sensitive
    first, second = outbox(intake, "notification")
    for notification in (first, second):
        assert notification["Subject"] == "[IT-1001] New case: (sensitive) absence"
        assert list(notification.iter_attachments()) == []
        assert not notification.is_multipart()
        text = notification.get_body(("plain",)).get_content()
        assert "IT-1001" in text and "absence" in text
        assert "I am ill and the doctor says two weeks in bed, so I will not be at work" in text
        assert "Dr Berg" not in text and "pneumonia" not in text  # beyond the excerpt
        assert "Kari" not in text and "kari@kunde.example" not in text
        assert "#show" in text


def test_another_cases_notification_names_a_sensitive_case_without_its_subject(config_file):
    intake = sensitive_intake(config_file)
    deliver(intake, subject="Sick leave Kari Nordmann", body=BODY)
    deliver(intake, subject="Printer jams", body="It jams.")
    [*_, later] = outbox(intake, "notification")
    text = later.get_body(("plain",)).get_content()
    assert "IT-1001" in text and "(sensitive)" in text and "Sick leave" not in text


def test_show_sends_the_cases_mail_to_the_agent_who_asked_and_to_nobody_else(config_file):
    intake = sensitive_intake(config_file)
    deliver(intake, subject="Sick leave Kari Nordmann", body=BODY)
    notification = outbox(intake, "notification")[0]
    agent_reply(intake, notification, "#show")
    [shown] = outbox(intake, "case-shown")
    assert shown["To"] == "agent1@example.test"
    assert shown["Reply-To"].addresses[0].addr_spec == notification["Reply-To"].addresses[0].addr_spec
    text = shown.get_body(("plain",)).get_content()
    assert BODY in text and "Sick leave Kari Nordmann" in text and "kari@kunde.example" in text
    assert outbox(intake, "agent-reply") == []  # nothing went to the customer
    [event] = events(intake, "case-shown")
    assert "agent1@example.test asked for the case's mail (#show): 1 message(s)" in event


def test_the_reports_count_sensitive_cases_without_their_customer_or_organisation(config_file):
    intake = sensitive_intake(config_file)
    today = utcnow().date()
    deliver(intake, subject="Sick leave Kari Nordmann", body=BODY)
    deliver(intake, subject="Printer jams", body="It jams.")
    result = kpi.figures(
        intake.engine, kpi.Period(today, today, "today"), {"it": ZoneInfo("UTC"), "hr": ZoneInfo("UTC")}
    )
    assert result.total.kpis.created == 2
    for dimension in (kpi.Dimension.CUSTOMER, kpi.Dimension.ORGANISATION):
        groups = {g.key: g.kpis.created for g in result.breakdown(dimension).groups}
        assert groups.pop("(sensitive)") == 1 and list(groups.values()) == [1]


def test_the_command_line_shows_a_sensitive_cases_text_when_asked(config_file, capsys):
    intake = sensitive_intake(config_file)
    deliver(intake, subject="Sick leave Kari Nordmann", body=BODY)
    assert main(["--config", str(config_file), "show", "IT-1001"]) == 0
    out = capsys.readouterr().out
    assert "SENSITIVE" in out and "Dr Berg" not in out
    assert main(["--config", str(config_file), "show", "--text", "IT-1001"]) == 0
    assert "The certificate from Dr Berg" in capsys.readouterr().out
