"""OAuth2 on the real stack, nothing mocked on the wire: Dovecot checks every bearer token with the
tests' authorization server (tests/tokenserver.py), mailrouter gets its tokens there through MSAL,
and the tokens live three seconds."""

from __future__ import annotations

import json
import re
import ssl
import stat
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from mailrouter.vocabulary import EventKind, OutboxKind, OutboxState
from tests.e2e.conftest import Account, Daemon
from tests.e2e.conftest import send_mail as send
from tests.e2e.test_http import Readiness, readiness, wait_ready, with_http
from tests.mailstack import MailStack
from tests.tokenserver import TokenServer, running

pytestmark = pytest.mark.e2e

CLIENT, SECRET = "mailrouter-app", "app-secret-for-tests"


@pytest.fixture
def token_server(mailstack: MailStack) -> Iterator[TokenServer]:
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(mailstack.ca_file, mailstack.dir / "tls" / "key.pem")
    with running(TokenServer(lifetime=3), mailstack.oauth_port, tls) as server:
        yield server


def on_oauth2(daemon: Daemon, server: TokenServer, mailboxes: tuple[str, ...], ops: str) -> None:
    """The named mailboxes log in with app-only tokens of one Microsoft credential; alerts to ops."""
    text = daemon.config_path.read_text()
    for name in mailboxes:
        text = text.replace(
            f'password_env = "E2E_{name.upper()}_PASSWORD"', 'auth = "oauth2"\noauth2 = "m365"'
        )
    text += f"""
[oauth2.m365]
provider = "microsoft"
tenant = "contoso"
client_id = "{CLIENT}"
client_secret_env = "E2E_OAUTH_SECRET"
authority = "{server.base_url}"
ca_file = "{daemon.stack.ca_file}"

[alerts]
to = ["{ops}"]
"""
    daemon.config_path.write_text(text)
    daemon.env["E2E_OAUTH_SECRET"] = SECRET
    server.add_client(CLIENT, SECRET, {daemon.mailboxes[n].address for n in mailboxes})


def failed_logins(stack: MailStack, daemon: Daemon) -> list[str]:
    """Dovecot's lines of a refused login by one of the daemon's mailboxes (the passdb names the
    user before the failure, imap-login after it)."""
    log = (stack.dir / "log" / "dovecot.log").read_text(errors="replace").splitlines()
    failure = re.compile("oauth2 failed|auth failed|Password mismatch")
    addresses = {m.address for m in daemon.mailboxes.values()}
    return [line for line in log if failure.search(line) and any(a in line for a in addresses)]


def case_for(daemon: Daemon, subject: str) -> bool:
    return any(subject in c.subject for c in daemon.cases())


def test_mail_flows_on_three_second_tokens_renewed_ahead_and_shared_by_two_mailboxes(
    installation, mailstack, token_server, customer: Account
):
    daemon = installation(daemon={"reconnect_max": 2})
    ops = mailstack.new_account("ops")
    on_oauth2(daemon, token_server, ("it", "hr"), ops[0])
    daemon.start(wait=True)
    for round_ in range(3):
        for name in ("it", "hr"):
            send(mailstack, customer.address, daemon.mailboxes[name].address, f"{name} round {round_}", "hi")
        for name in ("it", "hr"):
            daemon.wait_until(lambda n=name, r=round_: case_for(daemon, f"{n} round {r}"), f"{name} case")
        issued = token_server.issued[CLIENT]
        daemon.wait_until(lambda i=issued: token_server.issued[CLIENT] > i, "the token to be renewed", 10)
    # One token for both mailboxes: renewed about every 2.4 s (80 % of 3 s), not per mailbox.
    assert token_server.issued[CLIENT] <= 3 + 2 * len(daemon.cases())
    assert token_server.introspected["inactive"] == 0
    assert failed_logins(mailstack, daemon) == []
    assert daemon.outbox(OutboxKind.ALERT) == []


def test_a_revoked_client_turns_its_mailboxes_red_with_one_alert_and_green_again_without_restart(
    installation, mailstack, token_server, customer: Account
):
    daemon = installation(daemon={"reconnect_max": 2})
    ops_address, ops_password = mailstack.new_account("ops")
    on_oauth2(daemon, token_server, ("it", "hr"), ops_address)
    base = with_http(daemon, ready_max_poll_age=30)
    daemon.start(wait=True)
    wait_ready(daemon, base, lambda status, _: status == 200, "/readyz to be green")

    token_server.disable(CLIENT)

    def both_red(status: int, body: Readiness) -> bool:
        causes = " ".join(body.get("causes", []))
        return (
            status == 503 and "mailbox it: cannot log in" in causes and "mailbox hr: cannot log in" in causes
        )

    # Within one token lifetime (3 s): each worker renews when its token is due, and is refused.
    body = wait_ready(daemon, base, both_red, "/readyz to go red for it and hr", timeout=6)
    causes = " ".join(body["causes"])
    assert "Application is disabled" in causes and "re-enable it" in causes
    assert "vaktmester" not in causes
    alert = mailstack.wait_for_messages(ops_address, ops_password, 1)[0]
    assert "m365" in alert["Subject"] and "it, hr" in alert["Subject"]
    assert "unauthorized_client" in alert.get_content()
    refused = daemon.events(EventKind.TOKEN_REFUSED)
    assert {e.mailbox for e in refused} == {"it", "hr"}
    assert "Application is disabled" in refused[0].detail

    # The password mailbox flows on while the others retry (and are refused again, unmailed).
    send(mailstack, customer.address, daemon.mailboxes["vaktmester"].address, "still here", "hi")
    daemon.wait_until(lambda: case_for(daemon, "still here"), "the vaktmester case")
    refusals = token_server.refused[CLIENT]
    daemon.wait_until(lambda: token_server.refused[CLIENT] > refusals + 1, "retries to be refused")
    assert len(daemon.outbox(OutboxKind.ALERT)) == 1

    token_server.enable(CLIENT)
    wait_ready(daemon, base, lambda status, _: status == 200, "/readyz to be green again", timeout=15)
    send(mailstack, customer.address, daemon.mailboxes["it"].address, "back again", "hi")
    daemon.wait_until(lambda: case_for(daemon, "back again"), "the it case after recovery")
    assert {e.mailbox for e in daemon.events(EventKind.TOKEN_RECOVERED)} == {"it", "hr"}
    assert len(daemon.outbox(OutboxKind.ALERT)) == 1
    assert readiness(base)[0] == 200


RELAY_CLIENT, RELAY_SECRET = "mailrouter-relay", "relay-secret-for-tests"


def relay_on_oauth2(installation: Callable[..., Daemon], mailstack: MailStack, server: TokenServer) -> Daemon:
    """Mailboxes on passwords; the relay (submission: STARTTLS, AUTH through Dovecot, which asks
    the token server) logs in as the it mailbox with app-only tokens of a credential of its own."""
    first = installation()
    smtp = {
        "security": "starttls",
        "port": mailstack.submission_port,
        "ca_file": str(mailstack.ca_file),
        "username": first.mailboxes["it"].address,
        "auth": "oauth2",
        "oauth2": "relay",
    }
    daemon = installation(name="relay", smtp=smtp, like=first)
    daemon.config_path.write_text(
        daemon.config_path.read_text()
        + f"""
[oauth2.relay]
provider = "microsoft"
tenant = "contoso"
client_id = "{RELAY_CLIENT}"
client_secret_env = "E2E_RELAY_SECRET"
authority = "{server.base_url}"
ca_file = "{mailstack.ca_file}"
"""
    )
    daemon.env["E2E_RELAY_SECRET"] = RELAY_SECRET
    server.add_client(RELAY_CLIENT, RELAY_SECRET, {first.mailboxes["it"].address})
    return daemon


def restart_relay(mailstack: MailStack) -> None:
    """Postfix restarts, as a relay does: the sender's next letter opens a session and logs in anew."""
    mailstack.stop_smtp()
    mailstack.start_smtp()


def test_acknowledgements_go_out_through_the_relay_on_three_second_tokens_renewed_for_each_new_login(
    installation, mailstack, token_server, customer: Account
):
    daemon = relay_on_oauth2(installation, mailstack, token_server)
    daemon.start(wait=True)
    for round_ in range(3):
        if round_:
            expires = token_server.expires[RELAY_CLIENT]

            def ran_out(expires: float = expires) -> bool:
                return time.time() > expires

            daemon.wait_until(ran_out, "the relay's token to run out", 10)
            restart_relay(mailstack)
        issued = token_server.issued[RELAY_CLIENT]
        send(mailstack, customer.address, daemon.mailboxes["it"].address, f"printer {round_}", "hi")
        acks = mailstack.wait_for_messages(customer.address, customer.password, round_ + 1)
        assert f"printer {round_}" in str(acks[-1]["Subject"])
        if round_:  # the session after the restart could not log in with the expired token
            assert token_server.issued[RELAY_CLIENT] > issued
    daemon.wait_idle()
    assert {o.state for o in daemon.outbox()} == {OutboxState.SENT}
    assert token_server.introspected["inactive"] == 0
    assert failed_logins(mailstack, daemon) == []
    assert "refused the token" not in daemon.log()
    assert daemon.stop() == 0


def test_a_token_the_relay_refuses_before_its_expiry_is_renewed_once_and_the_letter_goes_out(
    installation, mailstack, token_server, customer: Account
):
    token_server.lifetime = 300  # never due during the test: only the refusal renews it
    daemon = relay_on_oauth2(installation, mailstack, token_server)
    daemon.start(wait=True)
    send(mailstack, customer.address, daemon.mailboxes["it"].address, "before", "hi")
    mailstack.wait_for_messages(customer.address, customer.password, 1)
    issued = token_server.issued[RELAY_CLIENT]

    token_server.revoke_tokens(RELAY_CLIENT)
    restart_relay(mailstack)
    send(mailstack, customer.address, daemon.mailboxes["it"].address, "after", "hi")
    acks = mailstack.wait_for_messages(customer.address, customer.password, 2)
    assert "after" in str(acks[-1]["Subject"])
    assert token_server.issued[RELAY_CLIENT] == issued + 1
    assert daemon.log().count("the relay refused the token of relay") == 1
    # one refused login (Dovecot tries the password passdb after the oauth2 one, and logs both)
    assert len([line for line in failed_logins(mailstack, daemon) if "oauth2 failed" in line]) == 1
    daemon.wait_idle()
    assert {o.state for o in daemon.outbox()} == {OutboxState.SENT}
    assert daemon.events(EventKind.TOKEN_REFUSED) == []
    assert daemon.stop() == 0


PUBLIC_CLIENT = "mailrouter-signin"  # a public client: the device-code sign-in has no secret


def on_delegated(daemon: Daemon, server: TokenServer, provider: str) -> None:
    """The it mailbox logs in with a delegated credential (a refresh token got by signing in)."""
    text = daemon.config_path.read_text().replace(
        'password_env = "E2E_IT_PASSWORD"', 'auth = "oauth2"\noauth2 = "signin"'
    )
    if provider == "microsoft":
        endpoints = f'tenant = "contoso"\nauthority = "{server.base_url}"'
    else:
        base = f"{server.base_url}/generic/oauth2/v2.0"
        endpoints = (
            f'token_endpoint = "{base}/token"\ndevice_authorization_endpoint = "{base}/devicecode"\n'
            'scopes = ["mail.read", "mail.send"]'
        )
    daemon.config_path.write_text(
        text
        + f"""
[oauth2.signin]
provider = "{provider}"
flow = "delegated"
client_id = "{PUBLIC_CLIENT}"
ca_file = "{daemon.stack.ca_file}"
{endpoints}
"""
    )
    server.add_client(PUBLIC_CLIENT, "", set())


def sign_in_in_the_browser(url: str, code: str, user: str, stack: MailStack) -> str:
    form = urllib.parse.urlencode({"user_code": code, "user": user}).encode()
    context = ssl.create_default_context(cafile=str(stack.ca_file))
    with urllib.request.urlopen(url, form, timeout=10, context=context) as answer:
        page: str = answer.read().decode()
        return page


@pytest.mark.parametrize("provider", ["microsoft", "generic"])
def test_oauth_login_by_device_code_keeps_a_0600_refresh_token_that_logs_the_mailbox_in(
    installation, mailstack, token_server, customer: Account, provider
):
    """microsoft: MSAL's device flow; generic: authlib's client. The person approves the code
    over HTTP as in a browser, while `mailrouter oauth login it` polls."""
    daemon = installation()
    on_delegated(daemon, token_server, provider)
    it = daemon.mailboxes["it"].address
    command = [
        sys.executable,
        "-m",
        "mailrouter",
        "--config",
        str(daemon.config_path),
        "oauth",
        "login",
        "it",
    ]
    process = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=daemon.env,
        cwd=daemon.directory,
    )
    try:
        assert process.stdout is not None
        prompt = process.stdout.readline()
        found = re.search(r"To sign in (\S+) for mailrouter, open (\S+) and enter the code (\S+) ", prompt)
        assert found is not None and found[1] == it, prompt
        assert "signed in as" in sign_in_in_the_browser(found[2], found[3], it, mailstack)
        rest = process.stdout.read()
        assert process.wait(timeout=30) == 0, prompt + rest
    finally:
        process.kill()
    path = daemon.directory / "var" / "oauth" / "it.refresh-token"
    assert f"signed in: the refresh token is in {path} (mode 0600)" in rest
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    refresh_token = json.loads(path.read_text())["refresh_token"]
    assert refresh_token not in prompt + rest

    daemon.start(wait=True)
    send(mailstack, customer.address, it, "signed in", "hi")
    daemon.wait_until(lambda: case_for(daemon, "signed in"), "the it case")
    assert token_server.issued[PUBLIC_CLIENT] >= 2  # the sign-in's token, then the daemon's renewal
    assert failed_logins(mailstack, daemon) == []
    assert daemon.stop() == 0
    assert refresh_token not in daemon.log()
    database = Path(daemon.database_url.removeprefix("sqlite:///"))
    assert all(
        refresh_token.encode() not in f.read_bytes() for f in database.parent.glob(database.name + "*")
    )


SERVICE_ACCOUNT = "mailrouter@helpdesk-project.iam.gserviceaccount.com"


def on_service_account(
    daemon: Daemon, server: TokenServer, mailboxes: tuple[str, ...], delegated: tuple[str, ...]
) -> None:
    """The mailboxes log in through Google's domain-wide delegation: a service account's key
    (the JSON file Google hands out) signs an assertion for each mailbox user; the delegation
    covers the users of `delegated`."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    account = {
        "type": "service_account",
        "client_email": SERVICE_ACCOUNT,
        "private_key_id": "k1",
        "private_key": private.decode(),
        "token_uri": f"{server.base_url}/google/oauth2/v2.0/token",
    }
    key_file = daemon.directory / "service-account.json"
    key_file.write_text(json.dumps(account))
    key_file.chmod(0o600)
    text = daemon.config_path.read_text()
    for name in mailboxes:
        text = text.replace(
            f'password_env = "E2E_{name.upper()}_PASSWORD"', 'auth = "oauth2"\noauth2 = "gws"'
        )
    daemon.config_path.write_text(
        text
        + f"""
[oauth2.gws]
provider = "google"
service_account_file = "{key_file}"
ca_file = "{daemon.stack.ca_file}"
"""
    )
    users = {daemon.mailboxes[n].address for n in delegated}
    server.add_client(SERVICE_ACCOUNT, "", users, public_key=public.decode())


def test_a_google_service_account_signs_an_assertion_for_each_mailbox_user_and_they_log_in(
    installation, mailstack, token_server, customer: Account
):
    """it and hr are covered by the domain-wide delegation, vaktmester is not: Google's
    unauthorized_client, said by key with what to do in the Admin console."""
    daemon = installation()
    on_service_account(daemon, token_server, ("it", "hr", "vaktmester"), delegated=("it", "hr"))
    daemon.start(wait=True)
    for name in ("it", "hr"):
        send(mailstack, customer.address, daemon.mailboxes[name].address, f"{name} via google", "hi")
    for name in ("it", "hr"):
        daemon.wait_until(lambda n=name: case_for(daemon, f"{n} via google"), f"the {name} case")
    # One token per user (each assertion names its own sub), renewed every 2.4 s.
    assert token_server.issued[SERVICE_ACCOUNT] >= 2
    daemon.wait_until(lambda: daemon.events(EventKind.TOKEN_REFUSED), "vaktmester's refusal")
    [refused] = daemon.events(EventKind.TOKEN_REFUSED)
    assert refused.mailbox == "vaktmester"  # its own token: the others are not stopped
    assert "unauthorized_client" in refused.detail and "Domain-wide delegation" in refused.detail
    assert failed_logins(mailstack, daemon) == []
    assert daemon.stop() == 0
