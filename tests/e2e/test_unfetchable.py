"""A message the server will not hand over, and one it loses, stall nothing and are on record."""

from __future__ import annotations

import re

import pytest

from tests.e2e.scripted_imap import Script, ScriptedImap
from tests.messages import make_mail, new_message_id

pytestmark = pytest.mark.e2e

FAST = {"poll_interval": 0.5, "send_interval": 0.5, "reconnect_initial": 0.2, "reconnect_max": 1}


def scripted_it(daemon, port):
    """The it mailbox reads from the scripted server; hr and vaktmester stay on Dovecot."""
    text = daemon.config_path.read_text()
    head, it_imap, tail = re.split(r"(\[mailboxes\.it\.imap\][^\[]*)", text, maxsplit=1)
    daemon.config_path.write_text(head + re.sub(r"port = \d+", f"port = {port}", it_imap) + tail)


def test_a_message_the_server_refuses_is_quarantined_and_the_rest_of_its_batch_flows(installation, customer):
    it_address = "it-scripted@example.test"
    messages = {
        uid: make_mail(
            sender=customer.address, to=it_address, subject=f"Mail {uid}", message_id=new_message_id()
        )
        for uid in (1, 2, 3, 4)
    }
    script = Script(messages, refuse={2}, vanish={4})
    with ScriptedImap(script) as server:
        daemon = installation(daemon=FAST)
        scripted_it(daemon, server.port)
        daemon.start(wait=True)
        daemon.wait_until(lambda: daemon.events("quarantined"), "the refused message quarantined", 30)
        daemon.wait_until(lambda: len(daemon.cases()) == 2, "cases for the two good messages")
        assert sorted(c.subject for c in daemon.cases()) == ["Mail 1", "Mail 3"]
        [quarantined] = daemon.events("quarantined")
        assert quarantined.data["uid"] == 2 and "refused to fetch UID 2" in quarantined.data["reason"]
        [vanished] = daemon.events("message-vanished")
        assert vanished.mailbox == "it" and vanished.data["uid"] == 4
        assert any(c.startswith("UID FETCH 2 ") for c in script.commands)  # asked for on its own
        assert "SEARCH UID 4" in " ".join(script.commands)  # checked with the server
        assert daemon.stop() == 0


def test_batches_are_cut_by_bytes_and_a_message_of_unknown_size_is_fetched_alone(installation, customer):
    messages = {
        uid: make_mail(
            sender=customer.address, to="it@example.test", subject=f"Mail {uid}", message_id=new_message_id()
        )
        for uid in (1, 2, 3, 4, 5)
    }
    two = len(messages[1]) + len(messages[2])
    script = Script(messages, unsized={4})
    with ScriptedImap(script) as server:
        daemon = installation(daemon={**FAST, "batch_bytes": two})
        scripted_it(daemon, server.port)
        daemon.start(wait=True)
        daemon.wait_until(lambda: len(daemon.cases()) == 5, "all five cases")
        bodies = [
            c.split(" ")[2] for c in script.commands if c.startswith("UID FETCH") and "BODY.PEEK[]" in c
        ]
        assert bodies == ["1,2", "3", "4", "5"]  # two fit the budget; 4 has no size: alone
        assert daemon.stop() == 0
