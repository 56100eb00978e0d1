"""`mailrouter check` on [oauth2] credentials: each missing or malformed piece is one line naming
the file and the key, and what to do where that is known."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from mailrouter.cli import main
from mailrouter.oauth import store_refresh_token

IT_PASSWORD = 'password_env = "TEST_IT_PASSWORD"'


def check(
    capsys: pytest.CaptureFixture[str], config_file: Path, credential: str | None = None
) -> tuple[int, list[str]]:
    """`check`; with `credential`, first the it mailbox is put on [oauth2.cred], written so."""
    if credential is not None:
        text = config_file.read_text().replace(IT_PASSWORD, 'auth = "oauth2"\noauth2 = "cred"')
        config_file.write_text(text + "\n[oauth2.cred]\n" + credential)
    code = main(["--config", str(config_file), "check"])
    _, err = capsys.readouterr()
    return code, err.splitlines()


def pem_key() -> bytes:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def pem_certificate(valid_until: date) -> bytes:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mailrouter")])
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(datetime(2020, 1, 1, tzinfo=UTC))
        .not_valid_after(datetime.combine(valid_until, datetime.min.time(), tzinfo=UTC))
        .sign(key, hashes.SHA256())
    )
    return certificate.public_bytes(serialization.Encoding.PEM)


MICROSOFT = 'provider = "microsoft"\ntenant = "contoso"\nclient_id = "c"\n'


@pytest.mark.parametrize(
    ("credential", "problem"),
    [
        (
            'provider = "microsoft"\nclient_id = "c"\nclient_secret_env = "S"',
            "oauth2.cred: Value error, provider 'microsoft' needs tenant",
        ),
        (MICROSOFT, "flow client_credentials needs client_secret_env or client_secret_file"),
        (
            MICROSOFT + 'client_secret_env = "S"\nauthority = "http://login.example"',
            "oauth2.cred.authority: Value error, 'http://login.example' is not an https:// URL",
        ),
        (
            'provider = "generic"\nclient_id = "c"\nclient_secret_env = "S"\n'
            'token_endpoint = "https://idp.example/token"\nscopes = []',
            "oauth2.cred.scopes: Value error, give at least one scope",
        ),
        (
            MICROSOFT + 'client_secret_env = "S"\nsecret_expires = "soon"',
            "oauth2.cred.secret_expires: Input should be a valid date",
        ),
        (
            MICROSOFT + 'client_secret_env = "NOT_SET_ANYWHERE"',
            "oauth2.cred: environment variable NOT_SET_ANYWHERE",
        ),
    ],
)
def test_a_missing_or_malformed_setting_is_named_by_key(
    capsys, config_file, monkeypatch, credential, problem
):
    monkeypatch.setenv("S", "secret")
    code, lines = check(capsys, config_file, credential)
    assert code == 1
    assert any(problem in line and str(config_file) in line for line in lines), lines


def test_certificate_and_key_files_that_are_missing_or_not_pem_are_named_by_key(capsys, config_file):
    folder = config_file.parent
    (folder / "key.pem").write_text("not a key")
    (folder / "ca.pem").write_text("not a certificate either")
    credential = (
        MICROSOFT + 'certificate_file = "missing.pem"\nprivate_key_file = "key.pem"\nca_file = "ca.pem"'
    )
    code, lines = check(capsys, config_file, credential)
    assert code == 1
    where = f"{config_file}: oauth2.cred"
    assert f"error: {where}.ca_file: {folder / 'ca.pem'} is not a PEM certificate" in lines
    assert (
        f"error: {where}.certificate_file: cannot read {folder / 'missing.pem'}: No such file or directory"
        in lines
    )
    assert f"error: {where}.private_key_file is not an unencrypted PEM private key" in lines

    (folder / "missing.pem").write_bytes(pem_certificate(date.today() + timedelta(days=365)))
    (folder / "key.pem").write_bytes(pem_key())
    (folder / "ca.pem").write_bytes(pem_certificate(date.today() + timedelta(days=365)))
    assert check(capsys, config_file)[0] == 0  # the same credential, mended


def test_a_service_account_key_without_a_usable_private_key_is_named_by_key(capsys, config_file):
    account = config_file.parent / "account.json"
    account.write_text(
        json.dumps({"client_email": "sa@p.iam.gserviceaccount.com", "private_key": "-----BEGIN nonsense"})
    )
    code, lines = check(capsys, config_file, 'provider = "google"\nservice_account_file = "account.json"')
    assert code == 1
    assert (
        f"error: {config_file}: oauth2.cred.service_account_file: its private_key is not an unencrypted "
        "PEM private key" in lines
    )

    account.write_text(json.dumps({"client_email": "sa@p.iam.gserviceaccount.com"}))
    code, lines = check(capsys, config_file)
    assert any(
        "oauth2.cred.service_account_file: not a service account key: no private_key" in line
        for line in lines
    )


def test_a_delegated_mailbox_never_signed_in_is_told_to_run_oauth_login(capsys, config_file):
    code, lines = check(capsys, config_file, 'provider = "google"\nflow = "delegated"\nclient_id = "c"')
    token = config_file.parent / "var" / "oauth" / "it.refresh-token"
    assert code == 1
    assert lines == [
        f"error: {config_file}: mailboxes.it.imap: oauth2.cred is delegated and {token} holds no refresh "
        "token: run `mailrouter oauth login it`"
    ]
    store_refresh_token(token, "a-refresh-token")
    assert check(capsys, config_file)[0] == 0


def test_a_secret_that_ran_out_fails_the_check_and_one_about_to_is_a_warning(
    capsys, config_file, monkeypatch
):
    monkeypatch.setenv("S", "secret")
    soon = date.today() + timedelta(days=5)
    code, lines = check(capsys, config_file, MICROSOFT + f'client_secret_env = "S"\nsecret_expires = {soon}')
    assert code == 0
    assert lines == [
        f"warning: {config_file}: oauth2.cred: the client secret (secret_expires) expires on {soon} "
        "(5 days): issue a new one before mail stops flowing"
    ]
    past = date.today() - timedelta(days=1)
    config_file.write_text(config_file.read_text().replace(str(soon), str(past)))
    code = main(["--config", str(config_file), "check"])
    err = capsys.readouterr().err
    assert code == 1 and f"oauth2.cred: the client secret (secret_expires) expired on {past}" in err
