"""The daemon's HTTP endpoint on the real stack: /metrics agrees with the database, /readyz names
the mailbox when Dovecot is away and when its worker was killed, and goes green again."""

from __future__ import annotations

import http.client
import json
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from http.cookies import SimpleCookie
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from mailrouter.faultinjection import ENV as FAULTS
from mailrouter.http import DASHBOARD_COOKIE
from mailrouter.vocabulary import OutboxState
from tests.e2e.conftest import Daemon
from tests.e2e.conftest import send_mail as send

pytestmark = pytest.mark.e2e
Readiness = dict[str, Any]  # /readyz's JSON body


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def with_http(daemon: Daemon, **settings: object) -> str:
    """Add an [http] table to the installation's config; returns the base URL."""
    port = free_port()
    lines = [f'listen = "127.0.0.1:{port}"', *(f"{k} = {json.dumps(v)}" for k, v in settings.items())]
    daemon.config_path.write_text(daemon.config_path.read_text() + "\n[http]\n" + "\n".join(lines) + "\n")
    return f"http://127.0.0.1:{port}"


def get(url: str, token: str | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()
    except OSError:
        return 0, b""  # not listening (yet)


def readiness(base: str) -> tuple[int, Readiness]:
    status, body = get(base + "/readyz")
    return status, json.loads(body) if status else {}


def wait_ready(
    daemon: Daemon, base: str, want: Callable[[int, Readiness], bool], what: str, timeout: float = 30
) -> Readiness:
    seen: list[Readiness] = []

    def check() -> bool:
        status, body = readiness(base)
        seen.append(body)
        return want(status, body)

    daemon.wait_until(check, what, timeout)
    return seen[-1]


def metrics(base: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    status, body = get(base + "/metrics")
    assert status == 200
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(body.decode())
        for sample in family.samples
    }


def test_metrics_counters_equal_the_databases_counts_after_a_run(installation, customer, mailstack):
    daemon = installation()
    base = with_http(daemon)
    daemon.start(wait=True)
    sender = f"Kari <{customer.address}>"
    for n in range(3):
        send(mailstack, sender, daemon.mailboxes["it"].address, f"Printer {n}", "It jams.")
    send(mailstack, sender, daemon.mailboxes["hr"].address, "Payslip", "Missing.")
    daemon.wait_until(lambda: len(daemon.cases()) == 4, "four cases")
    daemon.wait_idle()

    cases = daemon.cases()
    sent = [row for row in daemon.outbox() if row.state == OutboxState.SENT]
    found = metrics(base)
    for mailbox in ("it", "hr", "vaktmester"):
        new_cases = found[("mailrouter_messages_total", (("mailbox", mailbox), ("outcome", "new-case")))]
        assert new_cases == sum(1 for case in cases if case.department == mailbox)
        assert found[("mailrouter_mailbox_connected", (("mailbox", mailbox),))] == 1
        latency = found[("mailrouter_intake_latency_seconds_count", (("mailbox", mailbox),))]
        assert latency == new_cases
    assert sum(v for (name, _), v in found.items() if name == "mailrouter_messages_fetched_total") == 4
    assert found[("mailrouter_deliveries_total", (("result", "sent"),))] == len(sent) > 0
    assert found[("mailrouter_outbox_rows", (("state", "queued"),))] == 0
    assert found[("mailrouter_task_restarts_total", (("task", "mailbox-it"),))] == 0
    assert found[("mailrouter_database_up", ())] == 1
    assert get(base + "/healthz")[0] == 200
    assert daemon.stop() == 0


def test_readyz_names_the_mailbox_while_dovecot_is_away_and_recovers(installation, mailstack):
    daemon = installation(daemon={"reconnect_initial": 0.2, "reconnect_max": 1})
    base = with_http(daemon, ready_max_poll_age=2)
    daemon.start(wait=True)
    wait_ready(daemon, base, lambda status, _: status == 200, "/readyz to be green")
    mailstack.stop_imap()
    try:
        body = wait_ready(daemon, base, lambda status, _: status == 503, "/readyz to go red")
        assert any(cause.startswith("mailbox it: no successful poll") for cause in body["causes"])
        assert body["mailboxes"]["it"]["connected"] is False
        assert get(base + "/healthz")[0] == 200  # alive, only not ready
    finally:
        mailstack.start_imap()
    wait_ready(daemon, base, lambda status, _: status == 200, "/readyz to be green again")
    assert daemon.stop() == 0


def test_readyz_is_red_while_a_killed_worker_waits_for_its_restart(installation):
    daemon = installation(daemon={"restart_initial": 3})
    daemon.env[FAULTS] = "fail-task=mailbox-it:1:4"  # killed four seconds in, restarted three later
    base = with_http(daemon)
    daemon.start()
    wait_ready(daemon, base, lambda status, _: status == 200, "/readyz to be green")
    body = wait_ready(daemon, base, lambda status, _: status == 503, "/readyz to go red")
    assert any(cause.startswith("task mailbox-it: restarting") for cause in body["causes"])
    body = wait_ready(daemon, base, lambda status, _: status == 200, "/readyz to be green again")
    assert body["tasks"]["mailbox-it"]["restarts"] == 1
    assert daemon.stop() == 0


def answer(base: str, path: str, cookie: str = "") -> http.client.HTTPResponse:
    """One GET as a browser sends it, redirects not followed."""
    connection = http.client.HTTPConnection(urllib.parse.urlsplit(base).netloc, timeout=10)
    connection.request("GET", path, headers={"Cookie": cookie} if cookie else {})
    response = connection.getresponse()
    response.read()
    connection.close()
    return response


def test_a_browser_logs_in_to_the_dashboard_by_a_link_once_and_a_cookie_keeps_it_to_the_dashboard(
    installation,
):
    daemon = installation()
    daemon.env["E2E_HTTP_TOKEN"] = "s3cret-token"
    base = with_http(daemon, token_env="E2E_HTTP_TOKEN")
    daemon.start(wait=True)
    daemon.wait_until(lambda: get(base + "/healthz")[0] != 0, "the endpoint to listen")
    assert answer(base, "/dashboard/it").status == 401
    assert answer(base, "/dashboard/it?token=wrong").status == 401

    login = answer(base, "/dashboard/it?token=s3cret-token&view=wall")
    assert login.status == 303 and login.getheader("Location") == "/dashboard/it?view=wall"
    cookie = SimpleCookie(login.getheader("Set-Cookie"))[DASHBOARD_COOKIE]
    assert cookie["httponly"] and cookie["samesite"] == "Strict" and cookie["path"] == "/dashboard"
    assert "s3cret-token" not in cookie.value
    remembered = f"{DASHBOARD_COOKIE}={cookie.value}"
    assert answer(base, "/dashboard/it?view=wall", remembered).status == 200
    assert answer(base, "/dashboard/it/volume.png", remembered).status == 200
    assert answer(base, "/dashboard", f"{DASHBOARD_COOKIE}=forged").status == 401
    assert answer(base, "/metrics", remembered).status == 401  # the cookie is the dashboard's only
    assert daemon.stop() == 0


def test_a_configured_token_is_required(installation):
    daemon = installation()
    daemon.env["E2E_HTTP_TOKEN"] = "s3cret-token"
    base = with_http(daemon, token_env="E2E_HTTP_TOKEN")
    daemon.start(wait=True)
    deadline = time.monotonic() + 10
    while get(base + "/healthz")[0] == 0 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert get(base + "/healthz")[0] == 401
    assert get(base + "/metrics", token="wrong")[0] == 401
    assert get(base + "/healthz", token="s3cret-token")[0] == 200
    assert daemon.stop() == 0
