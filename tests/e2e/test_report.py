"""`mailrouter report` over mail that really went through Postfix and Dovecot: a case answered
and resolved at the first contact and rated 5, and one still waiting."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from tests.e2e.conftest import Account, Daemon, send_mail
from tests.e2e.test_agents import reply_as
from tests.e2e.test_customer_updates import answer_survey
from tests.mailstack import MailStack

pytestmark = pytest.mark.e2e


def test_the_report_counts_what_the_mail_did(installation, mailstack: MailStack, customer: Account) -> None:
    daemon: Daemon = installation(mailbox={"it": {"satisfaction_survey": True}})
    it, agent = daemon.mailboxes["it"], daemon.agents["agent1"]
    daemon.start(wait=True)
    send_mail(mailstack, f"Kari <{customer.address}>", it.address, "The printer", "It jams on every page.")
    [notification] = mailstack.wait_for_messages(agent.address, agent.password, 1)
    reply_as(mailstack, agent, notification, "#resolve\nThe roller is replaced; it prints again.")
    # the acknowledgement, the answer, the resolved mail and the survey
    inbox = mailstack.wait_for_messages(customer.address, customer.password, 4)
    [survey] = [m for m in inbox if m["Message-ID"] == daemon.cases()[0].survey_message_id]
    answer_survey(mailstack, customer, it.address, survey, "5 - quick and kind")
    send_mail(mailstack, f"Kari <{customer.address}>", it.address, "The scanner", "It scans nothing.")
    daemon.wait_until(
        lambda: len(daemon.cases()) == 2 and daemon.cases()[0].satisfaction_score == 5,
        "the rating and case 2",
    )
    today = datetime.now(UTC).date()  # the test's departments keep UTC: a day either side is safe
    done = daemon.cli(
        "report",
        "--from",
        str(today - timedelta(days=1)),
        "--to",
        str(today + timedelta(days=1)),
        "--format",
        "json",
    )
    assert done.returncode == 0, done.stderr
    total = json.loads(done.stdout)["total"]
    answered = daemon.cases()[0]
    assert (total["created"], total["resolved"], total["reopened"], total["backlog"]) == (2, 1, 0, 1)
    assert total["first responses"] == 1 and total["first contact resolutions"] == 1
    assert total["first response calendar median"] == answered.first_response_seconds
    assert total["resolution calendar median"] == answered.resolution_seconds
    assert total["agent replies per case"] == 1.0
    assert (total["surveys sent"], total["satisfaction answers"], total["satisfaction mean"]) == (1, 1, 5.0)
    assert total["satisfaction 5"] == 1 and total["survey response rate"] == 1.0
    assert daemon.stop() == 0
