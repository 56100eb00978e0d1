"""`mailrouter check` and `mailrouter rules explain` on good and broken inputs."""

import shutil

import pytest

from mailrouter.cli import main
from mailrouter.config import load_config
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
    assert "templates/it/ack.en.txt.j2: " in err and "no attribute 'numbr'" in err


def test_check_renders_the_survey_of_a_department_that_sends_it(shipped, capsys):
    # The shipped it department asks for satisfaction: its survey is rendered with sample data.
    (shipped / "templates" / "it" / "survey.en.txt.j2").write_text("{{ case.scroe }}\n")
    code, _, err = run(capsys, "--config", str(shipped / "config.toml"), "check")
    assert code == 1
    assert "it/survey.en.txt.j2" in err and "scroe" in err


def test_check_names_a_template_syntax_error_with_its_line(shipped, capsys):
    (shipped / "templates" / "hr" / "ack.sv.txt.j2").write_text("Hej\n{% if %}\n")
    code, _, err = run(capsys, "--config", str(shipped / "config.toml"), "check")
    assert code == 1
    assert "hr/ack.sv.txt.j2:2" in err


def test_check_names_a_missing_secret(shipped, capsys, monkeypatch):
    monkeypatch.delenv("MAILROUTER_HR_PASSWORD")
    code, _, err = run(capsys, "--config", str(shipped / "config.toml"), "check")
    assert code == 1 and "mailboxes.hr.imap: environment variable MAILROUTER_HR_PASSWORD is not set" in err


def test_check_names_every_bad_config_key_on_a_line_of_its_own(shipped, capsys):
    path = shipped / "config.toml"
    path.write_text(path.read_text().replace('prefix = "VM"', 'prefix = "VM"\nprefx = "X"'))
    path.write_text(path.read_text().replace("port = 2525", 'port = "smtp"'))
    code, _, err = run(capsys, "--config", str(path), "check")
    assert code == 1
    assert err.splitlines() == [
        f"error: {path}: smtp.port: Input should be a valid integer, unable to parse string as an integer",
        f"error: {path}: mailboxes.vaktmester.prefx: unknown key",
    ]


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


@pytest.mark.parametrize(
    "broken",
    [
        "it/ack.en.html.j2",  # the HTML part
        "hr/ack.fi.txt.j2",  # a language no department defaults to
        "_default/remind.da.txt.j2",  # a template of _default/, for every department
    ],
)
def test_check_renders_every_template_file_of_every_language_and_part(shipped, capsys, broken):
    (shipped / "templates" / broken).write_text("{{ customer.adress }}\n")
    code, _, err = run(capsys, "--config", str(shipped / "config.toml"), "check")
    assert code == 1
    [line] = err.splitlines()
    assert f"templates/{broken}: " in line and "no attribute 'adress'" in line


def test_check_names_a_template_that_a_rule_wants_and_no_file_has(shipped, capsys):
    (shipped / "rules" / "40-vip.toml").write_text(
        '[[rule]]\nname = "vip"\nwhen.mailbox = "it"\nthen.template = "ack-vip"\n'
    )
    code, _, err = run(capsys, "--config", str(shipped / "config.toml"), "check")
    assert code == 1
    assert "template it/ack-vip:" in err and "it/ack-vip.en.txt.j2" in err and "exists" in err


def test_check_names_a_missing_notification_template(shipped, capsys):
    for path in (shipped / "templates" / "_default").glob("notify.*"):
        path.unlink()
    code, _, err = run(capsys, "--config", str(shipped / "config.toml"), "check")
    assert code == 1
    assert {line.split(":")[1].strip() for line in err.splitlines()} == {
        "template hr/notify",
        "template it/notify",
        "template vaktmester/notify",
    }


def test_check_names_a_rule_assignee_who_is_no_agent(shipped, capsys):
    (shipped / "rules" / "40-assign.toml").write_text(
        '[[rule]]\nname = "to-bob"\nthen.assignee = "bob@example.test"\n'
        '[[rule]]\nname = "to-agent"\nthen.assignee = "Agent2@example.test"\n'
    )
    code, _, err = run(capsys, "--config", str(shipped / "config.toml"), "check")
    assert code == 1
    [line] = err.splitlines()
    assert "40-assign.toml: rule 'to-bob': then.assignee 'bob@example.test' is not a member" in line


def test_check_names_every_broken_rule_file_at_once(shipped, capsys):
    (shipped / "rules" / "40-a.toml").write_text('[[rule]]\nname = "a"\nwhen.subjekt = "x"\n')
    (shipped / "rules" / "41-b.toml").write_text('[[rule]]\nname = "b"\nthen.department = "finance"\n')
    code, _, err = run(capsys, "--config", str(shipped / "config.toml"), "check")
    assert code == 1
    lines = err.splitlines()
    assert len(lines) == 2
    assert "40-a.toml: rule 'a'.when.subjekt: unknown key" in lines[0]
    assert "41-b.toml: rule 'b': then.department 'finance' is not one of" in lines[1]


def test_check_names_every_unreadable_secret_and_prints_none(shipped, capsys, monkeypatch):
    monkeypatch.delenv("MAILROUTER_HR_PASSWORD")
    config = shipped / "config.toml"
    from_env = 'password_env = "MAILROUTER_VAKTMESTER_PASSWORD"'
    config.write_text(config.read_text().replace(from_env, 'password_file = "${CREDENTIALS_DIRECTORY}/vakt"'))
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(shipped / "credentials"))
    code, _, err = run(capsys, "--config", str(config), "check")
    assert code == 1
    lines = err.splitlines()
    assert len(lines) == 2
    assert "mailboxes.hr.imap: environment variable MAILROUTER_HR_PASSWORD is not set" in lines[0]
    assert "mailboxes.vaktmester.imap: cannot read password_file" in lines[1]
    assert "credentials/vakt" in lines[1]
    assert "secret-of-at-least-thirty-two-bytes" not in err


def test_check_connect_names_each_server_it_cannot_log_in_to(shipped, capsys, tmp_path):
    """Nothing listens on port 9 of the loopback: every login fails, each named by its key."""
    config = shipped / "config.toml"
    text = config.read_text().replace("port = 1143", "port = 9").replace("port = 2525", "port = 9")
    text = text.replace(
        'database_url = "sqlite:///var/mailrouter.db"',
        'database_url = "postgresql+psycopg://mailrouter@127.0.0.1:9/mailrouter"',
    )
    config.write_text(text)
    code, _, err = run(capsys, "--config", str(config), "check", "--connect")
    assert code == 1
    keys = sorted(line.split(": ")[2] for line in err.splitlines())
    assert keys == [
        "database_url",
        "mailboxes.hr.imap",
        "mailboxes.it.imap",
        "mailboxes.vaktmester.imap",
        "smtp",
    ], err
    assert "cannot log in to 127.0.0.1:9 as hr@example.test" in err


def test_check_connect_names_a_sqlite_database_at_a_newer_schema(shipped, capsys):
    from sqlalchemy import create_engine, text

    (shipped / "var").mkdir()
    engine = create_engine(f"sqlite:///{shipped / 'var' / 'mailrouter.db'}")
    with engine.begin() as connection:
        connection.execute(text("CREATE TABLE alembic_version (version_num VARCHAR(32))"))
        connection.execute(text("INSERT INTO alembic_version VALUES ('9999')"))
    engine.dispose()
    config = shipped / "config.toml"
    unreachable = config.read_text().replace("port = 1143", "port = 9").replace("port = 2525", "port = 9")
    config.write_text(unreachable)
    code, _, err = run(capsys, "--config", str(config), "check", "--connect")
    assert code == 1
    assert "database_url: the database is at schema 9999, newer than this mailrouter" in err


def test_the_systemd_config_reads_every_secret_from_a_credential_the_unit_loads(
    tmp_path, request, monkeypatch, capsys
):
    """systemd/config.toml passes check with $CREDENTIALS_DIRECTORY holding exactly the files the
    unit's LoadCredential= lines name, and keeps its database in $STATE_DIRECTORY."""
    root = request.config.rootpath
    etc = tmp_path / "etc"
    for name in ("rules", "templates"):
        shutil.copytree(root / name, etc / name)
    shutil.copy(root / "systemd" / "config.toml", etc / "config.toml")
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    unit = (root / "systemd" / "mailrouter.service").read_text().splitlines()
    for line in unit:
        if line.startswith("LoadCredential="):
            (credentials / line.removeprefix("LoadCredential=").partition(":")[0]).write_text("x" * 32)
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(credentials))
    monkeypatch.setenv("STATE_DIRECTORY", str(tmp_path / "state"))
    code, out, err = run(capsys, "--config", str(etc / "config.toml"), "check")
    assert code == 0, err
    assert "ok — 3 mailbox(es)" in out
    config = load_config(etc / "config.toml")
    assert config.database_url == f"sqlite:///{tmp_path}/state/mailrouter.db"
    assert config.state_dir == tmp_path / "state"
