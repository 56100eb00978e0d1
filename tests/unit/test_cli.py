"""`mailrouter check` and `mailrouter rules explain` on good and broken inputs."""

import shutil

import pytest

from mailrouter.cli import main
from tests.messages import make_mail

SECRETS = (
    "MAILROUTER_IT_SUPPORT_PASSWORD",
    "MAILROUTER_HR_PASSWORD",
    "MAILROUTER_VAKTMESTER_PASSWORD",
    "MAILROUTER_REPLY_SECRET",
)


@pytest.fixture
def shipped(tmp_path, request, monkeypatch):
    """A copy of the shipped config.toml, rules/ and templates/, so tests can break them."""
    root = request.config.rootpath
    for name in ("rules", "templates"):
        shutil.copytree(root / name, tmp_path / name)
    shutil.copy(root / "config.toml", tmp_path / "config.toml")
    for name in SECRETS:
        monkeypatch.setenv(name, "secret-of-at-least-thirty-two-bytes")
    return tmp_path


def run(capsys, *args):
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_check_accepts_the_shipped_configuration(shipped, capsys):
    code, out, _ = run(capsys, "--config", str(shipped / "config.toml"), "check")
    assert code == 0
    assert "ok — 3 mailbox(es), 6 rule(s)" in out


def test_check_names_a_broken_rule(shipped, capsys):
    (shipped / "rules" / "40-broken.toml").write_text('[[rule]]\nname = "oops"\nwhen.subjekt = "x"\n')
    code, _, err = run(capsys, "--config", str(shipped / "config.toml"), "check")
    assert code == 1
    assert "40-broken.toml" in err and "rule 'oops'.when.subjekt: unknown key" in err


@pytest.mark.parametrize(
    ("pattern", "key"),
    [
        (r"(\w)\1", "when.subject_regex"),  # a backreference
        (r"invoice(?!s)", "when.body_regex"),  # lookahead
        (r"(?<=Re: )x", "when.header_regex: Value error, Subject"),  # lookbehind
    ],
)
def test_check_refuses_a_pattern_re2_cannot_run_naming_file_rule_and_key(shipped, capsys, pattern, key):
    condition = (
        f"{key} = '{pattern}'" if "header" not in key else f"when.header_regex = {{ Subject = '{pattern}' }}"
    )
    (shipped / "rules" / "40-slow.toml").write_text(f'[[rule]]\nname = "clever"\n{condition}\n')
    code, _, err = run(capsys, "--config", str(shipped / "config.toml"), "check")
    assert code == 1
    assert "40-slow.toml" in err and f"rule 'clever'.{key}" in err
    assert "RE2 cannot do" in err and "no backreferences or lookaround" in err


def test_check_names_a_template_that_does_not_render(shipped, capsys):
    (shipped / "templates" / "it" / "ack.en.txt.j2").write_text("Case {{ case.numbr }}\n")
    code, _, err = run(capsys, "--config", str(shipped / "config.toml"), "check")
    assert code == 1
    assert "template it/ack" in err and "numbr" in err


def test_check_renders_the_survey_of_a_department_that_sends_it(shipped, capsys):
    # The shipped it department asks for satisfaction: its survey is rendered with sample data.
    (shipped / "templates" / "it" / "survey.en.txt.j2").write_text("{{ case.scroe }}\n")
    code, _, err = run(capsys, "--config", str(shipped / "config.toml"), "check")
    assert code == 1
    assert "template it/survey" in err and "scroe" in err


def test_check_names_a_template_syntax_error_with_its_line(shipped, capsys):
    (shipped / "templates" / "hr" / "ack.sv.txt.j2").write_text("Hej\n{% if %}\n")
    code, _, err = run(capsys, "--config", str(shipped / "config.toml"), "check")
    assert code == 1
    assert "hr/ack.sv.txt.j2:2" in err


def test_check_names_a_missing_secret(shipped, capsys, monkeypatch):
    monkeypatch.delenv("MAILROUTER_HR_PASSWORD")
    code, _, err = run(capsys, "--config", str(shipped / "config.toml"), "check")
    assert code == 1 and "mailboxes.hr.imap: environment variable MAILROUTER_HR_PASSWORD is not set" in err


def test_check_names_a_bad_config_key(shipped, capsys):
    path = shipped / "config.toml"
    path.write_text(path.read_text().replace('prefix = "VM"', 'prefix = "VM"\nprefx = "X"'))
    code, _, err = run(capsys, "--config", str(path), "check")
    assert code == 1 and "mailboxes.vaktmester.prefx: unknown key" in err


def test_explain_shows_every_rule_and_the_decision(shipped, capsys, tmp_path):
    eml = tmp_path / "payroll.eml"
    eml.write_bytes(
        make_mail(subject="Spørsmål om lønn", to="hr@example.test", body="Hei, hvor er lønnsslippen?")
    )
    code, out, _ = run(capsys, "--config", str(shipped / "config.toml"), "rules", "explain", str(eml))
    assert code == 0
    assert "as received by mailbox 'hr'" in out
    assert "MATCH hr-payroll" in out and "subject contains 'lønn'" in out
    assert "no    it-access" in out and "skip  hr-sick-leave" in out
    assert "priority    high" in out and "acknowledge hr/ack-payroll (no)" in out
    assert not (shipped / "var").exists()  # explain touches no database


def test_explain_says_when_screening_forbids_an_answer(shipped, capsys, tmp_path):
    eml = tmp_path / "ooo.eml"
    eml.write_bytes(make_mail(headers={"Auto-Submitted": "auto-replied"}))
    code, out, _ = run(capsys, "--config", str(shipped / "config.toml"), "rules", "explain", str(eml))
    assert code == 0
    assert "screening: auto-reply — Auto-Submitted: auto-replied" in out
    assert "would keep this message from opening a case" in out


def test_explain_refuses_a_file_that_is_not_mail(shipped, capsys, tmp_path):
    eml = tmp_path / "notmail.eml"
    eml.write_bytes(b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + bytes(64))
    code, _, err = run(capsys, "--config", str(shipped / "config.toml"), "rules", "explain", str(eml))
    assert code == 1 and "not an RFC 822 message" in err


def test_explain_needs_no_secrets(shipped, capsys, tmp_path, monkeypatch):
    for name in SECRETS:
        monkeypatch.delenv(name)
    eml = tmp_path / "m.eml"
    eml.write_bytes(make_mail())
    code, out, _ = run(capsys, "--config", str(shipped / "config.toml"), "rules", "explain", str(eml))
    assert code == 0 and "department  it" in out


def test_check_names_a_rule_group_without_members(shipped, capsys):
    (shipped / "rules" / "40-group.toml").write_text('[[rule]]\nname = "g"\nthen.group = "nobody-here"\n')
    code, _, err = run(capsys, "--config", str(shipped / "config.toml"), "check")
    assert code == 1 and "then.group 'nobody-here' is not in agents.groups" in err


def test_check_refuses_a_reply_secret_shorter_than_32_bytes_naming_the_key(shipped, capsys, monkeypatch):
    monkeypatch.setenv("MAILROUTER_REPLY_SECRET", "x" * 31)
    code, _, err = run(capsys, "--config", str(shipped / "config.toml"), "check")
    assert code == 1 and "agents (reply key k1): the reply secret is 31 bytes; at least 32" in err
