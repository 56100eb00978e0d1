"""Token renewal and the [oauth2] configuration, without a server: the e2e tests prove the wire."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from pydantic import SecretStr

from mailrouter.config import load_config
from mailrouter.errors import ConfigError, TokenRefused
from mailrouter.oauth import Token, TokenSource

BASE = """
[smtp]
host = "127.0.0.1"
[mailboxes.it]
address = "it@example.test"
display_name = "IT"
prefix = "IT"
[mailboxes.it.imap]
host = "127.0.0.1"
user = "it@example.test"
"""


def config(tmp_path: Path, imap: str, extra: str = "") -> Path:
    path = tmp_path / "config.toml"
    path.write_text(BASE + imap + "\n" + extra)
    return path


def test_a_mailbox_on_oauth2_needs_no_password_and_names_its_credential(tmp_path, monkeypatch):
    monkeypatch.setenv("SECRET", "s")
    extra = (
        '[oauth2.m365]\nprovider = "microsoft"\ntenant = "t"\nclient_id = "c"\nclient_secret_env = "SECRET"\n'
    )
    loaded = load_config(config(tmp_path, 'auth = "oauth2"\noauth2 = "m365"', extra))
    assert loaded.mailboxes["it"].imap.oauth2 == "m365"
    assert loaded.secret("oauth2.m365") is not None and loaded.secret("imap.it") is None


@pytest.mark.parametrize(
    ("imap", "extra", "message"),
    [
        (
            'auth = "oauth2"\noauth2 = "nope"',
            "",
            "mailboxes.it.imap.oauth2: 'nope' is not an [oauth2.<name>]",
        ),
        ('auth = "oauth2"', "", "auth = oauth2 needs oauth2 ="),
        (
            'auth = "oauth2"\noauth2 = "m"',
            '[oauth2.m]\nprovider = "microsoft"\nclient_id = "c"\nclient_secret_env = "S"',
            "oauth2.m: Value error, provider 'microsoft' needs tenant",
        ),
        (
            'auth = "oauth2"\noauth2 = "m"',
            '[oauth2.m]\nprovider = "microsoft"\ntenant = "t"\nclient_id = "c"',
            "flow client_credentials needs client_secret_env or client_secret_file",
        ),
        (
            'auth = "oauth2"\noauth2 = "g"',
            '[oauth2.g]\nprovider = "google"',
            "flow service_account needs service_account_file",
        ),
    ],
)
def test_a_missing_or_malformed_oauth2_piece_is_named_by_key(tmp_path, imap, extra, message):
    with pytest.raises(ConfigError, match=None) as error:
        load_config(config(tmp_path, imap, extra), resolve_secrets=False)
    assert message in str(error.value)


class Grant:
    def __init__(self, lifetime: float) -> None:
        self.lifetime, self.calls, self.refuse = lifetime, 0, False

    def fetch(self) -> Token:
        self.calls += 1
        if self.refuse:
            raise TokenRefused("m365", "invalid_grant", "revoked", "sign in again")
        import time

        now = time.time()
        return Token(SecretStr(f"token-{self.calls}"), now, now + self.lifetime)


async def test_one_token_serves_concurrent_callers_until_80_percent_of_its_lifetime():
    grant = Grant(lifetime=3600)
    source = TokenSource("m365", grant, None, None)
    tokens = await asyncio.gather(*(source.token() for _ in range(10)))
    assert {t.get_secret_value() for t in tokens} == {"token-1"} and grant.calls == 1
    short = TokenSource("m365", Grant(lifetime=0.1), None, None)
    await short.token()
    await asyncio.sleep(0.09)
    assert (await short.token()).get_secret_value() == "token-2"


async def test_a_refused_token_is_renewed_once_however_many_mailboxes_saw_it():
    grant = Grant(lifetime=3600)
    source = TokenSource("m365", grant, None, None)
    old = await source.token()
    renewed = await asyncio.gather(*(source.renewed(old) for _ in range(5)))
    assert {t.get_secret_value() for t in renewed} == {"token-2"} and grant.calls == 2


async def test_the_incident_is_reported_once_and_its_end_once():
    seen: list[str] = []

    class Incidents:
        async def refused(self, source: TokenSource, error: TokenRefused) -> None:
            seen.append(f"refused {error.error}")

        async def recovered(self, source: TokenSource) -> None:
            seen.append("recovered")

    grant = Grant(lifetime=0.0)
    source = TokenSource("m365", grant, None, Incidents())
    grant.refuse = True
    for _ in range(3):
        with pytest.raises(TokenRefused):
            await source.token()
    grant.refuse = False
    await source.token()
    await source.token()
    assert seen == ["refused invalid_grant", "recovered"]


def test_a_client_secret_that_runs_out_within_14_days_is_warned_about_by_key(tmp_path):
    from datetime import date

    from mailrouter.oauth import expiry_warnings

    extra = (
        '[oauth2.m365]\nprovider = "microsoft"\ntenant = "t"\nclient_id = "c"\n'
        'client_secret_env = "S"\nsecret_expires = 2027-01-10\n'
    )
    loaded = load_config(config(tmp_path, 'auth = "oauth2"\noauth2 = "m365"', extra), resolve_secrets=False)
    assert expiry_warnings(loaded, date(2026, 12, 1)) == []
    [warning] = expiry_warnings(loaded, date(2026, 12, 30))
    assert str(warning).startswith(
        "oauth2.m365: the client secret (secret_expires) expires on 2027-01-10 (11 days)"
    )


@pytest.mark.parametrize(
    ("imap", "extra", "name", "message"),
    [
        ('password_env = "P"', "", "it", "mailboxes.it.imap: auth is not oauth2"),
        ('password_env = "P"', "", "nope", "no mailbox 'nope' (there are: it, smtp)"),
        (
            'auth = "oauth2"\noauth2 = "m365"',
            '[oauth2.m365]\nprovider = "microsoft"\ntenant = "t"\nclient_id = "c"\nclient_secret_env = "S"',
            "it",
            "oauth2.m365: flow is client_credentials, which needs no sign-in",
        ),
    ],
)
def test_oauth_login_names_the_key_when_a_mailbox_has_no_delegated_credential(
    tmp_path, imap, extra, name, message
):
    from mailrouter.devicelogin import credential_for

    loaded = load_config(config(tmp_path, imap, extra), resolve_secrets=False)
    with pytest.raises(ConfigError) as error:
        credential_for(loaded, name)
    assert message in str(error.value)


def test_oauth_login_signs_in_the_mailbox_user_of_a_delegated_credential(tmp_path):
    from mailrouter.devicelogin import credential_for

    extra = '[oauth2.me]\nprovider = "google"\nflow = "delegated"\nclient_id = "c"'
    loaded = load_config(config(tmp_path, 'auth = "oauth2"\noauth2 = "me"', extra), resolve_secrets=False)
    assert credential_for(loaded, "it") == ("me", "it@example.test")
