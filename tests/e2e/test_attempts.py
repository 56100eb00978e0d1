"""A message that took the process down each time is set aside after a restart, not tried again."""

from __future__ import annotations

import pytest

from mailrouter import store
from mailrouter.fetch import MAX_ATTEMPTS
from mailrouter.plan import Origin
from tests.messages import make_mail, new_message_id

pytestmark = pytest.mark.e2e

FAST = {"poll_interval": 0.5, "send_interval": 0.5, "reconnect_initial": 0.2, "reconnect_max": 1}


def test_a_message_earlier_runs_died_on_is_quarantined_without_being_tried(installation, mailstack, customer):
    daemon = installation(daemon=FAST)
    it = daemon.mailboxes["it"]
    raw = make_mail(sender=customer.address, to=it.address, subject="Poison", message_id=new_message_id())
    mailstack.append(it.address, it.password, raw)
    with mailstack.imap(it.address, it.password) as conn:
        conn.select("INBOX")
        uidvalidity = int(conn.response("UIDVALIDITY")[1][0])
    # What MAX_ATTEMPTS runs that each died while processing UID 1 leave in the database.
    assert daemon.cli("migrate").returncode == 0
    engine = daemon.engine()
    with engine.begin() as connection:
        for _ in range(MAX_ATTEMPTS):
            store.count_attempt(connection, Origin("it", uidvalidity, 1))
    engine.dispose()

    daemon.start(wait=True)
    daemon.wait_until(lambda: daemon.events("quarantined"), "the message set aside")
    [event] = daemon.events("quarantined")
    assert event.data["uid"] == 1 and f"began {MAX_ATTEMPTS} times and never finished" in event.data["reason"]
    assert daemon.cases() == []
    daemon.wait_until(
        lambda: len(mailstack.raw_messages(it.address, it.password, "Quarantine")) == 1, "it moved aside"
    )
    mailstack.append(
        it.address, it.password, make_mail(sender=customer.address, to=it.address, subject="Fine")
    )
    daemon.wait_until(lambda: len(daemon.cases()) == 1, "the next mail's case")
    assert daemon.stop() == 0
