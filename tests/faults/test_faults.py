"""Nothing lost, nothing twice: the real daemon against the real mail stack, while things break."""

from __future__ import annotations

import time
from collections import Counter

import pytest
from sqlalchemy import create_engine, text
from sqlmodel import select

from mailrouter.models import Event
from mailrouter.vocabulary import OutboxState
from tests.faults.conftest import (
    FAST_DAEMON,
    FAST_IMAP,
    FAST_SMTP,
    FLOOD_LIMITS,
    MailStream,
    assert_acknowledged_exactly_once,
    customer_mail,
    preload,
    registered_message_ids,
    restart_imap,
)
from tests.postgres import temporary_database

pytestmark = [pytest.mark.faults, pytest.mark.e2e]

KILLS = 30


def test_kill_9_at_random_moments_loses_and_doubles_nothing(installation, mailstack, customers, rng):
    daemon = installation(
        daemon=FAST_DAEMON,
        limits=FLOOD_LIMITS,
        smtp=FAST_SMTP,
        imap=FAST_IMAP,
    )
    customer = customers[0]
    mailboxes = [daemon.mailboxes["it"], daemon.mailboxes["hr"]]
    with MailStream(mailstack, customer, mailboxes, interval=0.2) as stream:
        for _ in range(KILLS):
            daemon.start()
            # Python needs ~1.5 s to import everything: kill during start-up, registration and sending
            time.sleep(rng.uniform(0.8, 2.2))
            daemon.kill()  # SIGKILL
    sent = set(stream.sent)
    assert len(sent) > 100

    daemon.start(wait=True)
    daemon.wait_until(lambda: registered_message_ids(daemon) >= sent, "every message registered", 90)
    daemon.wait_idle()
    assert registered_message_ids(daemon) == sent
    cases = daemon.cases()
    assert len(cases) == len(sent), "one case per distinct message"
    assert_acknowledged_exactly_once(mailstack, daemon, [customer], interruptions=KILLS)
    assert {o.state for o in daemon.outbox()} == {OutboxState.SENT}
    assert daemon.stop() == 0


def test_relay_outage_then_every_acknowledgement_arrives_once(installation, mailstack, customers):
    daemon = installation(
        daemon=FAST_DAEMON,
        limits=FLOOD_LIMITS,
        smtp=FAST_SMTP,
        imap=FAST_IMAP,
    )
    it = daemon.mailboxes["it"]
    customer = customers[0]
    mailstack.stop_smtp()
    try:
        daemon.start(wait=True)
        preload(mailstack, it, [customer_mail(customer, it, f"Outage {n}")[1] for n in range(20)])
        daemon.wait_until(lambda: len(daemon.cases()) == 20, "20 cases while the relay is down")
        # registration did not wait for the relay; the sender kept retrying with backoff
        daemon.wait_until(lambda: max(o.attempts for o in daemon.outbox()) >= 4, "four failed attempts")
        time.sleep(2)  # a while longer down: the backoff keeps retrying, nothing is given up
        rows = daemon.outbox()
        assert all(o.state == OutboxState.QUEUED for o in rows)
        assert any("Connect" in o.last_error for o in rows)
    finally:
        mailstack.start_smtp()
    daemon.wait_idle()
    assert_acknowledged_exactly_once(mailstack, daemon, [customer])
    assert daemon.stop() == 0
    assert "delivery deferred" in daemon.log()


def test_imap_server_restarts_during_idle_and_during_fetch(installation, mailstack, customers):
    daemon = installation(
        daemon={**FAST_DAEMON, "batch_size": 10},
        limits=FLOOD_LIMITS,
        smtp=FAST_SMTP,
        imap=FAST_IMAP,
    )
    it = daemon.mailboxes["it"]
    customer = customers[0]
    daemon.start(wait=True)
    first = customer_mail(customer, it, "Before the restart")[1]
    mailstack.send(first, customer.address, it.address)
    daemon.wait_until(lambda: len(daemon.cases()) == 1, "the first case")
    time.sleep(0.5)  # in IDLE now

    # during IDLE: the dead connection is noticed at once, not after idle_timeout
    restart_imap(mailstack)
    mailstack.send(customer_mail(customer, it, "After the restart")[1], customer.address, it.address)
    daemon.wait_until(lambda: len(daemon.cases()) == 2, "the worker to recover by itself", 15)

    # during a fetch: 150 messages waiting, Dovecot goes away after the first few batches
    preload(mailstack, it, [customer_mail(customer, it, f"Bulk {n}")[1] for n in range(150)])
    daemon.wait_until(lambda: len(daemon.cases()) >= 12, "fetching under way")
    restart_imap(mailstack)
    daemon.wait_until(lambda: len(daemon.cases()) >= 152, "all 152 cases", 60)
    daemon.wait_idle()
    assert len(daemon.cases()) == 152
    assert_acknowledged_exactly_once(mailstack, daemon, [customer])
    assert daemon.stop() == 0
    log = daemon.log()
    assert "closed the connection during IDLE" in log
    assert log.count("connection problem") >= 2


def test_two_instances_on_postgresql_share_500_messages(installation, mailstack, customers):
    settings = dict(daemon=FAST_DAEMON, smtp=FAST_SMTP, imap=FAST_IMAP, limits=FLOOD_LIMITS)
    with temporary_database() as url:
        first = installation("a", url, **settings)
        second = installation("b", url, like=first, **settings)
        it, hr = first.mailboxes["it"], first.mailboxes["hr"]
        for mailbox, customer in ((it, customers[0]), (hr, customers[1])):
            preload(mailstack, mailbox, [customer_mail(customer, mailbox, f"PG {n}")[1] for n in range(250)])
        try:
            first.start(wait=True)
            second.start(wait=True)
            first.wait_until(lambda: len(first.cases()) >= 100, "both instances under way", 60)
            # one instance dies: the other takes its mailboxes and its claimed outbox rows over
            first.kill()
            second.wait_until(lambda: len(second.cases()) == 500, "500 cases", 120)
            second.wait_idle()
            cases = second.cases()
            assert len({c.number for c in cases}) == 500
            assert_acknowledged_exactly_once(mailstack, second, customers, interruptions=1)
            log = second.log()
            assert log.count("holds the mailbox lock") >= 2, log[-3000:]
            events = Counter(e.kind for e in second._select(select(Event)))
            # every outbox row (500 acknowledgements, 500 notifications to agents) went out once
            assert len(second.outbox("acknowledgement")) == 500
            assert events["mail-sent"] + events["mail-sent-unconfirmed"] == len(second.outbox())
            assert second.stop() == 0
        finally:
            first.kill()
            second.kill()


def test_lost_database_connections_stop_fetching_and_nothing_doubles(installation, mailstack, customers):
    """PostgreSQL drops every connection of ours (a failover, an admin's pg_terminate_backend):
    the workers whose lock connection went stop fetching, an instance takes each mailbox again,
    and every message still gets exactly one case and one acknowledgement."""
    settings = dict(daemon=FAST_DAEMON, smtp=FAST_SMTP, imap=FAST_IMAP, limits=FLOOD_LIMITS)
    with temporary_database() as url:
        first = installation("a", url, **settings)
        second = installation("b", url, like=first, **settings)
        it, hr = first.mailboxes["it"], first.mailboxes["hr"]
        for mailbox, customer in ((it, customers[0]), (hr, customers[1])):
            preload(mailstack, mailbox, [customer_mail(customer, mailbox, f"Drop {n}")[1] for n in range(60)])
        first.start(wait=True)
        second.start(wait=True)
        database = url.rpartition("/")[2]
        admin = create_engine(url.rpartition("/")[0] + "/postgres", isolation_level="AUTOCOMMIT")
        try:
            first.wait_until(lambda: len(first.cases()) >= 10, "registration under way")
            for _ in range(3):
                with admin.connect() as conn:
                    conn.execute(
                        text(
                            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                            "WHERE datname = :db AND pid <> pg_backend_pid()"
                        ),
                        {"db": database},
                    )
                time.sleep(1)
        finally:
            admin.dispose()
        second.wait_until(lambda: len(second.cases()) == 120, "120 cases", 60)
        first.wait_idle()
        assert_acknowledged_exactly_once(mailstack, second, customers, interruptions=3)
        logs = first.log() + second.log()
        assert "stopped fetching" in logs, logs[-3000:]
        assert first.stop() == 0 and second.stop() == 0
