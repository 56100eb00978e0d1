"""Follow-up reminders: due cases are reminded once, by the real apscheduler job."""

import asyncio
import email
from datetime import timedelta
from email.policy import default

from sqlmodel import Session, select

from mailrouter.models import Case, OutboxMessage, utcnow
from mailrouter.plan import Origin
from mailrouter.schedule import Scheduler, send_due_reminders
from tests.messages import make_mail


def set_follow_up(intake, when):
    with Session(intake.engine) as session:
        case = session.exec(select(Case)).one()
        case.follow_up_at = when
        session.add(case)
        session.commit()


def reminders(intake):
    with Session(intake.engine) as session:
        rows = session.exec(select(OutboxMessage).where(OutboxMessage.kind == "reminder")).all()
    return [email.message_from_bytes(r.data, policy=default) for r in rows]


def test_due_follow_up_is_reminded_once_and_cleared(intake):
    intake.process(make_mail(), Origin("it", 1, 1))
    set_follow_up(intake, utcnow() + timedelta(hours=1))
    assert send_due_reminders(intake.engine, intake.casework) == 0
    set_follow_up(intake, utcnow() - timedelta(minutes=1))
    assert send_due_reminders(intake.engine, intake.casework) == 2  # the group's two agents
    assert send_due_reminders(intake.engine, intake.casework) == 0
    first, second = reminders(intake)  # one per agent, each with a reply address of its own
    assert first["Subject"] == "[IT-1001] Follow-up due: Printer on floor 3 is broken"
    assert (first["To"], second["To"]) == ("agent1@example.test", "agent2@example.test")
    assert first["Reply-To"].addresses[0].addr_spec.startswith("it-support+it-1001.")
    assert first["Reply-To"] != second["Reply-To"]
    with Session(intake.engine) as session:
        assert session.exec(select(Case)).one().follow_up_at is None


async def test_the_scheduler_runs_the_job_and_wakes_the_sender(intake):
    intake.process(make_mail(), Origin("it", 1, 1))
    set_follow_up(intake, utcnow() - timedelta(seconds=1))
    woken = asyncio.Event()
    scheduler = Scheduler(intake.engine, intake.casework, interval=0.1, on_queued=woken.set)
    scheduler.start()
    try:
        await asyncio.wait_for(woken.wait(), timeout=5)
    finally:
        scheduler.stop()
    assert len(reminders(intake)) == 2
