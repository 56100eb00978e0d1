"""Agents answering from their mail clients, through the real intake on SQLite (no IMAP/SMTP)."""

import email
import itertools
from datetime import timedelta
from email.message import EmailMessage
from email.policy import default

from sqlmodel import Session, col, select

from mailrouter.models import Case, Event, OutboxMessage, utcnow
from mailrouter.plan import Origin, OutcomeKind
from mailrouter.store import _ORGANISATION_OPEN_CASES
from tests.messages import make_mail, whole_letter

CUSTOMER = "Kari Nordmann <kari@kunde.example>"
uid = itertools.count(1)  # shared by every test of the run that delivers through it


def deliver(intake, **mail):
    mail.setdefault("message_id", f"<m{next(uid)}@x.example>")
    return intake.process(make_mail(**mail), Origin("it", 1, next(uid)))


def outbox(intake, kind=None):
    with Session(intake.engine) as session:
        rows = session.exec(select(OutboxMessage).order_by(col(OutboxMessage.id))).all()
        return [
            email.message_from_bytes(whole_letter(session, r), policy=default)
            for r in rows
            if kind in (None, r.kind)
        ]


def events(intake, kind):
    with Session(intake.engine) as session:
        return [e.detail for e in session.exec(select(Event).where(Event.kind == kind)).all()]


def case(intake):
    with Session(intake.engine) as session:
        return session.exec(select(Case)).one()


def new_case(intake):
    deliver(intake, sender=CUSTOMER, subject="Skrivaren virker ikke", message_id="<first@kunde.example>")
    first, second = outbox(intake, "notification")  # one per agent of the group
    assert (first["To"], second["To"]) == ("agent1@example.test", "agent2@example.test")
    assert first["Reply-To"] != second["Reply-To"]  # each signed for its own agent
    return first


def agent_reply(intake, notification, body, sender="Agent One <agent1@example.test>"):
    return deliver(
        intake,
        sender=sender,
        to=str(notification["Reply-To"]),
        body=body,
        subject=f"Re: {notification['Subject']}",
        headers={"In-Reply-To": notification["Message-ID"]},
    )


def test_a_new_case_notifies_the_department_group_with_a_signed_reply_to(intake):
    notification = new_case(intake)
    assert notification["To"] == "agent1@example.test"
    assert notification["Subject"] == "[IT-1001] New case: Skrivaren virker ikke"
    assert notification["Reply-To"].addresses[0].addr_spec.startswith("it-support+it-1001.")
    assert notification["Auto-Submitted"] == "auto-generated"
    text = notification.get_body(("plain",)).get_content()
    assert "Kari Nordmann <kari@kunde.example>, kunde.example" in text
    assert "the printer does not work" in text
    [original] = [p for p in notification.iter_attachments() if p.get_content_type() == "message/rfc822"]
    assert original.get_content()["Message-ID"] == "<first@kunde.example>"


def test_agent_answer_is_relayed_from_the_department_never_from_the_agent(intake):
    notification = new_case(intake)
    outcome = agent_reply(intake, notification, "Hei Kari, prøv igjen nå.\n\nOn Tue, X wrote:\n> old")
    assert outcome.kind == OutcomeKind.FOLLOW_UP and outcome.queued_mail == 1
    [answer] = outbox(intake, "agent-reply")
    assert answer["From"] == "IT Support <it-support@example.test>"
    assert answer["To"] == "kari@kunde.example"
    assert answer["Subject"] == "[IT-1001] Re: Skrivaren virker ikke"
    assert answer["In-Reply-To"] == "<first@kunde.example>"
    assert answer["Auto-Submitted"] is None
    raw = answer.as_string()
    assert "agent1" not in raw
    assert answer.get_body(("plain",)).get_content().strip() == "Hei Kari, prøv igjen nå."
    c = case(intake)
    assert c.first_response_at is not None and c.status == "open"


def test_note_is_recorded_and_never_sent(intake):
    notification = new_case(intake)
    agent_reply(intake, notification, "#note\nRinger kunden i morgen.")
    assert outbox(intake, "agent-reply") == []
    assert events(intake, "note") == ["Ringer kunden i morgen."]
    assert case(intake).first_response_at is None


def test_commands_change_the_case_and_are_not_sent(intake):
    notification = new_case(intake)
    agent_reply(
        intake, notification, "#priority urgent\n#tag printer\n#followup 2d\n#pending\nTry now, please."
    )
    c = case(intake)
    assert (c.priority, c.tags, c.status) == ("urgent", ["printer"], "pending")
    assert timedelta(days=1, hours=23) < c.follow_up_at - utcnow() <= timedelta(days=2)
    [answer] = outbox(intake, "agent-reply")
    assert "#" not in answer.get_body(("plain",)).get_content()


def test_close_then_customer_reply_reopens(intake):
    notification = new_case(intake)
    agent_reply(intake, notification, "#close")
    assert case(intake).status == "closed" and case(intake).resolved_at is not None
    deliver(
        intake, sender=CUSTOMER, subject="Re: [IT-1001] Skrivaren virker ikke", body="Den virker ikke igjen!"
    )
    c = case(intake)
    assert c.status == "open" and c.resolved_at is None
    assert any("reopened" in e for e in events(intake, "status-changed"))


def test_customer_reply_after_the_reopen_window_opens_a_linked_case(intake):
    notification = new_case(intake)
    agent_reply(intake, notification, "#resolve")
    with Session(intake.engine) as session:
        old = session.exec(select(Case)).one()
        old.resolved_at = utcnow() - timedelta(days=8)  # the window is 7 days in this config
        session.add(old)
        session.commit()
    outcome = deliver(intake, sender=CUSTOMER, subject="Re: [IT-1001] Skrivaren virker ikke", body="Igjen.")
    assert outcome.kind == OutcomeKind.NEW_CASE and outcome.case_number == "IT-1002"
    with Session(intake.engine) as session:
        cases = session.exec(select(Case).order_by(col(Case.id))).all()
    assert cases[0].status == "resolved" and cases[1].related_case_id == cases[0].id
    assert "a reply to IT-1001" in events(intake, "linked")[0]


def test_assign_notifies_the_new_assignee(intake):
    notification = new_case(intake)
    agent_reply(intake, notification, "#assign agent2@example.test")
    assert case(intake).assignee == "agent2@example.test"
    notifications = outbox(intake, "notification")
    assert notifications[-1]["To"] == "agent2@example.test"
    assert "Assigned to you by agent1@example.test" in notifications[-1]["Subject"]


def test_bad_command_gets_the_agent_an_explanation_and_nothing_happens(intake):
    notification = new_case(intake)
    agent_reply(intake, notification, "#priority asap\n#close\nHi Kari")
    [error] = outbox(intake, "command-error")
    assert error["To"] == "agent1@example.test"
    assert "priority must be one of" in error.get_body(("plain",)).get_content()
    assert outbox(intake, "agent-reply") == []
    assert case(intake).status == "new"


def test_forged_agent_is_neither_relayed_nor_obeyed_and_is_flagged(intake):
    """The real agent, at their own address, is told that an answer in their name was not sent."""
    new_case(intake)
    outcome = deliver(
        intake,
        sender="Agent One <agent1@example.test>",
        subject="Re: [IT-1001] Skrivaren virker ikke",
        body="#close\nHa ha.",
    )
    assert outcome.kind == OutcomeKind.FOLLOW_UP and outcome.queued_mail == 1
    assert case(intake).status == "new"
    assert outbox(intake, "agent-reply") == []
    [told] = outbox(intake, "unsent-answer")
    assert told["To"] == "agent1@example.test"
    assert "was NOT sent to the customer" in told.get_body(("plain",)).get_content()
    [warning] = events(intake, "security-warning")
    assert "claims agent agent1@example.test" in warning


def test_an_agent_whose_client_ignored_reply_to_hears_so_at_most_three_times_an_hour(intake):
    new_case(intake)
    for n in range(5):
        deliver(
            intake,
            sender="Agent One <agent1@example.test>",
            subject="Re: [IT-1001] Skrivaren virker ikke",
            body=f"Prøv igjen nå ({n}).",
        )
    assert len(outbox(intake, "unsent-answer")) == 3
    assert outbox(intake, "agent-reply") == []


def test_tampered_signed_address_is_rejected(intake):
    notification = new_case(intake)
    reply_to = str(notification["Reply-To"].addresses[0].addr_spec)
    local, _, domain = reply_to.partition("@")
    tampered = f"{local[:-1]}{'a' if local[-1] != 'a' else 'b'}@{domain}"
    deliver(intake, sender="agent1@example.test", to=tampered, subject="Re: [IT-1001] x", body="#close")
    assert case(intake).status == "new"
    warnings = events(intake, "security-warning")
    assert any("wrong MAC" in w for w in warnings) and any("claims agent" in w for w in warnings)
    # without the tag, it opens no case either: kept, flagged, unanswered
    outcome = deliver(
        intake, sender="agent1@example.test", to=tampered, subject="Re: something", body="#close"
    )
    assert outcome.kind == OutcomeKind.SCREENED and "tampered" in outcome.summary
    assert len(outbox(intake, "acknowledgement")) == 1


def test_a_colleague_on_the_case_joins_as_participant_and_the_group_hears_the_reply(intake):
    deliver(
        intake,
        sender=CUSTOMER,
        subject="Skrivaren virker ikke",
        headers={"Cc": "Per <per@kunde.example>"},
    )
    deliver(
        intake,
        sender="Per <per@kunde.example>",
        subject="Re: [IT-1001] Skrivaren virker ikke",
        body="Same here",
    )
    notifications = outbox(intake, "notification")
    assert len(notifications) == 4 and "Reply from per@kunde.example" in notifications[-1]["Subject"]
    assert any("written by the participant" in e for e in events(intake, "threaded"))


def test_a_stranger_on_a_guessed_tag_is_recorded_told_once_and_reopens_nothing(intake):
    """Case numbers are sequential: writing [IT-1001] does not make someone part of the case."""
    new_case(intake)
    agent_reply(intake, outbox(intake, "notification")[0], "#close")
    for n in range(3):
        deliver(
            intake,
            sender="Spammer <spam@elsewhere.example>",
            subject="Re: [IT-1001] hello",
            body=f"Buy now ({n})",
        )
    assert case(intake).status == "closed"
    told = [n for n in outbox(intake, "notification") if "who is not on the case" in n["Subject"]]
    assert len(told) == 2  # once, to each agent of the group
    assert all(not n.is_multipart() for n in told)  # the stranger's mail is not attached
    assert len(events(intake, "stranger-on-case")) == 3


def notification_text(intake, number):
    [notification] = [
        n
        for n in outbox(intake, "notification")
        if n["Subject"].startswith(f"[{number}]") and n["To"] == "agent1@example.test"
    ]
    return notification.get_body(("plain",)).get_content()


def test_the_notification_shows_the_customers_cases_and_counts_the_organisations_open_ones(intake):
    deliver(intake, sender=CUSTOMER, subject="Skrivaren virker ikke")
    deliver(intake, sender="Ola <ola@kunde.example>", subject="VPN")
    deliver(intake, sender="Per <per@annen.example>", subject="Annen organisasjon")
    deliver(intake, sender=CUSTOMER, subject="Skjermen flimrer")
    text = notification_text(intake, "IT-1004")
    assert (
        "Kari Nordmann <kari@kunde.example>, kunde.example (2 other open cases from this organisation)"
        in text
    )
    assert "  - IT-1001  new  Skrivaren virker ikke" in text
    assert "IT-1002" not in text  # Ola's case: the organisation's, not the customer's


def test_the_organisations_open_cases_are_counted_to_fifty(intake):
    for n in range(52):
        deliver(intake, sender=f"Ansatt {n} <ansatt{n}@kunde.example>", subject=f"Sak {n}")
    assert "(50+ other open cases from this organisation)" in notification_text(intake, "IT-1052")
    assert "(49 other open cases from this organisation)" in notification_text(intake, "IT-1050")


def test_the_organisations_open_cases_are_found_from_the_open_cases(intake):
    """Not from the organisation's customers: they have every case they ever opened."""
    statement = _ORGANISATION_OPEN_CASES.statement.compile(dialect=intake.engine.dialect)
    assert statement.positiontup is not None  # SQLite's parameters are positional
    unbound = (None,) * len(statement.positiontup)
    with intake.engine.connect() as connection:
        plan = [row[3] for row in connection.exec_driver_sql(f"EXPLAIN QUERY PLAN {statement}", unbound)]
    assert any("USING INDEX ix_case_status" in step for step in plan), plan
    assert not any("ix_customer_organisation" in step for step in plan), plan


def agent_reply_with_files(intake, notification, body, files):
    message = EmailMessage()
    message["From"] = "Agent One <agent1@example.test>"
    message["To"] = str(notification["Reply-To"])
    message["Subject"] = f"Re: {notification['Subject']}"
    message["Message-ID"] = f"<files{next(uid)}@example.test>"
    message["In-Reply-To"] = notification["Message-ID"]
    message.set_content(body)
    for name, data in files:
        message.add_attachment(data, maintype="application", subtype="pdf", filename=name)
    return intake.process(message.as_bytes(), Origin("it", 1, next(uid)))


def test_an_agents_attachments_reach_the_customer_and_the_participants_on_cc(intake):
    deliver(
        intake,
        sender=CUSTOMER,
        subject="Skrivaren virker ikke",
        headers={"Cc": "Per <per@kunde.example>, it-support@example.test"},
    )
    notification = outbox(intake, "notification")[0]
    agent_reply_with_files(
        intake, notification, "Se vedlagt veiledning.", [("veiledning-ø.pdf", b"%PDF-1.4 x")]
    )
    [answer] = outbox(intake, "agent-reply")
    assert answer["To"] == "kari@kunde.example" and answer["Cc"] == "per@kunde.example"
    [attached] = list(answer.iter_attachments())
    assert attached.get_filename() == "veiledning-ø.pdf" and attached.get_content() == b"%PDF-1.4 x"
    with Session(intake.engine) as session:
        row = session.exec(select(OutboxMessage).where(OutboxMessage.kind == "agent-reply")).one()
    assert row.rcpt_to == ["kari@kunde.example", "per@kunde.example"]


def test_a_participant_removed_with_uncc_gets_no_more_answers(intake):
    deliver(intake, sender=CUSTOMER, subject="Skrivaren virker ikke", headers={"Cc": "per@kunde.example"})
    agent_reply(intake, outbox(intake, "notification")[0], "#uncc per@kunde.example\nVi ser på det.")
    [answer] = outbox(intake, "agent-reply")
    assert answer["Cc"] is None and answer["To"] == "kari@kunde.example"


def test_an_attachment_over_the_limit_is_not_sent_on_and_the_agent_is_told(intake, monkeypatch):
    config = intake.casework.config
    limits = config.file.limits.model_copy(update={"relay_attachment_bytes": 1000})
    monkeypatch.setattr(config, "file", config.file.model_copy(update={"limits": limits}))
    notification = new_case(intake)
    agent_reply_with_files(
        intake, notification, "Her.", [("liten.pdf", b"x" * 10), ("stor.pdf", b"y" * 5000)]
    )
    [answer] = outbox(intake, "agent-reply")
    assert [a.get_filename() for a in answer.iter_attachments()] == ["liten.pdf"]
    [told] = [
        m
        for m in outbox(intake, "command-error")
        if "WITHOUT these attachments" in m.get_body(("plain",)).get_content()
    ]
    assert told["To"] == "agent1@example.test" and "stor.pdf" in told.get_body(("plain",)).get_content()


def test_a_web_forms_reply_to_is_the_customer_who_hears_the_answers(intake):
    deliver(
        intake,
        sender="Skjema <noreply@forms.example>",
        subject="Kontaktskjema: skriveren",
        headers={"Reply-To": "Kari Nordmann <kari@kunde.example>"},
    )
    [ack] = outbox(intake, "acknowledgement")
    assert ack["To"] == "kari@kunde.example"
    agent_reply(intake, outbox(intake, "notification")[0], "Vi ser på det.")
    [answer] = outbox(intake, "agent-reply")
    assert answer["To"] == "kari@kunde.example"
