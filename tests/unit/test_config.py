from datetime import date, timedelta

import pytest

from mailrouter.config import load_config
from mailrouter.errors import ConfigError


def test_valid_config_resolves_secrets_from_env_and_file(config_file):
    config = load_config(config_file)
    it, hr = config.secret("imap.it"), config.secret("imap.hr")
    assert it is not None and it.get_secret_value() == "it-password"
    assert hr is not None and hr.get_secret_value() == "hr-password"
    assert "hr-password" not in repr(config.secret("imap.hr"))
    assert config.database_url.startswith("sqlite:////")


def test_missing_environment_variable_is_named(config_file, monkeypatch):
    monkeypatch.delenv("TEST_IT_PASSWORD")
    with pytest.raises(
        ConfigError, match=r"mailboxes\.it\.imap: environment variable TEST_IT_PASSWORD is not set"
    ):
        load_config(config_file)


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ("port = 2525", 'port = "smtp"', "smtp.port: Input should be a valid integer"),
        ('prefix = "IT"', 'prefix = "it"', "mailboxes.it.prefix: String should match pattern"),
        ('prefix = "HR"', 'prefix = "IT"', "share 'IT'"),
        (
            'password_env = "TEST_IT_PASSWORD"',
            "",
            "mailboxes.it.imap: Value error, set exactly one",
        ),
        (
            'security = "none"\n[agents]',
            'securty = "none"\n[agents]',
            "smtp.securty: unknown key",
        ),
        ("[smtp]", "[smtp", "not valid TOML"),
        ('group = "it-agents"', 'group = "it-agents"\nstart = "all"\nsince = 2026-11-01', "start or since"),
        ('group = "it-agents"', 'group = "it-agents"\nacknowledge_max_age = "3 days"', "an age such as"),
        ('group = "it-agents"', 'group = "it-agents"\nstart = "yesterday"', "mailboxes.it.start"),
    ],
)
def test_errors_name_the_file_and_the_key(config_file, old, new, message):
    text = config_file.read_text()
    assert old in text
    config_file.write_text(text.replace(old, new, 1))
    with pytest.raises(ConfigError) as error:
        load_config(config_file)
    assert str(config_file) in str(error.value)
    assert message in str(error.value)


def test_the_shipped_config_is_valid(request, monkeypatch):
    for name in (
        "MAILROUTER_IT_SUPPORT_PASSWORD",
        "MAILROUTER_HR_PASSWORD",
        "MAILROUTER_VAKTMESTER_PASSWORD",
        "MAILROUTER_REPLY_SECRET",
    ):
        monkeypatch.setenv(name, "x" * 32)
    config = load_config(request.config.rootpath / "config.toml")
    assert set(config.mailboxes) == {"it", "hr", "vaktmester"}


ROTATED = """
reply_key_id = "k2"
previous_reply_secrets = [{ id = "k1", env = "TEST_OLD_REPLY_SECRET", until = 2027-01-01 }]
"""


def test_retired_reply_secrets_are_resolved_after_the_current_one(config_file, monkeypatch):
    from datetime import date

    from mailrouter.agents import reply_keys

    config_file.write_text(config_file.read_text().replace("reopen_days = 7", "reopen_days = 7" + ROTATED))
    monkeypatch.setenv("TEST_OLD_REPLY_SECRET", "o" * 32)
    current, old = reply_keys(load_config(config_file))
    assert (current.id, current.until) == ("k2", None)
    assert (old.id, old.secret, old.until) == ("k1", b"o" * 32, date(2027, 1, 1))


def test_a_short_retired_reply_secret_is_refused_naming_its_key(config_file, monkeypatch):
    config_file.write_text(config_file.read_text().replace("reopen_days = 7", "reopen_days = 7" + ROTATED))
    monkeypatch.setenv("TEST_OLD_REPLY_SECRET", "short")
    with pytest.raises(
        ConfigError, match=r"previous_reply_secrets \(reply key k1\): the reply secret is 5 bytes"
    ):
        load_config(config_file)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (
            'reply_key_id = "k1"\nprevious_reply_secrets = [{ id = "k1", env = "X", until = 2027-01-01 }]',
            "must differ",
        ),
        ('reply_key_id = "K-1"', "agents.reply_key_id"),
        ('previous_reply_secrets = [{ id = "k0", until = 2027-01-01 }]', "exactly one of env or file"),
    ],
)
def test_reply_key_settings_are_validated(config_file, extra, message):
    config_file.write_text(config_file.read_text().replace("reopen_days = 7", f"reopen_days = 7\n{extra}"))
    with pytest.raises(ConfigError, match=message):
        load_config(config_file)


def test_a_department_address_too_long_for_signed_reply_addresses_is_refused(config_file):
    long_local = "a-very-long-department-mailbox-name-indeed"
    config_file.write_text(
        config_file.read_text().replace(
            '"it-support@example.test"\ndisplay', f'"{long_local}@example.test"\ndisplay'
        )
    )
    with pytest.raises(ConfigError, match=r"mailboxes\.it\.address: signed reply addresses would need"):
        load_config(config_file)


def test_a_mailbox_starts_now_and_ages_are_read_as_people_write_them(config_file):
    text = config_file.read_text().replace(
        'group = "it-agents"', 'group = "it-agents"\nacknowledge_max_age = "12h"'
    )
    config_file.write_text(text.replace('language = "no"', 'language = "no"\nsince = 2026-11-01'))
    config = load_config(config_file)
    it, hr = config.mailboxes["it"], config.mailboxes["hr"]
    assert (it.start, it.since, it.acknowledge_max_age) == ("now", None, timedelta(hours=12))
    assert (hr.since, hr.acknowledge_max_age) == (date(2026, 11, 1), timedelta(days=3))


def test_paths_take_state_and_credentials_directories_from_the_environment(
    config_file, tmp_path, monkeypatch
):
    """Under systemd the database lives in $STATE_DIRECTORY, secrets in $CREDENTIALS_DIRECTORY."""
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    (credentials / "hr-imap").write_text("from-a-credential\n")
    text = config_file.read_text()
    text = text.replace(f'"{tmp_path / "hr-secret"}"', '"${CREDENTIALS_DIRECTORY}/hr-imap"')
    text = text.replace(f"sqlite:///{tmp_path / 'db.sqlite'}", "sqlite:///${STATE_DIRECTORY}/mailrouter.db")
    config_file.write_text('state_dir = "${STATE_DIRECTORY:-/var/lib/mailrouter}"\n' + text)
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(credentials))
    monkeypatch.setenv("STATE_DIRECTORY", "/srv/state")
    config = load_config(config_file)
    hr = config.secret("imap.hr")
    assert hr is not None and hr.get_secret_value() == "from-a-credential"
    assert config.database_url == "sqlite:////srv/state/mailrouter.db"
    assert str(config.state_dir) == "/srv/state"
    monkeypatch.delenv("STATE_DIRECTORY")
    with pytest.raises(ConfigError, match=r"database_url: environment variable STATE_DIRECTORY is not set"):
        load_config(config_file)


def test_a_state_dir_default_applies_when_the_variable_is_unset(config_file, monkeypatch):
    monkeypatch.delenv("STATE_DIRECTORY", raising=False)
    default = 'state_dir = "${STATE_DIRECTORY:-/var/lib/mailrouter}"\n'
    config_file.write_text(default + config_file.read_text())
    assert str(load_config(config_file).state_dir) == "/var/lib/mailrouter"


def test_every_unreadable_secret_is_named_at_once(config_file, tmp_path, monkeypatch):
    monkeypatch.delenv("TEST_IT_PASSWORD")
    (tmp_path / "hr-secret").unlink()
    with pytest.raises(ConfigError) as raised:
        load_config(config_file)
    lines = str(raised.value).splitlines()
    assert len(lines) == 2
    assert "mailboxes.it.imap: environment variable TEST_IT_PASSWORD is not set" in lines[0]
    assert "mailboxes.hr.imap: cannot read password_file" in lines[1] and "No such file" in lines[1]


def test_an_empty_secret_is_refused(config_file, tmp_path, monkeypatch):
    (tmp_path / "hr-secret").write_text("\n")
    with pytest.raises(ConfigError, match=r"mailboxes\.hr\.imap: password_file .*hr-secret is empty"):
        load_config(config_file)
