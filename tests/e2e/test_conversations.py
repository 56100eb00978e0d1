"""Conversations as they really run, through the real mail stack: Cc to a second department,
attachments, participants, agents' out-of-office replies and strangers on a guessed tag."""

from __future__ import annotations

from email.message import EmailMessage

import pytest

from tests.e2e.conftest import Account, make_daemon, send_mail
from tests.messages import new_message_id

pytestmark = pytest.mark.e2e


def mail(sender: str, to: str, subject: str, body: str, cc: str = "", **headers: str) -> EmailMessage:
    message = EmailMessage()
    message["From"], message["To"], message["Subject"] = sender, to, subject
    if cc:
        message["Cc"] = cc
    message["Message-ID"] = new_message_id()
    for name, value in headers.items():
        message[name.replace("_", "-")] = value
    message.set_content(body)
    return message


def test_a_conversation_with_cc_to_two_departments_is_acted_on_once_and_keeps_its_attachment(
    daemon, customer, mailstack
):
    it, hr = daemon.mailboxes["it"], daemon.mailboxes["hr"]
    agent1 = daemon.agents["agent1"]
    per = Account(*mailstack.new_account("per"))
    daemon.start()

    first = mail(f"Kari <{customer.address}>", it.address, "Skjermen flimrer", "Den flimrer.", cc=per.address)
    mailstack.send(first, customer.address, [it.address, per.address])
    [notification] = mailstack.wait_for_messages(agent1.address, agent1.password, 1)
    [case] = daemon.cases()

    # The agent answers with a file, and copies HR: HR's mailbox gets the answer too.
    reply_to = notification["Reply-To"].addresses[0].addr_spec
    answer = mail(
        agent1.address,
        reply_to,
        f"Re: {notification['Subject']}",
        "Se veiledningen.",
        cc=hr.address,
        In_Reply_To=notification["Message-ID"],
    )
    answer.add_attachment(b"%PDF-1.4 veiledning", maintype="application", subtype="pdf", filename="råd.pdf")
    mailstack.send(answer, agent1.address, [reply_to, hr.address])

    # The customer replies to all: it-support@ and hr@ both receive it.
    reply = mail(
        f"Kari <{customer.address}>",
        it.address,
        f"Re: [{case.number}] Skjermen flimrer",
        "Takk, det virket.",
        cc=hr.address,
    )
    mailstack.send(reply, customer.address, [it.address, hr.address])

    daemon.wait_until(lambda: len(daemon.events("duplicate-copy")) == 2, "both second copies recorded")
    daemon.wait_idle()
    answers = [
        m for m in mailstack.messages(customer.address, customer.password) if "Se veiledningen" in str(m)
    ]
    assert len(answers) == 1
    [attached] = list(answers[0].iter_attachments())
    assert attached.get_filename() == "råd.pdf" and attached.get_content() == b"%PDF-1.4 veiledning"
    assert any("Se veiledningen" in str(m) for m in mailstack.messages(per.address, per.password))
    customer_messages = [m for m in daemon.incoming(case.id) if m.from_addr == customer.address]
    assert len(customer_messages) == 2  # the first mail and one copy of the reply
    replies_told = [o for o in daemon.outbox("notification") if b"Reply from" in o.data]
    assert len(replies_told) == 1
    assert daemon.cases() == [daemon.cases()[0]] and len(daemon.cases()) == 1


def test_an_agents_out_of_office_and_a_strangers_mail_reach_no_customer(daemon, customer, mailstack):
    it = daemon.mailboxes["it"]
    agent1 = daemon.agents["agent1"]
    stranger = Account(*mailstack.new_account("stranger"))
    daemon.start()
    send_mail(mailstack, f"Kari <{customer.address}>", it.address, "Printeren", "Den skriver ikke ut.")
    [notification] = mailstack.wait_for_messages(agent1.address, agent1.password, 1)
    [case] = daemon.cases()
    mailstack.wait_for_messages(customer.address, customer.password, 1)  # the acknowledgement

    # The agent's out-of-office answers the notification, signed Reply-To and all.
    reply_to = notification["Reply-To"].addresses[0].addr_spec
    send_mail(
        mailstack,
        agent1.address,
        reply_to,
        f"Automatic reply: {notification['Subject']}",
        "I am out of office. Call my private mobile 999 99 999.",
        Auto_Submitted="auto-replied",
        In_Reply_To=notification["Message-ID"],
    )
    # A stranger writes twice on the case's (guessable) tag.
    for n in range(2):
        send_mail(mailstack, stranger.address, it.address, f"Re: [{case.number}] hei", f"Kjøp nå ({n})")

    daemon.wait_until(lambda: len(daemon.events("stranger-on-case")) == 2, "both strangers' mails")
    daemon.wait_until(
        lambda: any("automatic mail from agent" in e.detail for e in daemon.events("not-relayed")),
        "the out-of-office recorded",
    )
    daemon.wait_idle()
    assert len(mailstack.messages(customer.address, customer.password)) == 1  # the acknowledgement only
    [now] = daemon.cases()
    assert now.first_response_at is None and now.status == "new"
    told = [o for o in daemon.outbox("notification") if b"who is not on the case" in o.data]
    assert len(told) == 1 and b"multipart/mixed" not in told[0].data


def test_rotating_senders_at_one_domain_get_no_more_acknowledgements_than_its_budget(mailstack, tmp_path):
    daemon = make_daemon(
        mailstack,
        tmp_path / "mailrouter",
        f"sqlite:///{tmp_path}/mailrouter.db",
        ("it", "hr", "vaktmester"),
        limits={"acknowledgements_per_domain": 2},
    )
    senders = [Account(*account) for account in mailstack.new_accounts(*["rotating"] * 4)]
    daemon.start()
    for n, sender in enumerate(senders):
        send_mail(mailstack, sender.address, daemon.mailboxes["it"].address, f"Billige klokker {n}", "Kjøp!")
    daemon.wait_until(lambda: len(daemon.cases()) == 4, "every message to open its case")
    daemon.wait_idle()
    answered = [s for s in senders if mailstack.messages(s.address, s.password)]
    assert len(answered) == 2
    refused = [e.detail for e in daemon.events("not-acknowledged")]
    assert len(refused) == 2 and all("senders at example.test have had" in r for r in refused)
    daemon.kill()
