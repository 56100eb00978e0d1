"""Agents answer from their ordinary mail clients, through the real mail stack — safely."""

from __future__ import annotations

import pytest

from tests.e2e.conftest import send_mail as send

pytestmark = pytest.mark.e2e


def reply_as(stack, agent, notification, body: str) -> None:
    """What an agent's mail client sends on 'Reply': to the Reply-To, with threading headers."""
    reply_to = notification["Reply-To"].addresses[0].addr_spec
    send(
        stack,
        agent.address,
        reply_to,
        f"Re: {notification['Subject']}",
        body,
        In_Reply_To=notification["Message-ID"],
        References=notification["Message-ID"],
    )


def test_agents_answer_from_their_mail_clients_safely(daemon, customer, mailstack):
    it = daemon.mailboxes["it"]
    agent1, agent2 = daemon.agents["agent1"], daemon.agents["agent2"]
    daemon.start()

    send(
        mailstack,
        f"Kari <{customer.address}>",
        it.address,
        "Skjermen flimrer",
        "Skjermen min flimrer hele tiden.",
    )
    [notification] = mailstack.wait_for_messages(agent1.address, agent1.password, 1)
    [case] = daemon.cases()
    assert str(notification["Subject"]) == f"[{case.number}] New case: Skjermen flimrer"
    assert "Skjermen min flimrer" in notification.get_body(("plain",)).get_content()
    assert notification["Reply-To"].addresses[0].addr_spec.startswith(it.address.split("@")[0] + "+")
    mailstack.wait_for_messages(customer.address, customer.password, 1)  # the acknowledgement

    # 1. agent1 answers: the customer gets it from it-support@, tagged, with no trace of agent1
    reply_as(mailstack, agent1, notification, "Hei Kari, prøv en annen kabel.\n\nOn Tue, IT wrote:\n> quoted")
    answer = mailstack.wait_for_messages(customer.address, customer.password, 2)[-1]
    assert it.address in str(answer["From"])
    assert str(answer["Subject"]) == f"[{case.number}] Re: Skjermen flimrer"
    headers = "\n".join(f"{k}: {v}" for k, v in answer.items())
    assert agent1.address not in headers and "agent1" not in headers
    assert answer.get_body(("plain",)).get_content().strip() == "Hei Kari, prøv en annen kabel."
    daemon.wait_until(lambda: daemon.cases()[0].first_response_at is not None, "the first response time")
    assert daemon.cases()[0].status == "open"

    # 2. a #note reaches no customer
    reply_as(mailstack, agent1, notification, "#note\nKunden har gammel skjerm, bestill ny.")
    daemon.wait_until(lambda: daemon.events("note"), "the note")

    # 3. #assign agent2 notifies agent2
    reply_as(mailstack, agent1, notification, f"#assign {agent2.address}")
    [assigned] = mailstack.wait_for_messages(agent2.address, agent2.password, 1)
    assert f"[{case.number}] Assigned to you by {agent1.address}" in str(assigned["Subject"])

    # 4. a forged agent1 (sent by someone else, no signed address) is neither relayed nor obeyed
    send(mailstack, agent1.address, it.address, f"Re: [{case.number}] Skjermen flimrer", "#close\nLukket!")
    daemon.wait_until(lambda: daemon.events("security-warning"), "the forgery to be flagged")
    assert daemon.cases()[0].status == "open"

    # 5. a tampered signed address is rejected
    signed = notification["Reply-To"].addresses[0].addr_spec
    local, _, domain = signed.partition("@")
    tampered = f"{local[:-2]}{'aa' if not local.endswith('aa') else 'bb'}@{domain}"
    send(mailstack, agent1.address, tampered, "Re: something", "#close")
    daemon.wait_until(
        lambda: any("wrong MAC" in e.detail for e in daemon.events("security-warning")), "rejection"
    )
    assert daemon.cases()[0].status == "open"

    # 6. #close closes, and the customer's later reply reopens
    reply_as(mailstack, agent2, assigned, "#close")
    daemon.wait_until(lambda: daemon.cases()[0].status == "closed", "the case to close")
    send(
        mailstack, customer.address, it.address, f"SV: [{case.number}] Skjermen flimrer", "Den flimrer igjen."
    )
    daemon.wait_until(lambda: daemon.cases()[0].status == "open", "the case to reopen")

    daemon.wait_idle()
    # the customer got: acknowledgement + agent1's one answer. No note, no forgery, no command.
    assert len(mailstack.messages(customer.address, customer.password)) == 2
    assert len(daemon.cases()) == 1
    assert daemon.stop() == 0
