"""The daemon's real notification, quoted the way agents' clients quote it, answered to the signed
Reply-To: the customer gets the answer and nothing of the notification's internal block."""

from __future__ import annotations

import html
from email.message import EmailMessage

import pytest

from tests.e2e.conftest import send_mail as send
from tests.messages import new_message_id, plain_text

pytestmark = pytest.mark.e2e


def _plain(message: EmailMessage) -> str:
    return plain_text(message).replace("\r\n", "\n")


def _quoted(text: str) -> str:
    return "\n".join(f"> {line}".rstrip() for line in text.split("\n"))


def test_a_relayed_answer_carries_none_of_the_notifications_internal_block(daemon, customer, mailstack):
    it, agent = daemon.mailboxes["it"], daemon.agents["agent1"]
    daemon.start()
    send(mailstack, f"Kari <{customer.address}>", it.address, "Monitor flickers all day", "It flickers.")
    mailstack.wait_for_messages(agent.address, agent.password, 1)
    send(mailstack, f"Kari <{customer.address}>", it.address, "Printer on floor 3", "It jams.")
    notification = mailstack.wait_for_messages(agent.address, agent.password, 2)[-1]
    first, _ = daemon.cases()
    text = _plain(notification)
    # What must stay inside: the customer's other case, the organisation's count, the command help.
    internal = (
        first.number,
        "Monitor flickers all day",
        "other open case from this organisation",
        "#priority <low|normal|high|urgent>",
        "never from your own address",
        "Customer:",
        "##-",
    )
    assert all(line in text for line in internal), text

    signed = notification["Reply-To"].addresses[0].addr_spec
    subject = f"Re: {notification['Subject']}"
    threading = {"In_Reply_To": notification["Message-ID"], "References": notification["Message-ID"]}
    outlook_de = (
        "Hallo Kari, der Drucker ist repariert.\n\nMit freundlichen Grüßen\nAnna\n\n"
        "-----Ursprüngliche Nachricht-----\n"
        f"Von: IT Support <{signed}>\nGesendet: Dienstag, 24. November 2026 10:00\n"
        f"An: {agent.address}\nBetreff: {notification['Subject']}\n\n{text}"
    )
    gmail_fi = (
        "Hei Kari, tulostin on korjattu.\n\nTerveisin Anna\n\n"
        f"ti 24. marrask. 2026 klo 10.00 IT Support <\n{signed}> kirjoitti:\n\n{_quoted(text)}"
    )
    apple = (
        "Hi Kari, the printer is fixed.\n\nSent from my iPhone\n\n"
        f"> On 24 Nov 2026, at 10:00, IT Support <{signed}> wrote:\n>\n{_quoted(text)}"
    )
    for body in (outlook_de, gmail_fi, apple):
        send(mailstack, agent.address, signed, subject, body, **threading)
    # Outlook often sends HTML alone: the header block in bold, the notification in paragraphs.
    outlook_html = EmailMessage()
    outlook_html["From"], outlook_html["To"], outlook_html["Subject"] = agent.address, signed, subject
    outlook_html["Message-ID"] = new_message_id()
    outlook_html["In-Reply-To"] = outlook_html["References"] = notification["Message-ID"]
    lines = "<br>\n".join(html.escape(line) for line in text.split("\n"))
    outlook_html.set_content(
        '<html><body><div class="WordSection1"><p class="MsoNormal">Hallo Kari, bitte neu starten.</p>'
        '<div style="border:none;border-top:solid #E1E1E1 1.0pt"><p class="MsoNormal">'
        f"<b>Von:</b> IT Support &lt;{signed}&gt;<br><b>Gesendet:</b> Dienstag, 24. November 2026 10:00"
        f"<br><b>An:</b> {agent.address}<br><b>Betreff:</b> {html.escape(str(notification['Subject']))}"
        f'</p></div><p class="MsoNormal">{lines}</p></div></body></html>',
        subtype="html",
    )
    mailstack.send(outlook_html, agent.address, [signed])

    answers = {
        "Outlook (de)": "Hallo Kari, der Drucker ist repariert.\n\nMit freundlichen Grüßen\nAnna",
        "Gmail (fi)": "Hei Kari, tulostin on korjattu.\n\nTerveisin Anna",
        "Apple Mail": "Hi Kari, the printer is fixed.\n\nSent from my iPhone",
        "Outlook HTML (de)": "Hallo Kari, bitte neu starten.",
    }
    received = mailstack.wait_for_messages(customer.address, customer.password, 2 + len(answers), timeout=60)
    relayed = [_plain(m).strip() for m in received if m["Auto-Submitted"] is None]  # not the acks
    assert sorted(relayed) == sorted(answers.values()), relayed
    for body in relayed:
        for line in internal:
            assert line not in body, f"{line!r} reached the customer in:\n{body}"
    daemon.wait_idle()
    assert len(daemon.outbox("agent-reply")) == len(answers)
    assert daemon.stop() == 0
