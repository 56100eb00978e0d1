"""The core loop through the real mail stack: a customer mails, a case is born and acknowledged,
replies thread back in, and a restart neither loses nor repeats anything."""

from __future__ import annotations

import hashlib
import random
import re
import time
from email.message import EmailMessage
from functools import partial

import pytest
from sqlmodel import Session, select

from mailrouter.db import sqlite_path
from mailrouter.models import Attachment, RawMessage
from mailrouter.parse import SLIM_ABOVE, _read_slim
from mailrouter.vocabulary import OutboxState
from tests.e2e.conftest import Account
from tests.e2e.conftest import send_mail as send
from tests.mailstack import MailStack
from tests.sqlite_file import rows_in_database_file

pytestmark = pytest.mark.e2e


def acknowledgements(stack: MailStack, customer: Account) -> list[EmailMessage]:
    return stack.messages(customer.address, customer.password)


def test_new_mail_becomes_one_case_with_one_acknowledgement(daemon, customer, mailstack):
    it = daemon.mailboxes["it"]
    daemon.start()
    send(mailstack, f"Kari <{customer.address}>", it.address, "Printer broken", "It jams.")

    [ack] = mailstack.wait_for_messages(customer.address, customer.password, 1)
    daemon.settle()
    [case] = daemon.cases()
    assert case.number.startswith("IT-") and case.department == "it" and case.status == "new"
    assert it.address in str(ack["From"]) and "IT Support" in str(ack["From"])
    assert str(ack["Subject"]) == f"[{case.number}] Re: Printer broken"
    assert ack["Auto-Submitted"] == "auto-replied"
    assert case.number in ack.get_body(("plain",)).get_content()
    assert len(acknowledgements(mailstack, customer)) == 1
    [row] = daemon.outbox("acknowledgement")
    assert row.state == OutboxState.SENT and row.message_id == ack["Message-ID"]
    # flag mode: the message stays in INBOX, marked as registered
    assert daemon.stop() == 0


def test_the_daemon_copies_its_write_ahead_log_into_the_database_while_it_runs(daemon, customer, mailstack):
    """Its commits leave checkpoints to a task of its own, which must not leave them undone: a
    case, a few pages, is far below the 1000 pages at which a commit would checkpoint."""
    daemon.start()
    send(mailstack, customer.address, daemon.mailboxes["it"].address, "Printer broken", "It jams.")
    daemon.wait_until(lambda: len(daemon.cases()) == 1, "the case")
    database = sqlite_path(daemon.database_url)
    assert database is not None
    copied = partial(rows_in_database_file, database, "case")
    daemon.wait_until(lambda: copied() == 1, "the case in the database file")
    assert daemon.stop() == 0


def test_replies_join_the_case_by_headers_or_by_tag_and_get_no_new_acknowledgement(
    daemon, customer, mailstack
):
    it = daemon.mailboxes["it"]
    daemon.start()
    first = send(mailstack, f"Kari <{customer.address}>", it.address, "VPN is down", "Cannot connect.")
    [ack] = mailstack.wait_for_messages(customer.address, customer.password, 1)
    [case] = daemon.cases()

    # an ordinary reply: Re:, the tag, In-Reply-To and References
    send(
        mailstack,
        customer.address,
        it.address,
        f"Re: {ack['Subject']}",
        "Still down.",
        In_Reply_To=ack["Message-ID"],
        References=f"{first} {ack['Message-ID']}",
    )
    # the client dropped the tag from the subject but kept In-Reply-To
    send(
        mailstack,
        customer.address,
        it.address,
        "Re: VPN",
        "Any news?",
        In_Reply_To=ack["Message-ID"],
    )
    # only the tag survives, under a Swedish reply prefix: no threading headers at all
    send(mailstack, customer.address, it.address, f"SV: [{case.number}] VPN is down", "Hallå?")

    daemon.wait_until(lambda: len(daemon.incoming(case.id)) == 4, "three replies to join the case")
    daemon.settle()
    assert [c.number for c in daemon.cases()] == [case.number]
    assert len(acknowledgements(mailstack, customer)) == 1
    assert len(daemon.outbox("acknowledgement")) == 1
    assert daemon.stop() == 0


def test_hr_rule_sets_priority_category_and_template(daemon, customer, mailstack):
    hr = daemon.mailboxes["hr"]
    daemon.start()
    send(
        mailstack,
        f"Ola <{customer.address}>",
        hr.address,
        "Spørsmål om lønn",
        "Hei, jeg har ikke fått lønn denne måneden. Kan dere sjekke?",
    )
    [ack] = mailstack.wait_for_messages(customer.address, customer.password, 1)
    [case] = daemon.cases()
    assert case.number.startswith("HR-")
    assert (case.priority, case.category, case.group) == ("high", "payroll", "hr-payroll")
    assert case.tags == ["payroll"]
    body = ack.get_body(("plain",)).get_content()
    assert "Lønnsgruppen i HR" in body  # the rule's Norwegian payroll template, not the default
    assert hr.address in str(ack["From"])
    # hr is configured to move processed mail out of the INBOX
    daemon.wait_until(
        lambda: mailstack.messages(hr.address, hr.password, folder="Processed") != [], "the move"
    )
    assert mailstack.messages(hr.address, hr.password) == []
    assert daemon.stop() == 0


def test_restart_ingests_nothing_twice_and_sends_nothing_twice(daemon, customer, mailstack):
    it, vm = daemon.mailboxes["it"], daemon.mailboxes["vaktmester"]
    daemon.start()
    send(mailstack, customer.address, it.address, "One", "first")
    send(mailstack, customer.address, vm.address, "To", "andre")
    mailstack.wait_for_messages(customer.address, customer.password, 2)
    daemon.wait_idle()
    assert daemon.stop() == 0

    send(mailstack, customer.address, it.address, "Three", "arrived while stopped")
    daemon.start()
    mailstack.wait_for_messages(customer.address, customer.password, 3)
    daemon.settle()
    assert daemon.stop() == 0
    offset = len(daemon.log())
    daemon.start(wait=True)
    # Running again, each mailbox from where it stopped: nothing before that is fetched again.
    for name, account in daemon.mailboxes.items():
        highest = mailstack.highest_uid(account.address, account.password)
        watching = re.compile(rf"mailbox={name} watching INBOX uidvalidity=\d+ from uid=(\d+),")
        daemon.wait_until(lambda w=watching: w.search(daemon.log()[offset:]) is not None, f"{name} watching")
        started_at = watching.search(daemon.log()[offset:])
        assert started_at is not None and started_at.group(1) == str(highest)
    daemon.settle()

    assert sorted(c.subject for c in daemon.cases()) == ["One", "Three", "To"]
    assert len(acknowledgements(mailstack, customer)) == 3
    assert [o.state for o in daemon.outbox("acknowledgement")] == [OutboxState.SENT] * 3
    assert len(daemon.outbox("notification")) == 3
    assert daemon.stop() == 0


def test_nordic_letters_survive_into_the_case_and_the_acknowledgement(daemon, customer, mailstack):
    vm = daemon.mailboxes["vaktmester"]
    subject = "Vannlekkasje i kjelleren – æøå ÆØÅ äö ÄÖ"
    body = "Hei! Det lekker fra røret ved sykkelbodene. Må fikses før helgen. Blåbærsyltetøy på gølvet."
    daemon.start()
    send(mailstack, f"Øystein Ærø <{customer.address}>", vm.address, subject, body)
    [ack] = mailstack.wait_for_messages(customer.address, customer.password, 1)
    [raw] = mailstack.raw_messages(vm.address, vm.password)
    assert b"=?utf-8?" in raw and "æ".encode() not in raw.split(b"\r\n\r\n")[0]  # RFC 2047 on the wire
    [case] = daemon.cases()
    assert case.subject == subject
    assert case.priority == "urgent" and case.category == "water"  # body_regex rule on "lekker"
    assert str(ack["Subject"]) == f"[{case.number}] Re: {subject}"
    text = ack.get_body(("plain",)).get_content()
    assert "Hei Øystein Ærø!" in text and subject in text  # the Norwegian template, names intact
    show = daemon.cli("show", case.number)
    [incoming] = daemon.incoming(case.id)
    assert incoming.text == body and show.returncode == 0
    assert daemon.stop() == 0


def test_without_idle_the_worker_polls_and_still_sees_new_mail(mailstack, customer, tmp_path):
    from tests.e2e.conftest import DEPARTMENTS, make_daemon

    database = f"sqlite:///{tmp_path}/polling.db"
    daemon = make_daemon(
        mailstack, tmp_path / "polling", database, tuple(DEPARTMENTS), daemon={"idle": False}
    )
    try:
        daemon.start()
        daemon.wait_until(lambda: "watching INBOX" in daemon.log(), "the worker to start")
        time.sleep(1.5)  # at least one empty poll first: new mail must be seen by a later poll
        for n in range(3):
            send(mailstack, customer.address, daemon.mailboxes["it"].address, f"Polled {n}", "body")
            time.sleep(0.7)
        mailstack.wait_for_messages(customer.address, customer.password, 3)
        assert sorted(c.subject for c in daemon.cases()) == ["Polled 0", "Polled 1", "Polled 2"]
        assert "polling every 1s" in daemon.log()
        assert daemon.stop() == 0
    finally:
        daemon.kill()


def test_a_big_attachment_is_recorded_as_sent(daemon, customer, mailstack):
    """Mail above parse's SLIM_ABOVE is read with its attachment bodies cut out; the record still
    names, measures and hashes the file as sent, and the raw message is kept whole."""
    scan = random.Random(3).randbytes(SLIM_ABOVE * 3 // 2)
    mail = EmailMessage()
    mail["From"], mail["To"], mail["Subject"] = customer.address, daemon.mailboxes["it"].address, "Skannet"
    mail.set_content("Se vedlagt skann.")
    mail.add_attachment(scan, maintype="application", subtype="pdf", filename="skann.pdf")
    daemon.start()
    mailstack.send(mail, customer.address, [daemon.mailboxes["it"].address])

    mailstack.wait_for_messages(customer.address, customer.password, 1)
    [case] = daemon.cases()
    [message] = daemon.incoming(case.id)
    assert message.text == "Se vedlagt skann."
    engine = daemon.engine()
    try:
        with Session(engine) as session:
            [attachment] = session.exec(select(Attachment).where(Attachment.message_id == message.id)).all()
            raw = session.get(RawMessage, message.raw_sha256)
    finally:
        engine.dispose()
    assert (attachment.filename, attachment.content_type) == ("skann.pdf", "application/pdf")
    assert (attachment.size, attachment.sha256) == (len(scan), hashlib.sha256(scan).hexdigest())
    assert raw is not None and raw.size > SLIM_ABOVE and hashlib.sha256(raw.data).hexdigest() == raw.sha256
    assert _read_slim(raw.data) is not None  # as the stack delivers it, not left to the full reading
