"""reportmail: the scheduled reports (`[[reports]]`). At each slot of a report's schedule, and at
start for a slot missed within its grace, the figures of its period go out by mail: HTML with
the charts inline, a plain-text part, and the CSV attached, from the (first) department's
address, through the outbox.

Once per slot however many instances run, and across restarts: the slot is claimed by a row
keyed by report and slot time, inserted in the same transaction as the outbox row. The mail is
drawn before the claim (charts take a second or two; the claim's transaction stays short), and an
instance that finds the slot taken already neither draws nor sends.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from zoneinfo import ZoneInfo

from apscheduler.triggers.cron import CronTrigger
from sqlalchemy import Engine
from sqlmodel import Session

from mailrouter import charts, kpi, pictures, slots, store, summary
from mailrouter.compose import FileAttachment, InlineImage, Outgoing, compose_report
from mailrouter.config import Config, ReportSettings
from mailrouter.report import csv_bytes
from mailrouter.summary import Line
from mailrouter.templates import Templates
from mailrouter.vocabulary import EventKind, OutboxKind

log = logging.getLogger(__name__)

TEMPLATE = "report"


@dataclass(frozen=True)
class ReportView:
    """What the report templates are given as `report`."""

    name: str
    departments: str  # their display names
    period: str  # first – last, local dates
    slot: str  # in the report's time zone
    lines: tuple[Line, ...]  # a line per department, then the total when there are several
    total: Line
    charts: dict[str, str]  # chart name (volume, answer_times, backlog, busiest_hours) -> Content-ID


def departments_of(config: Config, report: ReportSettings) -> list[str]:
    return report.departments or list(config.mailboxes)


def describe(config: Config, report: ReportSettings, now: datetime) -> str:
    """A report as `mailrouter check` shows it: when it goes next, what and to how many."""
    upcoming = slots.trigger(report.schedule, report.time_zone).get_next_fire_time(None, now)
    names = ", ".join(config.mailboxes[d].display_name for d in departments_of(config, report))
    return (
        f"report {report.name}: {report.schedule} ({report.time_zone}), next "
        f"{slots.describe(upcoming, report.time_zone)}; {report.period} of {names}, in {report.language}, "
        f"to {len(report.recipients)} recipient(s); a slot missed is sent within {report.grace} of it"
    )


def period_of(report: ReportSettings, slot: datetime) -> kpi.Period:
    """The report's period as seen at its slot, in its time zone: a slot sent late (after a
    restart) reports on the same days as one sent on time."""
    return kpi.named_period(report.period, slot.astimezone(ZoneInfo(report.time_zone)).date())


def draw(
    engine: Engine, config: Config, templates: Templates, report: ReportSettings, slot: datetime
) -> Outgoing:
    """The slot's mail, composed and not yet queued."""
    names = departments_of(config, report)
    period = period_of(report, slot)
    figures = kpi.figures(engine, period, pictures.zones(config, names), now=slot)
    display = {d: config.mailboxes[d].display_name for d in names}
    lines = summary.lines(figures, display)
    sender = config.mailboxes[names[0]]
    domain = sender.address.rpartition("@")[2]
    stamp = f"{report.name}.{slot:%Y%m%d%H%M%S}"
    words = charts.Words.of(templates.words(report.language))
    images = tuple(
        InlineImage(f"{chart}.{stamp}@{domain}", f"{chart}.png", png)
        for chart, png in pictures.draw_all(engine, config, figures, words).items()
    )
    view = ReportView(
        name=report.name,
        departments=", ".join(display.values()),
        period=f"{period.first.isoformat()} – {period.last.isoformat()}",
        slot=slots.describe(slot, report.time_zone),
        lines=tuple(lines),
        total=lines[-1],
        charts={
            chart.replace("-", "_"): image.content_id
            for chart, image in zip(pictures.Chart, images, strict=True)
        },
    )
    body = templates.render(names[0], TEMPLATE, (report.language,), {"report": view})
    csv = FileAttachment(
        f"{report.name}-{period.first.isoformat()}.csv",
        "text/csv; charset=utf-8",
        csv_bytes(figures, display),
    )
    return compose_report(
        from_address=sender.address,
        from_name=sender.display_name,
        to=tuple(report.recipients),
        subject=f"{body.text.splitlines()[0]} ({view.period})",
        body=body,
        images=images,
        files=(csv,),
    )


@dataclass(frozen=True)
class Reports:
    """The scheduler's reports job: what it needs to draw and queue them."""

    engine: Engine
    config: Config
    templates: Templates
    instance: str  # recorded with each slot it takes

    def send_due(self, now: datetime) -> int:
        """Queue the mail of every report whose slot is due at `now` and not yet taken;
        returns how many this instance queued."""
        queued = 0
        for report in self.config.file.reports:
            when = slots.trigger(report.schedule, report.time_zone)
            self._record_missed(report, when, now)
            slot = slots.due(when, now, report.grace)
            if slot is not None and self._send(report, slot, now):
                queued += 1
        return queued

    def _record_missed(self, report: ReportSettings, when: CronTrigger, now: datetime) -> None:
        """Slots that went by past their grace while no instance ran are put on the audit trail,
        once: the latest of them is claimed with the event, so nobody records them again."""
        with Session(self.engine) as session:
            last = store.latest_report_slot(session, report.name)
            if last is None:  # a report new to this desk has missed nothing
                return
            missed = slots.missed(when, last, now, report.grace)
            if not missed or not store.claim_report_slot(session, report.name, missed[-1], self.instance):
                return
            first, latest = (slots.describe(s, report.time_zone) for s in (missed[0], missed[-1]))
            span = first if len(missed) == 1 else f"{first} to {latest}"
            store.record(
                session,
                EventKind.REPORT_MISSED,
                f"report {report.name}: {len(missed)} slot(s) not sent, {span}: no instance ran "
                f"within their grace of {report.grace}",
                report=report.name,
                slots=[s.isoformat() for s in missed],
                instance=self.instance,
            )
            session.commit()
        log.warning(
            "report %s: %d slot(s) missed beyond their grace, the last %s", report.name, len(missed), latest
        )

    def _send(self, report: ReportSettings, slot: datetime, now: datetime) -> bool:
        when = slots.describe(slot, report.time_zone)
        with Session(self.engine) as session:
            taken = store.report_slot_taken(session, report.name, slot)
        if taken is not None:
            log.info("report %s slot %s: queued already by %s", report.name, when, taken)
            return False
        mail = draw(self.engine, self.config, self.templates, report, slot)
        with Session(self.engine) as session:
            if not store.claim_report_slot(session, report.name, slot, self.instance):
                log.info("report %s slot %s: another instance queued it", report.name, when)
                return False
            store.queue_letter(
                session, OutboxKind.REPORT, mail.mail_from, list(mail.rcpt_to), mail.message_id, mail.data
            )
            late = (now - slot).total_seconds()
            store.record(
                session,
                EventKind.REPORT_QUEUED,
                f"report {report.name} for slot {when} ({report.period}) queued to "
                f"{len(mail.rcpt_to)} recipient(s) by {self.instance}"
                + (f", {late:.0f}s after its slot" if late >= 60 else ""),
                report=report.name,
                slot=slot.isoformat(),
                instance=self.instance,
                message=mail.message_id,
            )
            session.commit()
        log.info("report %s slot %s: queued", report.name, when)
        return True
