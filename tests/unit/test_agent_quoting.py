"""Through the real intake: an agent's reply quoting any of our mails relays only the answer,
even under a quote header no table knows (here Polish Outlook's, with no prefix at all), because
every mail we send agents starts with the marker."""

import email
import itertools
from email.policy import default

from sqlmodel import Session, col, select

from mailrouter import quoting
from mailrouter.models import OutboxMessage
from mailrouter.plan import Origin
from tests.messages import make_mail, whole_letter

uid = itertools.count(1)  # shared by every test of the run that delivers through it


def deliver(intake, **mail):
    mail.setdefault("message_id", f"<q{next(uid)}@x.example>")
    return intake.process(make_mail(**mail), Origin("it", 1, next(uid)))


def outbox(intake, kind):
    with Session(intake.engine) as session:
        rows = session.exec(
            select(OutboxMessage).where(OutboxMessage.kind == kind).order_by(col(OutboxMessage.id))
        )
        return [email.message_from_bytes(whole_letter(session, r), policy=default) for r in rows.all()]


def to_agent1(messages):
    """The last of these letters that went to agent1: each agent's carries its own reply address."""
    return [m for m in messages if m["To"] == "agent1@example.test"][-1]


def text(message):
    return message.get_body(("plain",)).get_content().replace("\r\n", "\n")


def polish_outlook_reply(intake, mail, answer):
    block = (
        f"Od: IT Support <{mail['Reply-To'].addresses[0].addr_spec}>\n"
        "Wysłane: wtorek, 24 listopada 2026 10:00\nDo: agent1@example.test\n"
        f"Temat: {mail['Subject']}"
    )
    deliver(
        intake,
        sender="Agent One <agent1@example.test>",
        to=str(mail["Reply-To"]),
        subject=f"Odp: {mail['Subject']}",
        body=f"{answer}\n\n________________________________\n{block}\n\n{text(mail)}",
        headers={"In-Reply-To": mail["Message-ID"]},
    )


def test_a_reply_to_the_notification_relays_only_the_answer(intake):
    deliver(
        intake, sender="Kari <kari@kunde.example>", subject="Skjermen flimrer", message_id="<a@kunde.example>"
    )
    deliver(intake, sender="Kari <kari@kunde.example>", subject="Skrivaren virker ikke")
    notification = to_agent1(outbox(intake, "notification"))
    assert text(notification).startswith(quoting.MARKER) and "Skjermen flimrer" in text(notification)
    polish_outlook_reply(intake, notification, "Dzień dobry Kari, proszę spróbować teraz.")
    [answer] = outbox(intake, "agent-reply")
    assert text(answer).strip() == "Dzień dobry Kari, proszę spróbować teraz."


def test_a_reply_to_a_command_error_relays_only_the_answer(intake):
    deliver(intake, sender="Kari <kari@kunde.example>", subject="Skrivaren virker ikke")
    notification = to_agent1(outbox(intake, "notification"))
    deliver(
        intake,
        sender="Agent One <agent1@example.test>",
        to=str(notification["Reply-To"]),
        subject=f"Re: {notification['Subject']}",
        body="#priority asap\nHi Kari",
        headers={"In-Reply-To": notification["Message-ID"]},
    )
    [error] = outbox(intake, "command-error")
    assert text(error).startswith(quoting.MARKER)
    polish_outlook_reply(intake, error, "Hi Kari, try again now.")
    [answer] = outbox(intake, "agent-reply")
    assert text(answer).strip() == "Hi Kari, try again now."
