"""Untrusted mail through the real Intake and SQLite: bounces, auto-replies, floods, oversized and
poison messages, header injection. No IMAP, no SMTP: the e2e tests prove the same on the wire."""

import email
from datetime import timedelta
from email.policy import default

import pytest
from sqlalchemy import insert
from sqlmodel import Session, col, select

from mailrouter import store
from mailrouter.cli import main
from mailrouter.config import load_config
from mailrouter.daemon import load
from mailrouter.db import open_database
from mailrouter.errors import ReviewError
from mailrouter.intake import Intake
from mailrouter.models import OUTBOX, Case, Event, Message, OutboxMessage, RawMessage, utcnow
from mailrouter.plan import Origin, OutcomeKind
from mailrouter.review import retry, screened, set_aside
from mailrouter.store import SqlFacts
from mailrouter.vocabulary import OutboxKind, OutboxState
from tests.messages import make_dsn, make_mail, plain_text


def make_intake(config_file, extra: str = "") -> Intake:
    if extra:
        config_file.write_text(config_file.read_text() + extra)
    loaded = load(load_config(config_file))
    return Intake(loaded.config, loaded.rules, loaded.templates, open_database(loaded.config), loaded.agents)


@pytest.fixture
def intake(config_file):
    return make_intake(config_file)


def rows(intake, model, *where):
    with Session(intake.engine) as session:
        return session.exec(select(model).where(*where)).all()


def acknowledgements(intake):
    return rows(intake, OutboxMessage, OutboxMessage.kind == "acknowledgement")


def events(intake, kind):
    return rows(intake, Event, Event.kind == kind)


def acknowledged(intake, uid=1):
    intake.process(make_mail(message_id=f"<c{uid}@kunde.example>"), Origin("it", 1, uid))
    return acknowledgements(intake)[-1]


@pytest.mark.parametrize("headers_only", [False, True])
def test_bounce_of_our_acknowledgement_marks_it_and_opens_nothing(intake, headers_only):
    ack = sent(intake, acknowledged(intake))
    outcome = intake.process(make_dsn(ack.data, headers_only=headers_only), Origin("it", 1, 2))
    assert outcome.kind == OutcomeKind.BOUNCED and outcome.case_number == "IT-1001"
    [case] = rows(intake, Case)
    [row] = acknowledgements(intake)
    assert row.state == OutboxState.BOUNCED and "5.1.1" in row.last_error
    [bounce] = rows(intake, Message, Message.uid == 2)
    assert bounce.case_id == case.id and bounce.author_role == "system"
    [event] = events(intake, "bounced")
    assert event.case_id == case.id and "5.1.1" in event.detail


def sent(intake, row):
    with Session(intake.engine) as session:
        row.state = OutboxState.SENT
        session.add(row)
        session.commit()
        session.refresh(row)
    return row


def test_a_forged_bounce_cannot_cancel_mail(intake):
    """Mail merely From mailer-daemon@, naming our letter, is no delivery status notification."""
    ack = acknowledged(intake)
    forged = make_mail(
        sender="MAILER-DAEMON <mailer-daemon@elsewhere.example>",
        subject="Undelivered Mail Returned to Sender",
        body=f"Status: 5.1.1\nMessage-ID: {ack.message_id}\n",
        message_id="<forged-bounce@elsewhere.example>",
    )
    assert intake.process(forged, Origin("it", 1, 2)).kind == OutcomeKind.SCREENED
    [row] = acknowledgements(intake)
    assert row.state == OutboxState.QUEUED and events(intake, "bounced") == []


def test_a_real_bounce_of_a_letter_not_yet_sent_changes_nothing(intake):
    ack = acknowledged(intake)
    intake.process(make_dsn(ack.data), Origin("it", 1, 2))
    [row] = acknowledgements(intake)
    assert row.state == OutboxState.QUEUED


def test_bounce_of_mail_we_never_sent_is_screened(intake):
    outcome = intake.process(make_dsn(make_mail(message_id="<stranger@x>")), Origin("it", 1, 1))
    assert outcome.kind == OutcomeKind.SCREENED
    assert rows(intake, Case) == [] and acknowledgements(intake) == []
    [item] = screened(intake.engine)
    assert item.verdict == "bounce" and "MAILER-DAEMON" in item.reason.upper()


def test_out_of_office_to_an_acknowledgement_joins_the_case_unanswered(intake):
    ack = acknowledged(intake)
    ooo = make_mail(
        subject="Out of Office: [IT-1001] Re: Printer on floor 3 is broken",
        message_id="<ooo@kunde.example>",
        body="I am away until Monday.",
        headers={"In-Reply-To": ack.message_id, "Auto-Submitted": "auto-replied"},
    )
    outcome = intake.process(ooo, Origin("it", 1, 2))
    assert outcome.kind == OutcomeKind.FOLLOW_UP and outcome.case_number == "IT-1001"
    assert len(rows(intake, Case)) == 1 and len(acknowledgements(intake)) == 1
    [event] = events(intake, "screened")
    assert "never reopens" in event.detail and event.data["verdict"] == "auto-reply"


def test_flood_from_one_sender_opens_every_case_but_answers_at_most_the_limit(config_file):
    intake = make_intake(config_file, "\n[limits]\nacknowledgements_per_sender = 3\n")
    for uid in range(1, 11):
        intake.process(make_mail(message_id=f"<f{uid}@kunde.example>"), Origin("it", 1, uid))
    assert len(rows(intake, Case)) == 10
    assert len(acknowledgements(intake)) == 3
    limited = [e for e in events(intake, "not-acknowledged") if e.data.get("rate_limited")]
    assert len(limited) == 7
    expected = "rate limit: kari@kunde.example has had the most acknowledgements allowed (3)"
    assert limited[0].detail.startswith(expected)
    # another sender is not affected
    other = make_mail(sender="Ola <ola@kunde.example>", message_id="<o@kunde.example>")
    intake.process(other, Origin("it", 1, 11))
    assert len(acknowledgements(intake)) == 4
    # the check counts no further than the limit, however many the sender has had
    with Session(intake.engine) as session:
        facts, kari = SqlFacts(session), "kari@kunde.example"
        since = utcnow() - timedelta(hours=1)
        assert facts.acknowledgements_to(kari, since, at_most=2) == 2
        assert facts.acknowledgements_to(kari, since, at_most=100) == 3
        assert facts.acknowledgements_to(kari, utcnow() + timedelta(seconds=1), at_most=100) == 0


def test_the_limit_looks_only_at_the_senders_recent_cases(intake):
    """A frequent sender's history (years of cases) must not be read for each new case of theirs."""
    statement = store._ACKNOWLEDGEMENTS_SINCE.statement.compile(dialect=intake.engine.dialect)
    assert statement.positiontup is not None  # SQLite's parameters are positional
    unbound = (None,) * len(statement.positiontup)  # the plan does not depend on the values
    with intake.engine.connect() as connection:
        plan = connection.exec_driver_sql(f"EXPLAIN QUERY PLAN {statement}", unbound).all()
    details = " | ".join(row[-1] for row in plan)
    assert "INDEX ix_case_customer_id_created_at (customer_id=? AND created_at>?)" in details, details


def test_default_limit_is_five_an_hour(intake):
    limits = intake.config.limits
    assert (limits.acknowledgements_per_sender, limits.acknowledgement_window) == (5, 3600)


def test_oversized_mail_is_refused_unread_with_headers_and_size_recorded(config_file):
    intake = make_intake(config_file, "\n[limits]\nmax_message_size = 2000\n")
    raw = make_mail(subject="Huge", body="x" * 5000)
    outcome = intake.process(raw, Origin("it", 1, 4))
    assert outcome.kind == OutcomeKind.REFUSED and "max_message_size" in outcome.summary
    assert rows(intake, Case) == [] and rows(intake, RawMessage) == []
    [event] = events(intake, "refused")
    assert event.data["size"] == len(raw) and "Subject: Huge" in event.data["headers"]
    [entry] = set_aside(intake.engine)
    assert not entry.raw_kept
    with pytest.raises(ReviewError, match="not kept"):
        retry(intake, entry.event_id)


def test_header_injection_from_incoming_mail_never_reaches_outgoing_mail(intake):
    raw = (
        b"From: =?utf-8?q?Kari=0D=0ABcc:_victim@evil.example?= <kari@kunde.example>\r\n"
        b"To: it-support@example.test\r\nMessage-ID: <inj@kunde.example>\r\n"
        b"Subject: =?utf-8?q?Printer=0D=0ABcc:_victim@evil.example=0D=0A=0D=0Abody?=\r\n\r\nhello\r\n"
    )
    intake.process(raw, Origin("it", 1, 1))
    for row in rows(intake, OutboxMessage):  # the notification to agents carries the subject too
        head = row.data.split(b"\r\n\r\n", 1)[0]
        assert not any(line.lower().startswith(b"bcc") for line in head.split(b"\r\n"))
    [ack] = acknowledgements(intake)
    sent = email.message_from_bytes(ack.data, policy=default)
    assert sent["Bcc"] is None and ack.rcpt_to == ["kari@kunde.example"]
    assert sent["Subject"] == "[IT-1001] Re: Printer Bcc: victim@evil.example body"
    head = ack.data.split(b"\r\n\r\n", 1)[0]
    assert not any(line.lower().startswith(b"bcc") for line in head.split(b"\r\n"))


def test_poison_message_is_quarantined_and_retried_after_the_fix(intake, monkeypatch):
    raw = make_mail(message_id="<poison@kunde.example>")
    intake.quarantine(raw, Origin("it", 3, 9), RuntimeError("template exploded"))
    [entry] = set_aside(intake.engine)
    assert entry.kind == "quarantined" and "template exploded" in entry.reason and entry.raw_kept

    def broken(*args, **kwargs):
        raise RuntimeError("still broken")

    monkeypatch.setattr("mailrouter.notices.compose", broken)
    assert retry(intake, entry.event_id).kind == OutcomeKind.QUARANTINED
    assert [e.event_id for e in set_aside(intake.engine)] == [entry.event_id]  # still listed
    monkeypatch.undo()

    outcome = retry(intake, entry.event_id)
    assert outcome.kind == OutcomeKind.NEW_CASE and outcome.case_number == "IT-1001"
    assert set_aside(intake.engine) == []
    [released] = events(intake, "quarantine-released")
    assert released.data["quarantine_event"] == entry.event_id and released.data["case"] == "IT-1001"
    [message] = rows(intake, Message, Message.direction == "in")
    assert (message.uidvalidity, message.uid) == (3, 9)
    with pytest.raises(ReviewError, match="already released"):
        retry(intake, entry.event_id)


def test_cli_lists_screened_and_quarantined_mail_and_retries(intake, config_file, capsys):
    intake.process(make_mail(headers={"Auto-Submitted": "auto-replied"}), Origin("it", 1, 1))
    intake.process(b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1\0\0", Origin("it", 1, 2))
    intake.quarantine(make_mail(message_id="<q@kunde.example>"), Origin("it", 1, 3), ValueError("boom"))
    config = ["--config", str(config_file)]

    assert main([*config, "screened"]) == 0
    out = capsys.readouterr().out
    assert "auto-reply" in out and "Auto-Submitted: auto-replied" in out

    assert main([*config, "quarantine", "list"]) == 0
    out = capsys.readouterr().out
    assert "refused" in out and "Outlook" in out and "quarantined" in out and "ValueError: boom" in out

    assert main([*config, "quarantine", "retry", "--all"]) == 1  # the .msg file is refused again
    out = capsys.readouterr().out
    assert "new-case IT-1001" in out and "refused" in out
    assert main([*config, "quarantine", "list"]) == 0
    out = capsys.readouterr().out
    assert "Outlook" in out and "ValueError" not in out


def test_the_limit_is_a_sliding_window(config_file):
    from datetime import timedelta

    from mailrouter.models import utcnow

    intake = make_intake(config_file, "\n[limits]\nacknowledgements_per_sender = 2\n")
    for uid in (1, 2, 3):
        intake.process(make_mail(message_id=f"<w{uid}@kunde.example>"), Origin("it", 1, uid))
    assert len(acknowledgements(intake)) == 2
    with Session(intake.engine) as session:  # an hour and a bit later, for the first one
        first = session.exec(
            select(OutboxMessage)
            .where(OutboxMessage.kind == "acknowledgement")
            .order_by(col(OutboxMessage.id))
        ).first()
        assert first is not None
        first.created_at = utcnow() - timedelta(seconds=3700)
        session.add(first)
        session.commit()
    intake.process(make_mail(message_id="<w4@kunde.example>"), Origin("it", 1, 4))
    assert len(acknowledgements(intake)) == 3  # the first one left the window
    intake.process(make_mail(message_id="<w5@kunde.example>"), Origin("it", 1, 5))
    assert len(acknowledgements(intake)) == 3


def test_a_forged_authentication_results_header_gains_no_agent_powers(config_file):
    """The outsider's own A-R (trusted authserv-id, DKIM and SPF pass) sits below our border's
    Received, or has no Received of the border at all: on today's main either closed the case."""
    config_file.write_text(
        config_file.read_text().replace(
            "reopen_days = 7", 'reopen_days = 7\ntrusted_authserv_ids = ["mx.example.test"]'
        )
    )
    intake = make_intake(config_file)
    intake.process(make_mail(message_id="<c1@kunde.example>"), Origin("it", 1, 1))
    forged = (
        "Authentication-Results: mx.example.test; dkim=pass header.d=example.test; "
        "spf=pass smtp.mailfrom=example.test\r\n"
    )
    border = "Received: from evil.example by mx.example.test (Postfix); 1 Dec 2026 10:00 +0000\r\n"
    attack = make_mail(
        sender="agent1@example.test", subject="Re: [IT-1001] x", body="#close\nDone.", message_id=None
    )
    for uid, raw in enumerate(((border + forged).encode() + attack, forged.encode() + attack), start=2):
        intake.process(
            raw.replace(b"\r\nTo:", f"\r\nMessage-ID: <a{uid}@evil.example>\r\nTo:".encode(), 1),
            Origin("it", 1, uid),
        )
    [case] = rows(intake, Case)
    assert case.status == "new"
    assert rows(intake, OutboxMessage, OutboxMessage.kind == "agent-reply") == []
    assert len(events(intake, "security-warning")) == 2


def test_rotating_forged_senders_meet_the_domain_and_the_desk_budgets(config_file):
    intake = make_intake(
        config_file, "\n[limits]\nacknowledgements_per_domain = 3\nacknowledgements_total = 5\n"
    )
    for n in range(6):  # a new forged sender each time, all at one domain
        intake.process(
            make_mail(sender=f"x{n}@spam.example", message_id=f"<s{n}@spam.example>"), Origin("it", 1, n + 1)
        )
    assert len(acknowledgements(intake)) == 3
    for n in range(4):  # and at other domains: the desk's budget is spent after two more
        intake.process(make_mail(sender=f"y@d{n}.example", message_id=f"<d{n}@x>"), Origin("it", 1, n + 10))
    assert len(acknowledgements(intake)) == 5
    refusals = [e.detail for e in events(intake, "not-acknowledged")]
    assert sum("senders at spam.example have had" in r for r in refusals) == 3
    assert sum("the desk has sent the most acknowledgements" in r for r in refusals) == 2
    assert len(rows(intake, Case)) == 10  # every message still opened its case


BORDER = "Received: from mail.kunde.example by mx.example.test (Postfix); 1 Dec 2026 10:00 +0000\r\n"


def with_results(raw: bytes, results: str) -> bytes:
    return (f"Authentication-Results: mx.example.test; {results}\r\n" + BORDER).encode() + raw


def trusting(config_file, extra=""):
    config_file.write_text(
        config_file.read_text().replace(
            "reopen_days = 7", 'reopen_days = 7\ntrusted_authserv_ids = ["mx.example.test"]'
        )
        + extra
    )
    return make_intake(config_file)


def test_a_sender_whose_dmarc_fails_gets_an_acknowledgement_without_their_own_words(config_file):
    intake = trusting(config_file)
    raw = make_mail(sender="Buy Cheap Pills <kari@kunde.example>", subject="CHEAP PILLS http://spam")
    intake.process(with_results(raw, "dmarc=fail header.from=kunde.example"), Origin("it", 1, 1))
    [ack] = acknowledgements(intake)
    text = email.message_from_bytes(ack.data, policy=default)
    body = plain_text(text)
    assert "PILLS" not in text["Subject"] and "PILLS" not in body and "Buy Cheap" not in body
    passing = make_mail(sender="Kari <kari@ok.example>", subject="Skriveren", message_id="<ok@ok.example>")
    intake.process(with_results(passing, "dmarc=pass header.from=ok.example"), Origin("it", 1, 2))
    assert (
        "Skriveren" in email.message_from_bytes(acknowledgements(intake)[-1].data, policy=default)["Subject"]
    )


def test_a_mailbox_may_acknowledge_only_authenticated_senders(config_file):
    intake = trusting(config_file)
    text = config_file.read_text().replace(
        'prefix = "IT"', 'prefix = "IT"\nacknowledge_senders = "authenticated"'
    )
    config_file.write_text(text)
    intake = make_intake(config_file)
    intake.process(with_results(make_mail(), "dkim=fail header.d=kunde.example"), Origin("it", 1, 1))
    assert acknowledgements(intake) == []
    [why] = events(intake, "not-acknowledged")
    assert "acknowledges only authenticated senders" in why.detail
    good = make_mail(message_id="<good@kunde.example>")
    intake.process(with_results(good, "dkim=pass header.d=kunde.example"), Origin("it", 1, 2))
    assert len(acknowledgements(intake)) == 1


def test_authenticated_senders_spend_only_their_own_budget(config_file):
    """An internal desk's own staff all write from one domain: authenticated, never held back by it."""
    intake = trusting(config_file, "\n[limits]\nacknowledgements_per_domain = 2\n")
    for n in range(4):
        raw = make_mail(sender=f"ansatt{n}@kunde.example", message_id=f"<a{n}@kunde.example>")
        intake.process(with_results(raw, "dkim=pass header.d=kunde.example"), Origin("it", 1, n + 1))
    assert len(acknowledgements(intake)) == 4
    raw = make_mail(sender="x@kunde.example", message_id="<x@kunde.example>")
    intake.process(with_results(raw, "dkim=fail header.d=kunde.example"), Origin("it", 1, 9))
    assert len(acknowledgements(intake)) == 4  # the unauthenticated one meets the spent domain budget


def _acknowledged_at(intake, times, domain="kunde.example"):
    with intake.engine.begin() as connection:
        connection.execute(
            insert(OUTBOX),
            [
                {
                    "kind": OutboxKind.ACKNOWLEDGEMENT,
                    "mail_from": "it@desk.example",
                    "rcpt_to": [f"kunde{n}@{domain}"],
                    "message_id": f"<ack-{n}-{at.timestamp()}@desk.example>",
                    "data": b"",
                    "domain": domain,
                    "created_at": at,
                }
                for n, at in enumerate(times)
            ],
        )


def _counted(intake, count):
    """What `count(facts)` gives, and how many SQLite virtual machine instructions it ran."""
    steps = 0

    def step() -> int:
        nonlocal steps
        steps += 1
        return 0

    with intake.engine.connect() as connection:
        driver = connection.connection.dbapi_connection
        driver.set_progress_handler(step, 1)
        with Session(bind=connection) as session:
            counted = count(store.SqlFacts(session))
        driver.set_progress_handler(None, 1)
    return counted, steps


def test_the_desks_budget_reads_nothing_from_before_its_window(intake):
    """Counted at every new case: its cost is the window's acknowledgements, not the history's."""
    now = utcnow()
    _acknowledged_at(intake, [now - timedelta(minutes=n) for n in range(5)])
    within = _counted(intake, lambda facts: facts.acknowledgements_since(now - timedelta(hours=1), 100))
    _acknowledged_at(intake, [now - timedelta(days=2, minutes=n) for n in range(3000)])
    with_history = _counted(intake, lambda facts: facts.acknowledgements_since(now - timedelta(hours=1), 100))
    assert within[0] == with_history[0] == 5
    assert with_history[1] == within[1]


def test_a_domains_budget_reads_neither_its_history_nor_other_domains_mail(intake):
    """A desk with many customers' domains pays for one domain's acknowledgements only."""
    now = utcnow()
    since = now - timedelta(hours=1)
    _acknowledged_at(intake, [now - timedelta(minutes=n) for n in range(5)])
    alone = _counted(intake, lambda facts: facts.acknowledgements_to_domain("kunde.example", since, 100))
    _acknowledged_at(intake, [now - timedelta(days=2, minutes=n) for n in range(3000)])
    _acknowledged_at(intake, [now - timedelta(seconds=n) for n in range(3000)], domain="annen.example")
    among = _counted(intake, lambda facts: facts.acknowledgements_to_domain("kunde.example", since, 100))
    assert alone[0] == among[0] == 5
    assert among[1] == alone[1]
