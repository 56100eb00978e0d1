"""schedule: periodic work, run by apscheduler. Jobs write outbox rows; they never talk SMTP.

The jobs: follow-up reminders set with #followup, SLA warnings and escalations, the daily
warning of OAuth2 secrets and certificates about to run out, and the customer's side:
reminders of cases whose customer has heard nothing, pending cases resolved for want of an
answer, resolved cases closed; the scheduled reports (reportmail), each slot claimed once; and
retention (privacy), one run a day. Each due case is claimed with a compare-and-set (on its
follow-up time; on the SLA target's warned and breached times being unset; on its quiet mark,
pending time or last change), so several instances never act on it twice; a credential's
warning is claimed against the day's events. Each job takes `now`, so tests can run it at a
moment of their choosing.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import UTC, datetime
from datetime import time as dt_time

from apscheduler.events import EVENT_JOB_ERROR, JobExecutionEvent
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from sqlalchemy import Engine
from sqlmodel import Session

from mailrouter import privacy, reportmail, sla, slots, store
from mailrouter.alerts import alert_mail, credential_users
from mailrouter.casework import Casework
from mailrouter.config import Config
from mailrouter.errors import DatabaseUnavailable
from mailrouter.models import utcnow
from mailrouter.oauth import expiry_warnings
from mailrouter.vocabulary import EventKind, OutboxKind

log = logging.getLogger(__name__)


def send_due_reminders(engine: Engine, casework: Casework) -> int:
    """Queue a reminder for every case whose follow-up time has come; returns how many."""
    with Session(engine) as session:
        due = store.due_follow_ups(session, utcnow())
    queued = 0
    for case_id, follow_up_at in due:
        with Session(engine) as session:
            if not store.claim_follow_up(session, case_id, follow_up_at):
                continue  # another instance took it, or an agent changed it meanwhile
            facts = store.SqlFacts(session)
            plan = casework.reminder(facts.case(case_id), utcnow(), facts)
            store.apply(session, plan)
            session.commit()
            queued += len(plan.mail)
            log.info("follow-up due case=%s", plan.outcome.case_number)
    return queued


def check_sla(engine: Engine, casework: Casework) -> int:
    """Warn of the SLA targets that are near and escalate the missed ones, each once: the claim
    and its plan commit together, so an instance that dies between them leaves it due."""
    now = utcnow()
    with Session(engine) as session:
        due = store.due_sla(session, now)
    queued = 0
    for case_id, target, stage in due:
        with Session(engine) as session:
            if not store.claim_sla(session, case_id, target, stage, now):
                continue
            facts = store.SqlFacts(session)
            case = facts.case(case_id)
            if stage == sla.Stage.BREACH:
                plan = casework.sla_breach(case, target, now, facts)
            else:
                plan = casework.sla_warning(case, target, now, facts)
            store.apply(session, plan)
            session.commit()
            queued += len(plan.mail)
            log.info("sla %s %s case=%s", target, stage, plan.outcome.case_number)
    return queued


def _cutoffs(config: Config, now: datetime) -> dict[str, datetime]:
    """Per department with quiet reminders: mail to the customer before this is quiet_days old."""
    return {
        name: config.calendar(name).open_days_before(now, mailbox.quiet_days)
        for name, mailbox in config.mailboxes.items()
        if mailbox.quiet_days
    }


def remind_quiet_cases(engine: Engine, casework: Casework, now: datetime | None = None) -> int:
    """Tell whoever has a case waiting on us that its customer has heard nothing for the
    department's quiet_days, once per silence; returns the letters queued."""
    now = now or utcnow()
    cutoffs = _cutoffs(casework.config, now)
    with Session(engine) as session:
        due = store.due_quiet(session, cutoffs)
    queued = 0
    for case_id, department in due:
        with Session(engine) as session:
            if not store.claim_quiet(session, case_id, department, cutoffs[department], now):
                continue
            facts = store.SqlFacts(session)
            days = casework.config.mailboxes[department].quiet_days
            plan = casework.quiet_reminder(facts.case(case_id), days, now, facts)
            store.apply(session, plan)
            session.commit()
            queued += len(plan.mail)
            log.info("customer quiet case=%s", plan.outcome.case_number)
    return queued


def resolve_unanswered(engine: Engine, casework: Casework, now: datetime | None = None) -> int:
    """Resolve the cases pending longer than their department's auto_resolve_after, telling the
    customer; returns the letters queued."""
    now = now or utcnow()
    after = {n: m.auto_resolve_after for n, m in casework.config.mailboxes.items() if m.auto_resolve_after}
    with Session(engine) as session:
        due = store.due_auto_resolve(session, {name: now - span for name, span in after.items()})
    queued = 0
    for case_id, department, pending_since in due:
        with Session(engine) as session:
            if not store.claim_auto_resolve(session, case_id, pending_since):
                continue
            facts = store.SqlFacts(session)
            plan = casework.auto_resolve(facts.case(case_id), after[department], now, facts)
            store.apply(session, plan)
            session.commit()
            queued += len(plan.mail)
            log.info("auto-resolved case=%s", plan.outcome.case_number)
    return queued


def close_resolved(engine: Engine, casework: Casework, now: datetime | None = None) -> int:
    """Close the cases resolved longer than their department's auto_close_after; returns how many."""
    now = now or utcnow()
    after = {n: m.auto_close_after for n, m in casework.config.mailboxes.items() if m.auto_close_after}
    with Session(engine) as session:
        due = store.due_auto_close(session, {name: now - span for name, span in after.items()})
    closed = 0
    for case_id, updated_at in due:
        with Session(engine) as session:
            if not store.claim_auto_close(session, case_id, updated_at, now):
                continue
            facts = store.SqlFacts(session)
            case = facts.case(case_id)
            plan = casework.auto_close(case, after[case.department], now)
            store.apply(session, plan)
            session.commit()
            closed += 1
            log.info("auto-closed case=%s", plan.outcome.case_number)
    return closed


def follow_through(engine: Engine, casework: Casework, now: datetime | None = None) -> int:
    """The customer's side of the schedule, in one job; returns the letters queued."""
    now = now or utcnow()
    queued = remind_quiet_cases(engine, casework, now) + resolve_unanswered(engine, casework, now)
    close_resolved(engine, casework, now)
    return queued


def warn_of_expiring_credentials(engine: Engine, casework: Casework, now: datetime | None = None) -> int:
    """Each client secret or certificate that runs out within 14 days, once per credential and
    UTC day whatever the instances: an event, a WARNING and, with [alerts], a mail to ops.
    Returns the letters queued."""
    now, config = now or utcnow(), casework.config
    day = datetime.combine(now.date(), dt_time.min, tzinfo=UTC)
    queued = 0
    for expiry in expiry_warnings(config, now.date()):
        mail = alert_mail(
            config,
            f"mailrouter: credential {expiry.credential} runs out on {expiry.expires}",
            f"{expiry}.\n\nThese log in with it: {', '.join(credential_users(config, expiry.credential))}.\n"
            "You will be reminded once a day until it is replaced.\n",
        )
        with Session(engine) as session:
            if not store.claim_credential_warning(session, expiry.credential, day):
                continue  # another instance warned today
            store.record(
                session, EventKind.CREDENTIAL_EXPIRING, str(expiry), at=now, expires=str(expiry.expires)
            )
            if mail is not None:
                store.queue_letter(session, OutboxKind.ALERT, *mail)
            session.commit()
        log.warning("%s", expiry)
        queued += mail is not None
    return queued


class Scheduler:
    def __init__(
        self,
        engine: Engine,
        casework: Casework,
        interval: float,
        on_queued: Callable[[], None],
        reports: reportmail.Reports | None = None,
        instance: str = "mailrouter",
    ) -> None:
        self.engine = engine
        self.casework = casework
        self.instance = instance
        self.on_queued = on_queued
        self.reports = reports
        self._scheduler = AsyncIOScheduler(timezone="UTC")
        # Each report at its slots, and once now: a slot missed while no instance ran is sent
        # at start if it is within the report's grace. Never dropped for running late: the slot
        # claim, not apscheduler's misfire rule, decides whether a slot is still to be sent.
        for report in reports.config.file.reports if reports is not None else ():
            self._scheduler.add_job(
                self._reports,
                slots.trigger(report.schedule, report.time_zone),
                id=f"report-{report.name}",
                misfire_grace_time=None,
                coalesce=True,
            )
            self._scheduler.add_job(
                self._reports, id=f"report-{report.name}-at-start", misfire_grace_time=None
            )
        self._scheduler.add_job(
            self._follow_ups, "interval", seconds=interval, id="follow-ups", max_instances=1, coalesce=True
        )
        self._scheduler.add_job(
            self._sla, "interval", seconds=interval, id="sla", max_instances=1, coalesce=True
        )
        self._scheduler.add_job(
            self._credentials,
            "interval",
            days=1,
            next_run_time=datetime.now(UTC),  # at start too: a restart must not wait a day
            id="credential-expiry",
            max_instances=1,
            coalesce=True,
        )
        self._scheduler.add_job(
            self._follow_through,
            "interval",
            seconds=interval,
            id="follow-through",
            max_instances=1,
            coalesce=True,
        )
        # Retention once a day: each run looks whether today's slot is taken yet.
        self._scheduler.add_job(
            self._retention, "interval", seconds=interval, id="retention", max_instances=1, coalesce=True
        )

    async def _follow_ups(self) -> None:
        # A failure rolls its claim back and is logged by apscheduler; the next run tries again.
        if await asyncio.to_thread(send_due_reminders, self.engine, self.casework):
            self.on_queued()

    async def _sla(self) -> None:
        if await asyncio.to_thread(check_sla, self.engine, self.casework):
            self.on_queued()

    async def _credentials(self) -> None:
        if await asyncio.to_thread(warn_of_expiring_credentials, self.engine, self.casework):
            self.on_queued()

    async def _follow_through(self) -> None:
        if await asyncio.to_thread(follow_through, self.engine, self.casework):
            self.on_queued()

    async def _retention(self) -> None:
        await asyncio.to_thread(privacy.run_daily, self.engine, self.casework.config, self.instance)

    async def _reports(self) -> None:
        assert self.reports is not None
        if await asyncio.to_thread(self.reports.send_due, utcnow()):
            self.on_queued()

    def start(self) -> None:
        self._scheduler.start()

    async def run(self, stop: asyncio.Event) -> None:
        """The jobs until `stop`; a job's unexpected error ends the run with it, for the supervisor
        to restart. The database being away is expected: the next run tries again."""
        loop = asyncio.get_running_loop()
        failed: asyncio.Future[BaseException] = loop.create_future()

        def on_error(event: JobExecutionEvent) -> None:
            if not isinstance(event.exception, DatabaseUnavailable):
                loop.call_soon_threadsafe(fail, event.exception)

        def fail(error: BaseException) -> None:
            if not failed.done():
                failed.set_result(error)

        self._scheduler.add_listener(on_error, EVENT_JOB_ERROR)
        self.start()
        stopping = asyncio.ensure_future(stop.wait())
        try:
            await asyncio.wait((failed, stopping), return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopping.cancel()
            self.stop()
        if failed.done():
            raise failed.result()

    def stop(self) -> None:
        self._scheduler.shutdown(wait=False)
