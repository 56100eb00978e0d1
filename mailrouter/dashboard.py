"""dashboard: the live page of each department on the daemon's HTTP endpoint: today's and this
week's figures, the open backlog, the cases nearest to and past their SLA, and the report's
charts (pictures, the same drawings as the report mail), server-rendered and refreshing itself.

A wall screen is seen by anyone passing: the page shows no subject and no customer, only case
numbers, targets, priorities and who has them, and of sensitive cases only how many there are.
Figures are kpi's, the same as `mailrouter report`; words are the reports' catalogue's, in
`[http] language` (Templates.words), the same as the report mail's.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape
from sqlalchemy import Engine
from sqlmodel import Session

from mailrouter import charts, kpi, pictures, store, summary
from mailrouter.config import Config
from mailrouter.sla import Target, duration_text
from mailrouter.summary import Line

REFRESH = 60  # seconds between the page's own reloads
WATCHED = 12  # cases listed nearest to or past their SLA
SOON = 3600.0  # a target due within this many seconds is marked as near
# Each chart and the catalogue's word for its heading.
CHARTS = (
    (pictures.Chart.VOLUME, "board_volume"),
    (pictures.Chart.ANSWER_TIMES, "board_answer_times"),
    (pictures.Chart.BACKLOG, "board_backlog"),
    (pictures.Chart.BUSIEST_HOURS, "board_busiest_hours"),
)
_PAGES = Environment(
    loader=FileSystemLoader(Path(__file__).with_name("pages")),
    autoescape=select_autoescape(enabled_extensions=("html.j2",)),
    undefined=StrictUndefined,
)


@dataclass(frozen=True)
class WatchRow:
    number: str
    target: str
    priority: str
    owner: str
    left: str  # to the due time, or past it when late: "1h 05m"
    late: bool
    soon: bool


@dataclass(frozen=True)
class Compliance:
    """One SLA target this week: settled within it or not, still running, the share met."""

    target: Target
    met: int
    missed: int
    running: int
    share: str


@dataclass(frozen=True)
class Board:
    department: str
    display_name: str
    updated: datetime  # on the department's clock
    today: Line
    week: Line
    backlog: tuple[int, ...]  # open now, by age band (kpi.AGE_BANDS)
    backlog_total: int
    late: int
    sla: tuple[Compliance, ...]  # this week, per target
    watched: tuple[WatchRow, ...]
    sensitive: int  # sensitive cases with a running target: counted, never listed


@dataclass(frozen=True)
class Row:
    """A department on the overview."""

    department: str
    display_name: str
    today: int
    week: int
    backlog: int
    late: int


def _line(engine: Engine, config: Config, department: str, name: str, now: datetime) -> kpi.Figures:
    zone = config.calendar(department).zone
    period = kpi.named_period(name, now.astimezone(zone).date())
    return kpi.figures(engine, period, {department: zone}, dimensions=(), now=now)


def _watch_row(watched: store.Watched, now: datetime) -> WatchRow:
    left = (watched.due - now).total_seconds()
    span = duration_text(timedelta(seconds=left))
    return WatchRow(
        watched.number, watched.target, watched.priority, watched.owner, span, left < 0, 0 <= left < SOON
    )


def board(engine: Engine, config: Config, department: str, now: datetime) -> Board:
    """What a department's page shows, read at `now`."""
    mailbox = config.mailboxes[department]
    today = _line(engine, config, department, "today", now)
    week = _line(engine, config, department, "this-week", now)
    with Session(engine) as session:
        watched, withheld = store.sla_watch(session, [department], WATCHED)
        late = store.sla_late(session, [department], now).get(department, 0)
    # The backlog at the end of today is every case open now: none is created in the future.
    backlog = today.total.kpis.backlog
    weekly = week.total.kpis
    line = summary.line(mailbox.display_name, week.total)
    compliance = (
        (Target.FIRST_RESPONSE, weekly.sla_first_response, line.sla_first_response),
        (Target.NEXT_RESPONSE, weekly.sla_next_response, line.sla_next_response),
        (Target.RESOLUTION, weekly.sla_resolution, line.sla_resolution),
    )
    return Board(
        department=department,
        display_name=mailbox.display_name,
        updated=now.astimezone(config.calendar(department).zone),
        today=summary.line(mailbox.display_name, today.total),
        week=line,
        backlog=backlog,
        backlog_total=sum(backlog),
        late=late,
        sla=tuple(Compliance(t, c.met, c.missed, c.running, share) for t, c, share in compliance),
        watched=tuple(_watch_row(w, now) for w in watched),
        sensitive=withheld,
    )


def overview(engine: Engine, config: Config, now: datetime) -> list[Row]:
    """Every department from one read of this week's figures by department (its backlog is
    now's: the week runs on) and each department's cases per day of it, for today's."""
    departments = list(config.mailboxes)
    zones = pictures.zones(config, departments)
    today = now.astimezone(zones[departments[0]]).date()
    week = kpi.named_period("this-week", today)
    found = kpi.figures(engine, week, zones, (kpi.Dimension.DEPARTMENT,), now).breakdowns[0].groups
    by_department = {group.key: group.kpis for group in found}
    with Session(engine) as session:
        late = store.sla_late(session, departments, now)
    rows = []
    for department, mailbox in config.mailboxes.items():
        kpis = by_department.get(department)  # None: no case in the week, none open
        days = kpi.daily_created(engine, week, {department: zones[department]})
        rows.append(
            Row(
                department,
                mailbox.display_name,
                days[(today - week.first).days],
                kpis.created if kpis else 0,
                kpis.backlog_total if kpis else 0,
                late.get(department, 0),
            )
        )
    return rows


def board_page(
    engine: Engine, config: Config, words: Mapping[str, Any], department: str, now: datetime
) -> str:
    page = board(engine, config, department, now)
    return _PAGES.get_template("board.html.j2").render(board=page, charts=CHARTS, refresh=REFRESH, w=words)


def overview_page(engine: Engine, config: Config, words: Mapping[str, Any], now: datetime) -> str:
    zone = config.calendar(next(iter(config.mailboxes))).zone
    return _PAGES.get_template("overview.html.j2").render(
        rows=overview(engine, config, now), updated=now.astimezone(zone), refresh=REFRESH, w=words
    )


def chart(
    engine: Engine,
    config: Config,
    words: Mapping[str, Any],
    department: str,
    name: pictures.Chart,
    now: datetime,
) -> bytes:
    """One of the page's charts: this week's (the backlog: now), in the page's words."""
    zone = config.calendar(department).zone
    week = kpi.named_period("this-week", now.astimezone(zone).date())
    if name == pictures.Chart.BACKLOG:
        week = kpi.named_period("today", now.astimezone(zone).date())
    return pictures.draw(name, engine, config, week, [department], charts.Words.of(words), now=now)
