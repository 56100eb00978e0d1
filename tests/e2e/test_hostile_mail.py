"""Mail built to be slow, through the real mail stack and the real `mailrouter run`: a mailbox
with a pathological HTML mail, a huge References list and a ReDoS-bait subject in the same batch
as a customer's mail answers the customer, and registers the rest read whole and routed. How long
the customer waits beside such mail, bench/hostile.py measures."""

from __future__ import annotations

import pytest

from mailrouter.plan import OutcomeKind
from mailrouter.vocabulary import EventKind
from tests.e2e.conftest import Account, make_daemon
from tests.messages import make_mail

pytestmark = pytest.mark.e2e

# Rules are the administrator's; a careless one must not freeze the intake on a hostile subject.
REDOS_RULE = """
[[rule]]
name = "one-word-per-space"
when.subject_regex = '^(\\w+\\s?)*$'
then.tags = ["words"]
"""


def html_only(sender: str, to: str, markup: str, message_id: str) -> bytes:
    return (
        f"From: {sender}\r\nTo: {to}\r\nSubject: Nyhetsbrev\r\nMessage-ID: {message_id}\r\n"
        "MIME-Version: 1.0\r\nContent-Type: text/html; charset=utf-8\r\n\r\n"
    ).encode() + markup.encode()


def test_hostile_mail_in_the_same_batch_is_registered_whole_and_the_customer_answered(
    mailstack, tmp_path, customer
):
    """The customer's mail is the batch's last, so its answer comes only once the hostile mail is
    through: a backtracking rule would take a day on the bait's subject and html.parser a quarter
    of an hour on the HTML, against the minute waited here. A parse past its time limit would have
    been read degraded: none is."""
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "10-redos.toml").write_text(REDOS_RULE)
    daemon = make_daemon(mailstack, tmp_path / "d", f"sqlite:///{tmp_path}/d.db", ("it",), rules=rules)
    it = daemon.mailboxes["it"]
    hostile = Account(*mailstack.new_account("hostile"))
    # 300 KB of tags that never close: html.parser took about a quarter of an hour on it.
    pathological = html_only(hostile.address, it.address, "<a " * 100_000, "<html@hostile.example>")
    references = " ".join(f"<ref{n}@hostile.example>" for n in range(20_000))
    huge_references = make_mail(
        sender=hostile.address,
        to=it.address,
        message_id="<refs@hostile.example>",
        headers={"References": references},
    )
    redos_bait = make_mail(
        sender=hostile.address, to=it.address, subject="a" * 40 + "!", message_id="<bait@hostile.example>"
    )
    normal = make_mail(
        sender=f"Kari <{customer.address}>",
        to=it.address,
        subject="Skjermen er svart",
        message_id="<kari@kunde.example>",
    )
    for raw in (pathological, huge_references, redos_bait, normal):  # one batch, the customer last
        mailstack.append(it.address, it.password, raw)
    try:
        daemon.start(wait=True)
        [ack] = mailstack.wait_for_messages(customer.address, customer.password, 1, timeout=60)
        assert "Skjermen er svart" in str(ack["Subject"])

        def settled():
            return len(daemon.cases()) + len(daemon.events(OutcomeKind.REFUSED.value)) == 4

        daemon.wait_until(settled, "every message registered or set aside", 60)
        tags = {case.subject: case.tags for case in daemon.cases()}
        assert sorted(tags) == sorted(
            ["Nyhetsbrev", "Printer on floor 3 is broken", "a" * 40 + "!", "Skjermen er svart"]
        )
        assert "words" not in tags["a" * 40 + "!"] and "words" in tags["Skjermen er svart"]  # the rule ran
        assert daemon.events(EventKind.PARSED_DEGRADED.value) == []
        assert daemon.stop() == 0
    finally:
        daemon.kill()
