"""The daemon over STARTTLS to IMAP, the loud TLS opt-out, and a relay's permanent refusal."""

from __future__ import annotations

import pytest

from mailrouter.vocabulary import OutboxState
from tests.e2e.conftest import DEPARTMENTS
from tests.messages import make_mail, new_message_id

pytestmark = pytest.mark.e2e


def test_daemon_reads_mail_over_starttls_with_the_stack_ca(installation, mailstack, customer):
    daemon = installation(
        imap={"security": "starttls", "ca_file": str(mailstack.ca_file)},
    )
    it = daemon.mailboxes["it"]
    daemon.start(wait=True)
    mailstack.append(it.address, it.password, make_mail(sender=customer.address, to=it.address))
    mailstack.wait_for_messages(customer.address, customer.password, 1)
    assert len(daemon.cases()) == 1
    assert daemon.stop() == 0
    assert "tls_verify" not in daemon.log()


def test_tls_verify_false_works_and_says_so_loudly(installation, mailstack, customer):
    daemon = installation(
        imap={"security": "tls", "port": mailstack.imaps_port, "tls_verify": False},
    )
    it = daemon.mailboxes["it"]
    daemon.start(wait=True)
    mailstack.append(it.address, it.password, make_mail(sender=customer.address, to=it.address))
    mailstack.wait_for_messages(customer.address, customer.password, 1)
    assert daemon.stop() == 0
    warnings = [line for line in daemon.log().splitlines() if "tls_verify = false" in line]
    assert len(warnings) == len(DEPARTMENTS) and all(" WARNING " in line for line in warnings)


def test_verification_failure_is_logged_and_retried_not_ignored(installation, mailstack):
    daemon = installation(
        daemon={"reconnect_initial": 0.2, "reconnect_max": 0.5},
        imap={"security": "tls", "port": mailstack.imaps_port},  # no ca_file: the system CAs
    )
    daemon.start(wait=True)
    daemon.wait_until(lambda: "CERTIFICATE_VERIFY_FAILED" in daemon.log(), "the verification error")
    assert daemon.stop() == 0
    assert "watching INBOX" not in daemon.log()


def test_permanent_refusal_is_recorded_on_the_case_with_the_relays_answer(installation, mailstack):
    daemon = installation()
    it = daemon.mailboxes["it"]
    daemon.start(wait=True)
    # The stack delivers only to example.test: the acknowledgement to this sender gets a 5xx.
    raw = make_mail(sender="Kari <kari@elsewhere.invalid>", to=it.address, message_id=new_message_id())
    mailstack.append(it.address, it.password, raw)
    daemon.wait_until(
        lambda: [o.state for o in daemon.outbox("acknowledgement")] == [OutboxState.FAILED], "the refusal"
    )
    [row] = daemon.outbox("acknowledgement")
    assert row.last_error.startswith("5") or " 5" in row.last_error
    [case] = daemon.cases()
    [event] = daemon.events("delivery-failed")
    assert event.case_id == case.id and "refused for good" in event.detail
    assert row.last_error in event.detail  # the server's own words
    shown = daemon.cli("show", case.number).stdout
    assert "failed after 1 attempt(s)" in shown and "delivery-failed" in shown
    assert daemon.stop() == 0
