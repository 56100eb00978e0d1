"""The sender against the real relay: recipients it refuses, and the ways production talks to it."""

from __future__ import annotations

import pytest

from mailrouter.vocabulary import OutboxState
from tests.e2e.conftest import send_mail as send
from tests.mailstack import DEFER_DOMAIN

pytestmark = pytest.mark.e2e

GONE = "gone@elsewhere.invalid"  # the relay refuses it at RCPT for good (550)
BUSY = f"busy@{DEFER_DOMAIN}"  # the relay refuses it at RCPT for now (450)


def _with_group(daemon, *extra: str) -> None:
    """The it-agents group gets agent2 and these addresses beside agent1."""
    agent1, agent2 = daemon.agents["agent1"].address, daemon.agents["agent2"].address
    config = daemon.config_path.read_text()
    members = ", ".join(f'"{a}"' for a in (agent1, agent2, *extra))
    daemon.config_path.write_text(config.replace(f'it-agents = ["{agent1}"]', f"it-agents = [{members}]"))


def test_one_refused_agent_does_not_silence_the_group_and_the_case_records_it(
    installation, mailstack, customer
):
    daemon = installation()
    _with_group(daemon, GONE, BUSY)
    agent1, agent2 = daemon.agents["agent1"], daemon.agents["agent2"]

    checked = daemon.cli("check", "--connect")
    assert checked.returncode == 0, checked.stderr
    assert f"warning: the relay refuses agent {GONE}: 550" in checked.stderr
    assert f"warning: the relay refuses agent {BUSY}: 450" in checked.stderr
    assert agent1.address not in checked.stderr

    daemon.start(wait=True)
    send(mailstack, customer.address, daemon.mailboxes["it"].address, "Printer", "It jams.")
    mailstack.wait_for_messages(agent1.address, agent1.password, 1)
    mailstack.wait_for_messages(agent2.address, agent2.password, 1)
    # Each agent's notification is a letter of its own (its reply address is signed for them).
    daemon.wait_until(lambda: daemon.events("delivery-failed"), "the refusal for good on the case")
    [case] = daemon.cases()
    [failed] = daemon.events("delivery-failed")
    assert failed.case_id == case.id and GONE in failed.detail and "550 5.1.1" in failed.detail
    by_recipient = {tuple(o.rcpt_to): o for o in daemon.outbox("notification")}
    assert by_recipient[(GONE,)].state == OutboxState.FAILED
    daemon.wait_until(
        lambda: (
            daemon.outbox("notification")
            and max(o.attempts for o in daemon.outbox("notification") if o.rcpt_to == [BUSY]) >= 2
        ),
        "a retry for the busy one",
    )
    by_recipient = {tuple(o.rcpt_to): o for o in daemon.outbox("notification")}
    assert (
        by_recipient[(BUSY,)].state == OutboxState.QUEUED and "450 4.2.0" in by_recipient[(BUSY,)].last_error
    )
    assert by_recipient[(agent1.address,)].state == by_recipient[(agent2.address,)].state == OutboxState.SENT
    log = daemon.log()
    # The log counts them and names nobody (check --connect names them, at a terminal).
    assert "the relay refuses 2 agent address(es)" in log and GONE not in log and BUSY not in log
    assert daemon.stop() == 0
    assert len(mailstack.messages(agent1.address, agent1.password)) == 1
    assert len(mailstack.messages(agent2.address, agent2.password)) == 1


@pytest.mark.parametrize("security", ["starttls", "tls"])
def test_mail_goes_out_over_tls_with_a_login(installation, mailstack, customer, security):
    """STARTTLS on the submission port (the default), implicit TLS on smtps; both refuse mail
    from anyone who has not logged in, so a delivered acknowledgement proves TLS and AUTH."""
    port = mailstack.submission_port if security == "starttls" else mailstack.smtps_port
    daemon = installation()
    smtp = {
        "security": security,
        "port": port,
        "ca_file": str(mailstack.ca_file),
        "username": daemon.mailboxes["it"].address,
        "password_env": "E2E_IT_PASSWORD",
    }
    daemon = installation(name="tls", smtp=smtp, like=daemon)
    daemon.start(wait=True)
    send(mailstack, customer.address, daemon.mailboxes["it"].address, "VPN", "The VPN drops.")
    [ack] = mailstack.wait_for_messages(customer.address, customer.password, 1)
    assert "VPN" in str(ack["Subject"])
    daemon.wait_idle()
    sent = daemon.events("mail-sent")  # the acknowledgement and the agents' notification
    assert len(sent) == 2 and all("accepted by the relay: 250" in e.detail for e in sent)
    checked = daemon.cli("check", "--connect")
    assert checked.returncode == 0, checked.stderr
    assert daemon.stop() == 0


def test_a_refused_login_keeps_the_mail_queued_instead_of_failing_it(installation, mailstack, customer):
    daemon = installation()
    smtp = {
        "security": "starttls",
        "port": mailstack.submission_port,
        "ca_file": str(mailstack.ca_file),
        "username": daemon.mailboxes["it"].address,
        "password_env": "E2E_WRONG_PASSWORD",
    }
    daemon = installation(name="wrong", smtp=smtp, like=daemon)
    daemon.env["E2E_WRONG_PASSWORD"] = "not-the-password"

    checked = daemon.cli("check", "--connect")
    assert checked.returncode == 1 and "535" in checked.stderr

    daemon.start(wait=True)
    send(mailstack, customer.address, daemon.mailboxes["it"].address, "VPN", "The VPN drops.")
    daemon.wait_until(lambda: any(o.attempts for o in daemon.outbox("acknowledgement")), "a login attempt")
    [row] = daemon.outbox("acknowledgement")
    assert row.state == OutboxState.QUEUED and "535" in row.last_error
    assert daemon.events("delivery-failed") == []
    assert daemon.stop() == 0
