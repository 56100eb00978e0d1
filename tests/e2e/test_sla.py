"""SLA targets on the real stack: seconds-long targets, 24/7 business hours, two instances on
PostgreSQL. A case nobody answers is warned of, then escalated to the lead, each exactly once."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.e2e.conftest import Account, Daemon, send_mail
from tests.mailstack import MailStack
from tests.postgres import temporary_database

pytestmark = pytest.mark.e2e

SLA = """
[business_hours.always]
time_zone = "Europe/Oslo"
monday = "00:00-24:00"
tuesday = "00:00-24:00"
wednesday = "00:00-24:00"
thursday = "00:00-24:00"
friday = "00:00-24:00"
saturday = "00:00-24:00"
sunday = "00:00-24:00"

[sla.fast]
first_response = "6s"
resolution = "1h"
warn_at = 0.5
escalate_to = "{lead}"
raise_priority = true
"""


def sla_installation(
    installation: Callable[..., Daemon], url: str, lead: Account, like: Daemon | None = None
) -> Daemon:
    daemon = installation(
        "b" if like else "a",
        url,
        like=like,
        daemon={"schedule_interval": 0.3},
        mailbox={"it": {"sla": "fast", "business_hours": "always"}},
    )
    with daemon.config_path.open("a") as config:
        config.write(SLA.format(lead=lead.address))
    return daemon


def breached(daemon: Daemon, number: str) -> bool:
    return any(c.number == number and c.breached_first_response_at for c in daemon.cases())


def test_an_unanswered_case_is_warned_then_escalated_once_with_two_instances(
    installation, mailstack: MailStack, customer: Account
) -> None:
    lead = Account(*mailstack.new_account("lead"))
    with temporary_database() as url:
        first = sla_installation(installation, url, lead)
        second = sla_installation(installation, url, lead, like=first)
        it, agent = first.mailboxes["it"], first.agents["agent1"]
        try:
            first.start(wait=True)
            second.start(wait=True)
            send_mail(mailstack, f"Kunde <{customer.address}>", it.address, "Screen flickers", "Hello")
            first.wait_until(lambda: len(first.cases()) == 1, "the case", 30)
            [case] = first.cases()
            assert case.sla == "fast" and case.first_response_due is not None
            first.wait_until(lambda: breached(first, case.number), "the breach", 30)
            # A second case breaching later proves both instances' jobs ran many times since the
            # first breach: the first is still warned once and escalated once.
            send_mail(mailstack, f"Kunde <{customer.address}>", it.address, "Printer", "Hi, help")
            first.wait_until(lambda: len(first.cases()) == 2, "the second case", 30)
            later = first.cases()[1].number
            first.wait_until(lambda: breached(first, later), "the second breach", 30)
            first.wait_idle()
            warnings = first.events("sla-warning")
            breaches = first.events("sla-breached")
            assert [e.case_id for e in warnings] == [case.id, first.cases()[1].id]
            assert [e.case_id for e in breaches] == [case.id, first.cases()[1].id]
            assert warnings[0].id is not None and breaches[0].id is not None
            assert warnings[0].id < breaches[0].id
            assert breaches[0].data["target"] == "first-response"
            assert breaches[0].data["overshoot_seconds"] >= 0
            escalations = mailstack.wait_for_messages(lead.address, lead.password, 2)
            assert len(escalations) == 2
            subjects = sorted(m["Subject"] for m in escalations)
            assert subjects[0].startswith(f"[{case.number}] SLA first-response breached by")
            assert first.cases()[0].priority == "high"  # raise_priority
            # The group's agent had the warning (besides the new-case notifications).
            inbox = mailstack.wait_for_messages(agent.address, agent.password, 4)
            warned = [m for m in inbox if "SLA first-response due in" in m["Subject"]]
            assert len(warned) == 2
            assert first.stop() == 0
            assert second.stop() == 0
        finally:
            first.kill()
            second.kill()
