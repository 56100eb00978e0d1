from dataclasses import replace

import pytest

from mailrouter.errors import RuleError
from mailrouter.language import detect_language
from mailrouter.parse import parse
from mailrouter.route import load_rules, route
from tests.hangguard import without_hanging
from tests.messages import make_mail

DEPARTMENTS = frozenset({"it", "hr"})


def rules_from(tmp_path, text, name="10-test.toml"):
    directory = tmp_path / "rules-under-test"
    directory.mkdir(exist_ok=True)
    (directory / name).write_text(text)
    return load_rules(directory, DEPARTMENTS)


PAYROLL = """
[[rule]]
name = "vip"
when.from_domain = "board.example"
then.tags = ["vip"]
then.priority = "urgent"
continue = true

[[rule]]
name = "payroll"
when.mailbox = "hr"
when.subject_contains = ["lønn", "salary"]
then.category = "payroll"
then.priority = "high"
then.group = "hr-payroll"
then.tags = ["payroll"]
then.template = "ack-payroll"

[[rule]]
name = "catch-all-hr"
when.mailbox = "hr"
then.category = "general"
"""


def test_first_match_wins(tmp_path, mailboxes):
    rules = rules_from(tmp_path, PAYROLL)
    decision = route(
        parse(make_mail(subject="Spørsmål om lønn", to="hr@example.test")), "hr", mailboxes, rules
    )
    assert decision.matched_rules == ("payroll",)
    assert (decision.category, decision.priority, decision.group) == (
        "payroll",
        "high",
        "hr-payroll",
    )
    assert decision.template == "ack-payroll"
    assert decision.verdicts[2].skipped
    assert "rule 'payroll'" in decision.explanation and "subject contains 'lønn'" in decision.explanation


def test_continue_lets_later_rules_apply_and_tags_add_up(tmp_path, mailboxes):
    rules = rules_from(tmp_path, PAYROLL)
    inbound = parse(make_mail(subject="salary", sender="ceo@board.example"))
    decision = route(inbound, "hr", mailboxes, rules)
    assert decision.matched_rules == ("vip", "payroll")
    assert decision.tags == ("vip", "payroll")
    assert decision.priority == "high"  # the later rule set it again


def test_no_match_uses_the_mailbox_department(tmp_path, mailboxes):
    rules = rules_from(tmp_path, PAYROLL)
    decision = route(parse(make_mail()), "it", mailboxes, rules)
    assert decision.department == "it" and decision.template == "ack" and decision.priority == "normal"
    assert decision.explanation.startswith("no rule matched")


@pytest.mark.parametrize(
    ("when", "mail", "matches"),
    [
        ('when.from = "*@kunde.example"', {}, True),
        ('when.from = "*@other.example"', {}, False),
        ('when.to = "it-*@example.test"', {}, True),
        ('when.cc = "boss@kunde.example"', {"headers": {"Cc": "Boss <boss@kunde.example>"}}, True),
        ("when.subject_regex = '^printer\\b'", {}, True),
        ('when.body_contains = "DOES NOT WORK"', {}, True),
        ("when.subject_contains = []", {}, True),  # an empty list sets no condition
        ("when.body_regex = 'toner'", {}, False),
        ('when.header = { X-Priority = "1" }', {"headers": {"X-Priority": "1 (Highest)"}}, True),
        (
            "when.header_regex = { X-Mailer = '^Outlook' }",
            {"headers": {"X-Mailer": "Apple Mail"}},
            False,
        ),
    ],
)
def test_conditions(tmp_path, mailboxes, when, mail, matches):
    rules = rules_from(tmp_path, f'[[rule]]\nname = "r"\n{when}\nthen.category = "hit"\n')
    decision = route(parse(make_mail(**mail)), "it", mailboxes, rules)
    assert (decision.category == "hit") is matches


FACILITIES = """
[[rule]]
name = "water"
when.mailbox = "vaktmester"
when.body_regex = 'lekk|leak'
then.priority = "urgent"
"""


def test_explain_reports_every_failed_condition_and_routing_stops_at_the_first(tmp_path, mailboxes):
    rules = rules_from(tmp_path, FACILITIES)
    inbound = parse(make_mail(body="Skjermen er svart"))
    explained = route(inbound, "it", mailboxes, rules, explain=True)
    routed = route(inbound, "it", mailboxes, rules)
    assert explained.verdicts[0].reasons == (
        "mailbox is none of ['vaktmester']",
        "body matches none of ['lekk|leak']",
    )
    assert routed.verdicts[0].reasons == ("mailbox is none of ['vaktmester']",)


EVERY_CONDITION = """
[[rule]]
name = "board"
when.from_domain = "board.example"
when.header = { X-Priority = "1" }
then.tags = ["vip"]
continue = true

[[rule]]
name = "printers"
when.mailbox = "it"
when.to = "it-*@example.test"
when.subject_regex = 'printer|skrivar'
when.body_contains = ["toner", "paper"]
then.category = "printing"

[[rule]]
name = "outlook"
when.cc = "boss@kunde.example"
when.header_regex = { X-Mailer = '^Outlook' }
then.category = "mail-client"
"""


@pytest.mark.parametrize("mailbox", ["it", "hr"])
@pytest.mark.parametrize("subject", ["Printer jam", "Skrivaren", "Lønn"])
@pytest.mark.parametrize("body", ["Out of toner", "Nothing to say"])
@pytest.mark.parametrize(
    "extra",
    [
        {},
        {"sender": "Ceo <ceo@board.example>", "headers": {"X-Priority": "1"}},
        {"sender": "Ceo <ceo@board.example>"},
        {"headers": {"Cc": "boss@kunde.example", "X-Mailer": "Outlook 16"}},
        {"headers": {"Cc": "boss@kunde.example", "X-Mailer": "Thunderbird"}},
    ],
)
def test_routing_decides_as_explain_does(tmp_path, mailboxes, mailbox, subject, body, extra):
    rules = rules_from(tmp_path, EVERY_CONDITION)
    inbound = parse(make_mail(subject=subject, body=body, **extra))
    routed = route(inbound, mailbox, mailboxes, rules)
    explained = route(inbound, mailbox, mailboxes, rules, explain=True)
    assert routed == replace(explained, verdicts=routed.verdicts)
    assert [(v.rule, v.matched, v.skipped) for v in routed.verdicts] == [
        (v.rule, v.matched, v.skipped) for v in explained.verdicts
    ]


def test_rule_can_move_a_message_to_another_department_and_skip_the_acknowledgement(tmp_path, mailboxes):
    rules = rules_from(tmp_path, '[[rule]]\nname = "r"\nthen.department = "hr"\nthen.acknowledge = false\n')
    decision = route(parse(make_mail()), "it", mailboxes, rules)
    assert decision.department == "hr" and decision.template is None


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            '[[rule]]\nname = "x"\nwhen.subjet_contains = "a"\n',
            "rule 'x'.when.subjet_contains: unknown key",
        ),
        ("[[rule]]\nname = \"x\"\nwhen.subject_regex = '(('\n", "invalid regular expression"),
        (
            '[[rule]]\nname = "x"\nthen.department = "sales"\n',
            "then.department 'sales' is not one of: hr, it",
        ),
        ('[[rule]]\nname = "x"\nthen.priority = "asap"\n', "rule 'x'.then.priority"),
        ('[[rule]\nname = "x"\n', "not valid TOML"),
    ],
)
def test_broken_rules_name_file_rule_and_key(tmp_path, text, message):
    with pytest.raises(RuleError) as error:
        rules_from(tmp_path, text, name="50-broken.toml")
    assert "50-broken.toml" in str(error.value)
    assert message in str(error.value)


def test_duplicate_rule_names_are_refused(tmp_path):
    rules_from(tmp_path, '[[rule]]\nname = "x"\n', name="a.toml")
    with pytest.raises(RuleError, match="already used"):
        rules_from(tmp_path, '[[rule]]\nname = "x"\n', name="b.toml")


@pytest.mark.parametrize(
    ("text", "language"),
    [
        ("Hej! Skrivaren fungerar inte och jag kan inte skriva ut. Tack", "sv"),
        ("Hei! Skriveren fungerer ikke, og jeg får ikke skrevet ut. Takk", "no"),
        ("Hello, the printer does not work and I can't print. Thanks", "en"),
        ("12345", "no"),
    ],
)
def test_detect_language(text, language):
    assert detect_language(text, default="no") == language


def test_a_redos_pattern_routes_a_hostile_subject_without_hanging(tmp_path, mailboxes):
    """^(\\w+\\s?)*$ backtracks exponentially in re: 2.7 s on 24 letters and a "!", twice that per
    letter more, so some 10^15 years on these 100. RE2 reads the subject once."""
    rules = rules_from(tmp_path, "[[rule]]\nname = \"words\"\nwhen.subject_regex = '^(\\w+\\s?)*$'\n")
    hostile = parse(make_mail(subject="a" * 100 + "!"))
    assert without_hanging(route, hostile, "it", mailboxes, rules).matched_rules == ()
    assert route(parse(make_mail(subject="just words")), "it", mailboxes, rules).matched_rules == ("words",)


def test_body_regexes_read_only_the_first_regex_text_chars(tmp_path, mailboxes):
    rules = rules_from(tmp_path, "[[rule]]\nname = \"late\"\nwhen.body_regex = 'needle'\n")
    inbound = parse(make_mail(body="hay " * 1000 + "needle"))
    assert route(inbound, "it", mailboxes, rules).matched_rules == ("late",)
    assert route(inbound, "it", mailboxes, rules, regex_chars=1000).matched_rules == ()
