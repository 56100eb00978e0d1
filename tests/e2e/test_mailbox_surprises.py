"""What people and servers do to mailboxes behind our back: each is said clearly, none doubles."""

from __future__ import annotations

import time

import pytest
from sqlmodel import select

from mailrouter.models import Event
from tests.messages import make_mail, new_message_id

pytestmark = pytest.mark.e2e

FAST = {"poll_interval": 0.5, "send_interval": 0.5, "reconnect_initial": 0.2, "reconnect_max": 1}


def mails(customer, to, subjects):
    return [
        make_mail(sender=customer.address, to=to.address, subject=s, message_id=new_message_id())
        for s in subjects
    ]


def recreate_folder(stack, account, folder: str) -> None:
    """Delete and create the folder again: the server gives it a new UIDVALIDITY."""
    with stack.imap(account.address, account.password) as conn:
        assert conn.delete(f'"{folder}"')[0] == "OK"
        assert conn.create(f'"{folder}"')[0] == "OK"


def test_uidvalidity_change_is_recorded_and_registers_nothing_twice(installation, mailstack, customer):
    daemon = installation(daemon=FAST, mailbox={"it": {"folder": "Cases"}})
    it = daemon.mailboxes["it"]
    first = mails(customer, it, ["One", "Two"])
    for raw in first:
        mailstack.append(it.address, it.password, raw, folder="Cases")
    daemon.start(wait=True)
    daemon.wait_until(lambda: len(daemon.cases()) == 2, "two cases")
    assert daemon.stop() == 0

    # A person rebuilds the folder: the same two messages come back under new UIDs, plus one new.
    recreate_folder(mailstack, it, "Cases")
    for raw in [*first, *mails(customer, it, ["Three"])]:
        mailstack.append(it.address, it.password, raw, folder="Cases")
    daemon.start(wait=True)
    daemon.wait_until(lambda: len(daemon.cases()) == 3, "the new message's case")
    daemon.settle()
    assert sorted(c.subject for c in daemon.cases()) == ["One", "Three", "Two"]
    [event] = daemon._select(select(Event).where(Event.kind == "uidvalidity-changed"))
    assert event.mailbox == "it" and "reading the folder again" in event.detail
    assert daemon.log().count("duplicate") >= 2
    assert len(mailstack.messages(customer.address, customer.password)) == 3
    assert daemon.stop() == 0


def test_missing_folder_is_named_and_the_other_mailboxes_flow_on(installation, mailstack, customer):
    daemon = installation(daemon=FAST, mailbox={"it": {"folder": "Nowhere"}})
    hr = daemon.mailboxes["hr"]
    daemon.start(wait=True)
    for raw in mails(customer, hr, ["Ferie"]):
        mailstack.append(hr.address, hr.password, raw)
    daemon.wait_until(lambda: len(daemon.cases()) == 1, "hr's case")
    daemon.wait_until(lambda: "cannot select folder 'Nowhere'" in daemon.log(), "the missing folder named")
    # once someone creates it, the worker finds it by itself
    it = daemon.mailboxes["it"]
    for raw in mails(customer, it, ["Late"]):
        mailstack.append(it.address, it.password, raw, folder="Nowhere")
    daemon.wait_until(lambda: len(daemon.cases()) == 2, "it's case once the folder exists")
    assert daemon.stop() == 0


def test_idle_is_reissued_and_mail_deleted_by_a_person_does_not_stop_the_mailbox(
    installation, mailstack, customer
):
    daemon = installation(daemon={**FAST, "idle_timeout": 1})
    it = daemon.mailboxes["it"]
    daemon.start(wait=True)
    time.sleep(2.5)  # IDLE has been re-issued (idle_timeout = 1 s) a couple of times by now
    for raw in mails(customer, it, ["A", "B"]):
        mailstack.append(it.address, it.password, raw)
    daemon.wait_until(lambda: len(daemon.cases()) == 2, "two cases")
    # a person deletes everything in the folder; new mail still flows
    with mailstack.imap(it.address, it.password) as conn:
        conn.select("INBOX")
        conn.store("1:*", "+FLAGS", "(\\Deleted)")
        conn.expunge()
    for raw in mails(customer, it, ["C"]):
        mailstack.append(it.address, it.password, raw)
    daemon.wait_until(lambda: len(daemon.cases()) == 3, "the third case")
    assert "connection problem" not in daemon.log()
    assert daemon.stop() == 0
