from datetime import date, timedelta

import pytest

from mailrouter.config import load_config
from mailrouter.errors import ConfigError


def test_valid_config_resolves_secrets_from_env_and_file(config_file):
    config = load_config(config_file)
    assert config.secret("imap.it").get_secret_value() == "it-password"
    assert config.secret("imap.hr").get_secret_value() == "hr-password"
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
        monkeypatch.setenv(name, "x")
    config = load_config(request.config.rootpath / "config.toml")
    assert set(config.mailboxes) == {"it", "hr", "vaktmester"}


def test_a_mailbox_starts_now_and_ages_are_read_as_people_write_them(config_file):
    text = config_file.read_text().replace(
        'group = "it-agents"', 'group = "it-agents"\nacknowledge_max_age = "12h"'
    )
    config_file.write_text(text.replace('language = "no"', 'language = "no"\nsince = 2026-11-01'))
    config = load_config(config_file)
    it, hr = config.mailboxes["it"], config.mailboxes["hr"]
    assert (it.start, it.since, it.acknowledge_max_age) == ("now", None, timedelta(hours=12))
    assert (hr.since, hr.acknowledge_max_age) == (date(2026, 11, 1), timedelta(days=3))
