"""The customer hears how it goes, on the real stack: status mails in their language in their
IMAP inbox, the satisfaction survey answered by replying, and pending cases resolved (then
closed) by the scheduler after seconds-long limits."""

from __future__ import annotations

from email.message import EmailMessage

import pytest

from tests.e2e.conftest import Account, Daemon, send_mail
from tests.e2e.test_agents import reply_as
from tests.mailstack import MailStack
from tests.postgres import temporary_database

pytestmark = pytest.mark.e2e

SWEDISH = (
    "Hej! Skrivaren på tredje våningen har slutat fungera helt och hållet. Den visar bara ett "
    "felmeddelande om pappersstopp, fast det inte finns något papper som har fastnat."
)
DANISH = (
    "Hej. Min computer vil ikke starte, og skærmen bliver bare sort. Jeg har prøvet at genstarte "
    "den flere gange. Hvad skal jeg gøre?"
)


def body(message) -> str:
    return " ".join(message.get_body(("plain",)).get_content().split())


def answer_survey(stack: MailStack, customer: Account, to: str, survey: EmailMessage, text: str) -> None:
    """The customer's reply to the survey mail: threaded to it, `text` first."""
    headers = {"In_Reply_To": survey["Message-ID"], "References": survey["Message-ID"]}
    send_mail(stack, f"Kari <{customer.address}>", to, f"Re: {survey['Subject']}", text, **headers)


def inbox_with(stack: MailStack, account: Account, count: int) -> list[EmailMessage]:
    return stack.wait_for_messages(account.address, account.password, count)


def test_pending_then_resolved_mail_and_a_survey_answered_with_4(
    installation, mailstack: MailStack, customer: Account
) -> None:
    daemon: Daemon = installation(mailbox={"it": {"satisfaction_survey": True}})
    it, agent = daemon.mailboxes["it"], daemon.agents["agent1"]
    daemon.start()
    send_mail(mailstack, f"Kari <{customer.address}>", it.address, "Skrivaren", SWEDISH)
    [notification] = inbox_with(mailstack, agent, 1)
    [case] = daemon.cases()
    inbox_with(mailstack, customer, 1)  # the acknowledgement

    reply_as(mailstack, agent, notification, "#pending\nKan du skicka en bild på felmeddelandet?")
    pending = inbox_with(mailstack, customer, 3)[-1]
    assert "väntar på dig" in body(pending)
    assert pending["From"].addresses[0].addr_spec == it.address
    assert str(pending["Subject"]) == f"[{case.number}] Re: Skrivaren"

    reply_as(mailstack, agent, notification, "#resolve")
    resolved, survey = inbox_with(mailstack, customer, 5)[-2:]
    if "Hur nöjd" in body(resolved):
        resolved, survey = survey, resolved
    assert "löst" in body(resolved) and "svarar du bara på det här mejlet" in body(resolved)
    assert "Hur nöjd är du med vår hjälp?" in body(survey) and "från 1 till 5" in body(survey)

    answer_survey(mailstack, customer, it.address, survey, "4")
    daemon.wait_until(lambda: daemon.cases()[0].satisfaction_score == 4, "the score on the case")
    answered = daemon.cases()[0]
    assert answered.status == "resolved" and answered.survey_answered_at is not None
    told = inbox_with(mailstack, agent, 2)[-1]
    assert str(told["Subject"]).startswith(f"[{case.number}] Satisfaction 4/5 from {customer.address}")
    shown = daemon.cli("show", case.number).stdout
    assert "4 of 5, answered" in shown and "satisfaction-answered" in shown
    daemon.wait_idle()
    assert len(mailstack.messages(customer.address, customer.password)) == 5  # nothing more
    assert daemon.stop() == 0


def test_a_pending_case_without_an_answer_is_resolved_then_closed_once_by_two_instances(
    installation, mailstack: MailStack, customer: Account
) -> None:
    settings = {
        "daemon": {"schedule_interval": 0.3},
        "mailbox": {"it": {"auto_resolve_after": "2s", "auto_close_after": "2s"}},
    }
    with temporary_database() as url:
        first: Daemon = installation("a", url, **settings)
        second: Daemon = installation("b", url, like=first, **settings)
        it, agent = first.mailboxes["it"], first.agents["agent1"]
        try:
            first.start(wait=True)
            second.start(wait=True)
            send_mail(mailstack, f"Mette <{customer.address}>", it.address, "Computeren starter ikke", DANISH)
            [notification] = inbox_with(mailstack, agent, 1)
            reply_as(mailstack, agent, notification, "#pending\nKan du sende et billede af skærmen?")
            # acknowledgement, the agent's question, pending, auto-resolved
            messages = inbox_with(mailstack, customer, 4)
            texts = [body(m) for m in messages]
            assert any("venter på dig" in t for t in texts)
            assert "ventet på svar fra dig" in texts[-1] and "markeret sagen som løst" in texts[-1]
            first.wait_until(lambda: first.cases()[0].status == "closed", "the case to close")
            first.wait_idle()
            changes = [e.detail for e in first.events("status-changed")]
            assert [c for c in changes if "pending → resolved" in c] == [
                "mailrouter: pending → resolved (no answer from the customer in 2s)"
            ]
            assert len([c for c in changes if "resolved → closed" in c]) == 1
            assert len(mailstack.messages(customer.address, customer.password)) == 4  # told once
            assert first.stop() == 0
            assert second.stop() == 0
        finally:
            first.kill()
            second.kill()
