"""A scheduled report on the real stack: a slot seconds ahead, two instances on PostgreSQL, and a
lead's IMAP inbox. The report arrives once, with its four charts inline and the CSV attached;
after the slot an instance restarted finds it taken and sends nothing more; the lead's reply to
it is kept on record and opens no case."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest

from tests.e2e.conftest import Account, Daemon, send_mail
from tests.mailstack import MailStack
from tests.messages import plain_text
from tests.postgres import temporary_database

pytestmark = pytest.mark.e2e

REPORT = """
[[reports]]
name = "e2e"
schedule = "daily {slot:%H:%M:%S}"
time_zone = "UTC"
recipients = ["{lead}"]
departments = ["it"]
period = "today"
language = "sv"
"""


def reporting_installation(
    installation: Callable[..., Daemon], url: str, report: str, like: Daemon | None = None
) -> Daemon:
    daemon = installation("b" if like else "a", url, like=like)
    with daemon.config_path.open("a") as config:
        config.write(report)
    return daemon


def said(daemon: Daemon, slot: datetime, *lines: str, after: int = 0) -> bool:
    """The daemon's log, since offset `after`, tells how this instance found the report's slot."""
    text = daemon.log()[after:]
    return any(f"report e2e slot {slot:%Y-%m-%d %H:%M:%S} UTC: {line}" in text for line in lines)


TOOK, LOST = ("queued",), ("another instance queued it", "queued already by")


def test_the_scheduled_report_reaches_the_lead_once_with_two_instances_and_a_restart(
    installation, mailstack: MailStack, customer: Account
) -> None:
    lead = Account(*mailstack.new_account("lead"))
    slot = (datetime.now(UTC) + timedelta(seconds=45)).replace(microsecond=0)
    report = REPORT.format(slot=slot, lead=lead.address)
    with temporary_database() as url:
        first = reporting_installation(installation, url, report)
        second = reporting_installation(installation, url, report, like=first)
        it = first.mailboxes["it"]
        try:
            first.start(wait=True)
            second.start(wait=True)
            send_mail(
                mailstack, f"Kari <{customer.address}>", it.address, "Skrivaren", "Hej, den skriver inte."
            )
            first.wait_until(lambda: len(first.cases()) == 1, "the case", 30)
            assert datetime.now(UTC) < slot, "the slot passed before the case was in: allow more time"
            # Each instance says how it found the slot: one took it, the other found it taken.
            for daemon in (first, second):

                def found(d: Daemon = daemon) -> bool:
                    return said(d, slot, *TOOK, *LOST)

                daemon.wait_until(found, "the slot", 60)
            took = [d for d in (first, second) if said(d, slot, "queued") and not said(d, slot, *LOST)]
            assert len(took) == 1
            first.wait_idle()
            [mail] = mailstack.wait_for_messages(lead.address, lead.password, 1, timeout=30)

            # Restarted after the slot (the other way round from 06:59): the start finds it taken.
            offset = len(first.log())
            assert first.stop() == 0
            first.start(wait=True)
            first.wait_until(lambda: said(first, slot, "queued already by", after=offset), "the restart", 60)
            first.wait_idle()
            [event] = first.events("report-queued")
            assert event.data["slot"] == slot.isoformat() and event.data["report"] == "e2e"
            assert len(mailstack.messages(lead.address, lead.password)) == 1

            # The lead answers the report from their mail client: kept and on record, no case,
            # no acknowledgement (it would be queued with the event, in the same transaction).
            send_mail(
                mailstack,
                f"Lea <{lead.address}>",
                it.address,
                f"Re: {mail['Subject']}",
                "Varför växer kön? Vi tar det på måndag.",
                In_Reply_To=mail["Message-ID"],
                References=mail["Message-ID"],
            )
            first.wait_until(lambda: bool(first.events("report-replied")), "the reply on record", 30)
            [replied] = first.events("report-replied")
            assert replied.data["message_id_header"] == mail["Message-ID"]
            assert len(first.cases()) == 1  # the customer's
            assert [o for o in first.outbox() if lead.address in o.rcpt_to and o.kind != "report"] == []
            first.wait_idle()
            assert len(mailstack.messages(lead.address, lead.password)) == 1
            assert first.stop() == 0
            assert second.stop() == 0
        finally:
            first.kill()
            second.kill()

    assert str(mail["Subject"]).startswith("Rapport från servicedesken: IT Support")
    assert mail["From"].addresses[0].addr_spec == it.address
    images = [p for p in mail.walk() if p.get_content_type() == "image/png"]
    assert len(images) == 4 and all(p.get_content()[:4] == b"\x89PNG" for p in images)
    html_part = mail.get_body(("html",))
    assert html_part is not None
    html = html_part.get_content()
    assert all(f"cid:{p['Content-ID'].strip('<>')}" in html for p in images)
    [csv] = [p for p in mail.iter_attachments() if p.get_content_type() == "text/csv"]
    assert csv.get_filename() == f"e2e-{slot:%Y-%m-%d}.csv"
    content = csv.get_content()
    assert "IT Support" in (content if isinstance(content, str) else content.decode("utf-8-sig"))
    text = plain_text(mail)
    assert "Nya ärenden:" in text
