"""A mailbox with history: the first start and a new UIDVALIDITY turn none of it into cases."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import pytest

from tests.messages import make_mail, new_message_id

pytestmark = pytest.mark.e2e

FAST = {"poll_interval": 0.5, "send_interval": 0.5, "reconnect_initial": 0.2, "reconnect_max": 1}


def mail(customer, to, subject):
    return make_mail(sender=customer.address, to=to.address, subject=subject, message_id=new_message_id())


def test_first_start_leaves_the_history_alone_and_registers_what_arrives_after(
    installation, mailstack, customer
):
    daemon = installation(daemon=FAST, mailbox={"it": {"start": "now"}})
    it = daemon.mailboxes["it"]
    for subject in ("Old one", "Old two", "Old three"):
        mailstack.append(it.address, it.password, mail(customer, it, subject))
    daemon.start(wait=True)
    daemon.wait_until(lambda: daemon.events("mailbox-first-start"), "the first start recorded")
    [started] = [e for e in daemon.events("mailbox-first-start") if e.mailbox == "it"]
    assert "3 messages already there left untouched" in started.detail
    assert started.data["untouched"] == 3

    mailstack.append(it.address, it.password, mail(customer, it, "Printer on fire"))
    daemon.wait_until(lambda: len(daemon.cases()) == 1, "the new mail's case")
    daemon.wait_idle()
    assert [c.subject for c in daemon.cases()] == ["Printer on fire"]
    assert len(daemon.outbox("acknowledgement")) == 1
    with mailstack.imap(it.address, it.password) as conn:
        conn.select("INBOX")
        typ, data = conn.search(None, "UNSEEN")
        assert typ == "OK" and len(data[0].split()) == 3  # the history: not even read
    assert daemon.stop() == 0


def test_since_registers_from_that_day_and_answers_only_recent_mail(installation, mailstack, customer):
    now = datetime.now(UTC)
    since = (now - timedelta(days=30)).date()
    daemon = installation(
        daemon=FAST, mailbox={"it": {"start": None, "since": since.isoformat(), "acknowledge_max_age": "3d"}}
    )
    it = daemon.mailboxes["it"]
    for subject, arrived in (
        ("Before the migration", now - timedelta(days=60)),
        ("Two weeks old", now - timedelta(days=14)),
        ("Today", now - timedelta(minutes=5)),
    ):
        mailstack.append(it.address, it.password, mail(customer, it, subject), arrived=arrived)
    daemon.start(wait=True)
    daemon.wait_until(lambda: len(daemon.cases()) == 2, "the two cases since the day")
    daemon.wait_idle()
    cases = {c.subject: c for c in daemon.cases()}
    assert sorted(cases) == ["Today", "Two weeks old"]
    [ack] = daemon.outbox("acknowledgement")
    assert ack.case_id == cases["Today"].id
    [skipped] = [e for e in daemon.events("not-acknowledged") if e.case_id == cases["Two weeks old"].id]
    assert "acknowledge_max_age" in skipped.detail
    [started] = [e for e in daemon.events("mailbox-first-start") if e.mailbox == "it"]
    assert "1 older left untouched" in started.detail
    assert daemon.stop() == 0


def test_after_a_uidvalidity_change_our_marked_mail_is_skipped(installation, mailstack, customer):
    daemon = installation(daemon=FAST, mailbox={"it": {"folder": "Cases"}})
    it = daemon.mailboxes["it"]
    first = [mail(customer, it, s) for s in ("One", "Two")]
    for raw in first:
        mailstack.append(it.address, it.password, raw, folder="Cases")
    daemon.start(wait=True)
    daemon.wait_until(lambda: len(daemon.cases()) == 2, "two cases")
    assert daemon.stop() == 0

    # The folder is rebuilt from a copy that kept our flags; one more mail comes in meanwhile.
    with mailstack.imap(it.address, it.password) as conn:
        assert conn.delete('"Cases"')[0] == "OK"
        assert conn.create('"Cases"')[0] == "OK"
    for raw in first:
        mailstack.append(it.address, it.password, raw, folder="Cases", flags="(\\Seen $Registered)")
    mailstack.append(it.address, it.password, mail(customer, it, "Three"), folder="Cases")
    daemon.start(wait=True)
    daemon.wait_until(lambda: len(daemon.cases()) == 3, "the new message's case")
    daemon.wait_idle()
    [changed] = daemon.events("uidvalidity-changed")
    assert "2 of its 3 messages carry $Registered" in changed.detail
    assert changed.data["skipped_marked"] == 2
    assert not re.search(r"uid=\d+ duplicate", daemon.log())  # the marked two were never fetched
    assert daemon.stop() == 0
