"""Personal data through the real mail stack: sensitive cases keep their mail out of agents'
mailboxes; retention, access export and erasure (issue 19)."""

from __future__ import annotations

from email.message import EmailMessage

import pytest

from tests.e2e.test_agents import reply_as

pytestmark = pytest.mark.e2e

EXCERPT_LIMIT = 120  # [privacy] excerpt_chars, the default
SICK_NOTE = (
    "Hei, jeg er syk og blir borte resten av uka etter legens råd; jeg sender egenmeldingen og "
    "ringer lederen min i morgen. Diagnosen er lungebetennelse og legen heter dr. Berg på Aker."
)


def sick_leave_mail(sender: str, to: str) -> EmailMessage:
    mail = EmailMessage()
    mail["From"], mail["To"], mail["Subject"] = f"Ingrid Hansen <{sender}>", to, "Sykemelding Ingrid Hansen"
    mail.set_content(SICK_NOTE)
    mail.add_attachment(
        b"%PDF-1.4 sykemelding", maintype="application", subtype="pdf", filename="sykemelding.pdf"
    )
    return mail


def test_a_sick_leave_notification_holds_the_excerpt_only_and_show_sends_the_rest_to_one_agent(
    daemon, customer, mailstack
):
    agent1 = daemon.agents["agent1"]
    config = daemon.config_path.read_text()
    daemon.config_path.write_text(config.replace('hr-payroll = ["', f'hr-payroll = ["{agent1.address}", "'))
    daemon.start()
    mailstack.send(
        sick_leave_mail(customer.address, daemon.mailboxes["hr"].address),
        customer.address,
        [daemon.mailboxes["hr"].address],
    )

    [notification] = mailstack.wait_for_messages(agent1.address, agent1.password, 1)
    [case] = daemon.cases()
    assert case.sensitive and case.category == "absence"
    assert str(notification["Subject"]) == f"[{case.number}] New case: (sensitive) absence"
    assert not notification.is_multipart() and list(notification.iter_attachments()) == []
    text = notification.get_content()
    assert case.number in text and "absence" in text
    assert SICK_NOTE[:80] in text
    for beyond in (
        "lungebetennelse",
        "dr. Berg",
        "Aker",
        "Ingrid",
        customer.address,
        "sykemelding.pdf",
        "PDF-1.4",
    ):
        assert beyond not in text, beyond

    reply_as(mailstack, agent1, notification, "#show")
    [_, shown] = mailstack.wait_for_messages(agent1.address, agent1.password, 2)
    assert SICK_NOTE in shown.get_content() and "sykemelding.pdf" in shown.get_content()
    assert str(shown["To"]) == agent1.address
    agent2 = daemon.agents["agent2"]
    daemon.wait_idle()
    assert all(
        "lungebetennelse" not in m.get_content() for m in mailstack.messages(agent2.address, agent2.password)
    )
    assert daemon.stop() == 0
