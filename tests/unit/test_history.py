"""The reports' history: every status change with its time, and the first answer's and first
resolution's figures on the case, written by the real intake and never cleared by a reopen."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import text
from sqlmodel import Session, col, select

from mailrouter.models import Case, StatusChange
from mailrouter.vocabulary import CaseStatus
from tests.unit.test_agent_flow import CUSTOMER, agent_reply, deliver, new_case


def the_case(intake) -> Case:
    with Session(intake.engine) as session:
        return session.exec(select(Case)).one()


def changes(intake) -> list[tuple[datetime, CaseStatus, CaseStatus]]:
    with Session(intake.engine) as session:
        rows = session.exec(select(StatusChange).order_by(col(StatusChange.id))).all()
    return [(row.at.replace(tzinfo=UTC), row.from_status, row.to_status) for row in rows]


def customer_writes(intake, body: str = "It is still broken.") -> None:
    deliver(intake, sender=CUSTOMER, subject="Re: [IT-1001] Skrivaren virker ikke", body=body)


def test_every_status_change_is_kept_with_its_time_and_a_reopen_clears_no_history(intake, clock):
    notification = new_case(intake)
    answered = clock.advance(hours=2)
    agent_reply(intake, notification, "Have you tried turning it off and on again?")
    resolved = clock.advance(hours=1)
    agent_reply(intake, notification, "#resolve")
    reopened = clock.advance(days=3)
    customer_writes(intake)
    case = the_case(intake)
    assert case.status == CaseStatus.OPEN and case.resolved_at is None  # the live status: open again
    assert changes(intake) == [
        (answered, CaseStatus.NEW, CaseStatus.OPEN),
        (resolved, CaseStatus.OPEN, CaseStatus.RESOLVED),
        (reopened, CaseStatus.RESOLVED, CaseStatus.OPEN),
    ]
    assert case.first_resolved_at is not None and case.first_resolved_at.replace(tzinfo=UTC) == resolved
    assert case.resolution_seconds == 3 * 3600 and case.first_response_seconds == 2 * 3600
    assert case.resolution_replies == 1 and case.first_contact_resolution is True
    clock.advance(hours=1)
    agent_reply(intake, notification, "#close\nReplaced the fuser.")
    case = the_case(intake)
    assert case.first_resolved_at is not None
    assert case.first_resolved_at.replace(tzinfo=UTC) == resolved  # the first resolution stays
    assert case.resolution_seconds == 3 * 3600 and case.resolution_replies == 1
    assert case.agent_replies == 2 and case.closed_at is not None


def test_an_answer_given_with_resolve_counts_before_the_resolution(intake, clock):
    notification = new_case(intake)
    clock.advance(minutes=30)
    agent_reply(intake, notification, "#resolve\nThe printer is fixed now.")
    case = the_case(intake)
    assert case.first_response_at == case.first_resolved_at
    assert case.resolution_replies == 1 and case.first_contact_resolution is True


def test_a_customer_message_after_the_answer_is_no_first_contact_resolution(intake, clock):
    notification = new_case(intake)
    clock.advance(minutes=30)
    agent_reply(intake, notification, "Try the other tray.")
    clock.advance(minutes=30)
    customer_writes(intake, "Which tray?")
    clock.advance(minutes=30)
    agent_reply(intake, notification, "#resolve")
    case = the_case(intake)
    assert case.resolution_replies == 1 and case.first_contact_resolution is False


def test_two_answers_are_no_first_contact_resolution(intake, clock):
    notification = new_case(intake)
    for _ in range(2):
        clock.advance(minutes=30)
        agent_reply(intake, notification, "One more thing to try.")
    agent_reply(intake, notification, "#resolve")
    case = the_case(intake)
    assert case.resolution_replies == 2 and case.first_contact_resolution is False


def test_business_time_leaves_out_the_wait_on_the_customer(intake, clock):
    """No business hours configured: every hour counts, except those pending."""
    notification = new_case(intake)
    clock.advance(hours=1)
    agent_reply(intake, notification, "#pending\nWhich floor is it on?")
    clock.advance(hours=5)
    customer_writes(intake, "Third floor.")
    clock.advance(hours=2)
    agent_reply(intake, notification, "#resolve\nFixed.")
    case = the_case(intake)
    assert case.resolution_seconds == 8 * 3600
    assert case.resolution_business_seconds == 3 * 3600
    assert case.first_response_seconds == case.first_response_business_seconds == 3600


def test_a_case_without_a_policy_has_no_sla_outcome(intake, clock):
    notification = new_case(intake)
    agent_reply(intake, notification, "#resolve\nDone.")
    case = the_case(intake)
    assert case.first_response_met is None and case.resolution_met is None


def test_the_migration_backfills_history_from_the_events_and_the_mail(tmp_path):
    from alembic import command

    from mailrouter.db import alembic_config, create_schema, make_engine

    engine = make_engine(f"sqlite:///{tmp_path}/old.db")
    with engine.connect() as connection:
        command.upgrade(alembic_config(connection), "0007")
        connection.commit()
    created = "2026-10-01 08:00:00.000000"
    with engine.begin() as connection:
        for statement in (
            "INSERT INTO customer (id, address, name, organisation, created_at) "
            f"VALUES (1, 'kari@kunde.example', '', 'kunde.example', '{created}')",
            'INSERT INTO "case" (id, number, department, subject, status, priority, category, '
            '"group", assignee, tags, language, customer_id, created_at, updated_at, first_response_at, '
            "resolved_at, sla, sla_paused_seconds, survey_message_id, satisfaction_comment) "
            "VALUES (1, 'IT-1001', 'it', 's', "
            f"'closed', 'normal', '', '', '', '[]', 'en', 1, '{created}', '2026-10-03 08:00:00.000000', "
            "'2026-10-01 09:00:00.000000', '2026-10-01 10:00:00.000000', '', 0, '', '')",
            "INSERT INTO event (case_id, mailbox, kind, detail, data, created_at) VALUES "
            "(1, '', 'status-changed', 'a@x: new → open (answered the customer)', '{}', "
            "'2026-10-01 09:00:00.000000'), "
            "(1, '', 'status-changed', 'a@x: open → resolved (#resolve)', '{}', "
            "'2026-10-01 10:00:00.000000'), "
            "(1, '', 'status-changed', 'mailrouter: resolved → closed (resolved for 2d 0h)', '{}', "
            "'2026-10-03 08:00:00.000000')",
            "INSERT INTO outboxmessage (case_id, kind, mail_from, rcpt_to, message_id, data, state, "
            "attempts, next_attempt_at, last_error, claimed_by, created_at) "
            "VALUES (1, 'agent-reply', 'it@x', '[]', "
            f"'<r@x>', x'00', 'sent', 1, '{created}', '', '', '2026-10-01 09:00:00.000000')",
        ):
            connection.execute(text(statement))
    create_schema(engine)
    with Session(engine) as session:
        case = session.exec(select(Case)).one()
        history = session.exec(select(StatusChange).order_by(col(StatusChange.id))).all()
    engine.dispose()
    assert [(c.from_status, c.to_status) for c in history] == [
        (CaseStatus.NEW, CaseStatus.OPEN),
        (CaseStatus.OPEN, CaseStatus.RESOLVED),
        (CaseStatus.RESOLVED, CaseStatus.CLOSED),
    ]
    assert case.first_resolved_at is not None and case.closed_at is not None
    assert case.first_resolved_at.replace(tzinfo=UTC) == datetime(2026, 10, 1, 10, tzinfo=UTC)
    assert case.closed_at.replace(tzinfo=UTC) == datetime(2026, 10, 3, 8, tzinfo=UTC)
    assert (case.first_response_seconds, case.resolution_seconds) == (3600, 7200)
    assert (case.agent_replies, case.resolution_replies, case.first_contact_resolution) == (1, 1, True)
    assert case.resolution_business_seconds is None  # needs the config's calendar: not backfilled
