"""Untrusted mail through the real mail stack and the real `mailrouter run`: two help desks that
answer each other stop, out-of-office replies and bounces are never answered, a flood is answered
at most N times, and a poison message is quarantined while the mail behind it flows on."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest

from mailrouter.vocabulary import OutboxState
from tests.e2e.conftest import ROOT, Account, Daemon, make_daemon
from tests.e2e.conftest import send_mail as send

pytestmark = pytest.mark.e2e


def no_rules(tmp_path):
    """The shipped rules name all three departments; an installation with one needs none."""
    rules = tmp_path / "rules"
    rules.mkdir(exist_ok=True)
    return rules


def test_two_help_desks_that_acknowledge_each_other_stop_after_one_answer_each(mailstack, tmp_path):
    rules = no_rules(tmp_path)
    a = make_daemon(mailstack, tmp_path / "a", f"sqlite:///{tmp_path}/a.db", ("it",), rules=rules)
    b = make_daemon(mailstack, tmp_path / "b", f"sqlite:///{tmp_path}/b.db", ("hr",), rules=rules)
    a_box, b_box = a.mailboxes["it"], b.mailboxes["hr"]
    try:
        a.start()
        b.start()
        # each department writes to the other, as a customer would
        send(mailstack, f"HR <{b_box.address}>", a_box.address, "Laptop for new hire", "Please order one.")
        send(mailstack, f"IT <{a_box.address}>", b_box.address, "Ferie", "Når er fristen?")
        for desk in (a, b):

            def answered(desk: Daemon = desk) -> bool:
                return len(desk.events("screened")) == 1

            desk.wait_until(answered, "the other desk's answer")
        a.settle()
        b.settle()
        for desk in (a, b):
            assert len(desk.cases()) == 1
            [row] = desk.outbox("acknowledgement")
            assert row.state == OutboxState.SENT
            [screened] = desk.events("screened")
            assert "Auto-Submitted: auto-replied" in screened.detail
        # each mailbox saw exactly two mails: the question and the other desk's acknowledgement
        assert len(mailstack.raw_messages(a_box.address, a_box.password)) == 2
        assert len(mailstack.raw_messages(b_box.address, b_box.password, folder="Processed")) == 2
        assert a.stop() == 0 and b.stop() == 0
    finally:
        a.kill()
        b.kill()


def test_out_of_office_replies_get_no_answer_and_open_no_case(daemon, customer, mailstack):
    it = daemon.mailboxes["it"]
    daemon.start()
    send(mailstack, f"Kari <{customer.address}>", it.address, "Printer jams", "Every page.")
    [ack] = mailstack.wait_for_messages(customer.address, customer.password, 1)
    [case] = daemon.cases()
    # Exchange-style: threaded to the acknowledgement, Auto-Submitted
    send(
        mailstack,
        f"Kari <{customer.address}>",
        it.address,
        f"Automatic reply: {ack['Subject']}",
        "I am out of the office until Monday.",
        In_Reply_To=ack["Message-ID"],
        Auto_Submitted="auto-replied",
    )
    # vacation-style: no threading headers, no tag, only X-Autoreply
    send(mailstack, customer.address, it.address, "Away", "On holiday.", X_Autoreply="yes")
    daemon.wait_until(lambda: len(daemon.events("screened")) == 2, "both auto-replies screened")
    daemon.settle()
    assert [c.number for c in daemon.cases()] == [case.number]
    assert len(daemon.incoming(case.id)) == 2  # the question and the threaded out-of-office
    assert len(mailstack.messages(customer.address, customer.password)) == 1
    assert len(daemon.outbox("acknowledgement")) == 1
    listed = daemon.cli("screened")
    assert listed.returncode == 0 and "Away" in listed.stdout and "x-autoreply" in listed.stdout
    assert daemon.stop() == 0


def test_a_bounced_acknowledgement_is_attached_to_its_case_and_opens_none(daemon, mailstack):
    it = daemon.mailboxes["it"]
    ghost = f"ghost-{time.monotonic_ns()}@example.test"  # no such account: Postfix will bounce
    daemon.start()
    send(mailstack, f"Ghost <{ghost}>", it.address, "Who am I", "Nobody reads this address.")
    daemon.wait_until(
        lambda: [o.state for o in daemon.outbox("acknowledgement")] == [OutboxState.BOUNCED],
        "the real DSN to arrive",
    )
    daemon.settle()
    [case] = daemon.cases()
    [row] = daemon.outbox("acknowledgement")
    assert "5.1.1" in row.last_error
    [event] = daemon.events("bounced")
    assert event.case_id == case.id and ghost in event.detail
    [_question, bounce] = daemon.incoming(case.id)
    assert bounce.author_role == "system" and "mailer-daemon" in bounce.from_addr
    assert "bounced" in daemon.cli("show", case.number).stdout
    assert daemon.stop() == 0


def test_a_flood_from_one_sender_opens_every_case_and_is_answered_at_most_n_times(
    daemon, customer, mailstack
):
    it = daemon.mailboxes["it"]
    daemon.start()
    for n in range(50):
        send(mailstack, customer.address, it.address, f"Flood {n}", "again")
    daemon.wait_until(lambda: len(daemon.cases()) == 50, "50 cases", timeout=40)
    daemon.settle()
    assert len(daemon.outbox("acknowledgement")) == 5  # the default: 5 per sender per hour
    assert len(mailstack.messages(customer.address, customer.password)) == 5
    limited = [e for e in daemon.events("not-acknowledged") if e.data.get("rate_limited")]
    assert len(limited) == 45
    assert daemon.stop() == 0


def test_a_poison_message_is_quarantined_while_the_mail_behind_it_flows(mailstack, tmp_path, customer):
    # A template that greets by first name breaks for senders without a display name: realistic.
    templates = tmp_path / "templates"
    shutil.copytree(ROOT / "templates", templates)
    greeting = "Hi {{ customer.name.split()[0] }}, your case is {{ case.number }}.\n"
    for language in ("en", "sv", "no"):
        (templates / "it" / f"ack.{language}.txt.j2").write_text(greeting)
    (templates / "it" / "ack.en.html.j2").unlink()
    daemon = make_daemon(
        mailstack,
        tmp_path / "d",
        f"sqlite:///{tmp_path}/d.db",
        ("it",),
        templates=templates,
        rules=no_rules(tmp_path),
    )
    it = daemon.mailboxes["it"]
    try:
        daemon.start()
        # Two senders: Postfix may deliver two mails in either order, and a customer already
        # known by name would make the nameless mail harmless.
        kari = Account(*mailstack.new_account("kari"))
        send(mailstack, customer.address, it.address, "No name here", "I have no display name.")
        send(mailstack, f"Kari Nordmann <{kari.address}>", it.address, "Named", "I do.")
        [ack] = mailstack.wait_for_messages(kari.address, kari.password, 1, timeout=30)
        assert "Hi Kari" in ack.get_body(("plain",)).get_content()
        [quarantined] = mailstack.wait_for_messages(it.address, it.password, 1, folder="Quarantine")
        assert quarantined["Subject"] == "No name here"
        [case] = daemon.cases()
        assert case.subject == "Named"
        listed = daemon.cli("quarantine", "list")
        assert listed.returncode == 0 and "TemplateError" in listed.stdout and "no element 0" in listed.stdout

        # the template is fixed; the kept bytes go through the same intake again
        for language in ("en", "sv", "no"):
            (templates / "it" / f"ack.{language}.txt.j2").write_text("Your case is {{ case.number }}.\n")
        retried = daemon.cli("quarantine", "retry", "--all")
        assert retried.returncode == 0, retried.stderr
        assert "new-case" in retried.stdout
        [ack] = mailstack.wait_for_messages(customer.address, customer.password, 1)
        assert sorted(c.subject for c in daemon.cases()) == ["Named", "No name here"]
        assert "Re: No name here" in str(ack["Subject"])
        assert "(nothing in quarantine)" in daemon.cli("quarantine", "list").stdout
        assert daemon.stop() == 0
    finally:
        daemon.kill()


def it_with_size_limit(mailstack, tmp_path, max_message_size: int):
    return make_daemon(
        mailstack,
        tmp_path / "d",
        f"sqlite:///{tmp_path}/d.db",
        ("it",),
        rules=no_rules(tmp_path),
        limits={"max_message_size": max_message_size},
    )


def test_oversized_mail_is_refused_unread_and_moved_aside(mailstack, tmp_path, customer):
    daemon = it_with_size_limit(mailstack, tmp_path, 20000)
    it = daemon.mailboxes["it"]
    try:
        daemon.start()
        send(mailstack, customer.address, it.address, "Huge scan", "x" * 30000)
        send(mailstack, f"Kari <{customer.address}>", it.address, "Small", "fits")
        mailstack.wait_for_messages(customer.address, customer.password, 1)
        [aside] = mailstack.wait_for_messages(it.address, it.password, 1, folder="Quarantine")
        assert aside["Subject"] == "Huge scan"
        [case] = daemon.cases()
        assert case.subject == "Small"
        [refused] = daemon.events("refused")
        assert "max_message_size" in refused.detail and "Subject: Huge scan" in refused.data["headers"]
        listed = daemon.cli("quarantine", "list")
        assert "max_message_size" in listed.stdout and "bytes not kept" in listed.stdout
        assert daemon.stop() == 0
    finally:
        daemon.kill()


def test_mail_over_the_size_limit_is_never_downloaded(mailstack, tmp_path, customer):
    """Only its size and header cross the wire: a 40 MB message leaves the daemon's memory as it was."""
    daemon = it_with_size_limit(mailstack, tmp_path, 1024 * 1024)
    it = daemon.mailboxes["it"]
    try:
        daemon.start()
        send(mailstack, customer.address, it.address, "Before", "small")
        mailstack.wait_for_messages(customer.address, customer.password, 1)
        before = peak_rss_mb(daemon.process.pid)
        scan = "A" * 76 + "\r\n"
        body = scan * (40 * 1024 * 1024 // len(scan))
        huge = (
            f"From: {customer.address}\r\nTo: {it.address}\r\nSubject: Scan of the whole archive\r\n"
            f"Message-ID: <archive@kunde.example>\r\nContent-Type: application/octet-stream\r\n"
            f"Content-Transfer-Encoding: base64\r\n\r\n{body}"
        ).encode()
        mailstack.append(it.address, it.password, huge)
        daemon.wait_until(lambda: daemon.events("refused"), "the refusal", timeout=60)
        [refused] = daemon.events("refused")
        assert f"{len(huge)} bytes" in refused.detail
        assert "Subject: Scan of the whole archive" in refused.data["headers"]
        assert refused.data["size"] == len(huge) and refused.data["raw_sha256"] is None
        [aside] = mailstack.raw_messages(it.address, it.password, folder="Quarantine")
        assert aside == huge  # untouched on the server, for a person to deal with
        assert peak_rss_mb(daemon.process.pid) - before < 20  # reading it would have cost > 80 MB
        assert daemon.stop() == 0
    finally:
        daemon.kill()


def peak_rss_mb(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(status.split("VmHWM:")[1].split()[0]) / 1024


def test_a_forged_authentication_results_below_the_genuine_one_gains_no_agent_powers(
    daemon, customer, mailstack
):
    """Our Postfix adds no Authentication-Results, so the mail carries the border's part itself:
    the genuine result (trusted authserv-id) above the border's Received, the forger's own pass
    below it. Postfix and Dovecot then add their Received headers on top, as real hops do."""
    from tests.messages import make_mail, new_message_id

    path = daemon.config_path
    path.write_text(
        path.read_text().replace("[agents]\n", '[agents]\ntrusted_authserv_ids = ["mx.border.test"]\n')
    )
    it, agent1 = daemon.mailboxes["it"], daemon.agents["agent1"]
    agent_domain = agent1.address.rpartition("@")[2]
    daemon.start()
    send(mailstack, f"Kari <{customer.address}>", it.address, "Skjermen flimrer", "Den flimrer.")
    daemon.wait_until(lambda: daemon.cases(), "the case")
    [case] = daemon.cases()
    border = "Received: from evil.example ([192.0.2.66]) by mx.border.test (Postfix); 1 Dec 2026 10:00 +0000"

    def agent_mail(genuine: str, body: str) -> bytes:
        top = [f"Authentication-Results: mx.border.test; {genuine}", border]
        forged = (
            f"Authentication-Results: mx.border.test; dkim=pass header.d={agent_domain}; "
            f"dmarc=pass header.from={agent_domain}"
        )
        raw = make_mail(
            sender=agent1.address,
            to=it.address,
            subject=f"Re: [{case.number}] Skjermen flimrer",
            body=body,
            message_id=new_message_id(),
            headers={"X-Forged": "below"},
        )
        return "".join(f"{line}\r\n" for line in (*top, forged)).encode() + raw

    mailstack.send(
        agent_mail(f"dkim=fail header.d={agent_domain}", "#close\nForged."), agent1.address, [it.address]
    )
    daemon.wait_until(lambda: daemon.events("security-warning"), "the forged agent flagged")
    assert daemon.cases()[0].status == "new" and daemon.outbox("agent-reply") == []

    # the control: the same mail with a genuine aligned pass on top is the agent's
    mailstack.send(agent_mail(f"dkim=pass header.d={agent_domain}", "#close"), agent1.address, [it.address])
    daemon.wait_until(lambda: daemon.cases()[0].status == "closed", "the genuine agent's #close")
    assert len(daemon.events("security-warning")) == 1
