"""pictures: which figures each of the report's charts shows — kpi's queries into charts'
drawings — for the report mail and the dashboard alike.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import datetime, timedelta
from enum import StrEnum
from zoneinfo import ZoneInfo

from sqlalchemy import Engine

from mailrouter import charts, kpi
from mailrouter.config import Config

# First-answer bands, in business hours; the last is open-ended.
ANSWER_HOURS = (0.0, 1.0, 2.0, 4.0, 8.0, 16.0, 24.0, 48.0, math.inf)


class Chart(StrEnum):
    VOLUME = "volume"
    ANSWER_TIMES = "answer-times"
    BACKLOG = "backlog"
    BUSIEST_HOURS = "busiest-hours"


def zones(config: Config, departments: Sequence[str]) -> dict[str, ZoneInfo]:
    """Each department's time zone: its days and hours are its own calendar's."""
    return {department: config.calendar(department).zone for department in departments}


def first_response_target(config: Config, departments: Sequence[str]) -> float | None:
    """The first-answer target in hours of the departments' SLA policy, when they share one."""
    policies = {config.mailboxes[d].sla for d in departments}
    if len(policies) != 1 or "" in policies:
        return None
    return config.file.sla[policies.pop()].first_response.total_seconds() / 3600


def draw(
    chart: Chart,
    engine: Engine,
    config: Config,
    period: kpi.Period,
    departments: Sequence[str],
    words: charts.Words,
    figures: kpi.Figures | None = None,
    now: datetime | None = None,
) -> bytes:
    """One chart of the period; `figures` of the same period when they are at hand already."""
    where = zones(config, departments)
    if chart == Chart.VOLUME:
        current = kpi.daily_created(engine, period, where)
        before = kpi.daily_created(engine, period.previous(), where)
        days = [period.first + timedelta(days=d) for d in range(len(current))]
        previous = (list(before) + [0] * len(current))[: len(current)]
        return charts.volume(days, current, previous, words)
    if chart == Chart.ANSWER_TIMES:
        bands = kpi.first_response_bands(engine, period, where, [h * 3600 for h in ANSWER_HOURS])
        return charts.answer_times(ANSWER_HOURS, bands, first_response_target(config, departments), words)
    if figures is None:
        figures = kpi.figures(engine, period, where, dimensions=(), now=now)
    if chart == Chart.BACKLOG:
        return charts.backlog(words.ages, figures.total.kpis.backlog, words)
    return charts.busiest_hours(figures.arrivals, words)


def draw_all(engine: Engine, config: Config, figures: kpi.Figures, words: charts.Words) -> dict[Chart, bytes]:
    """Every chart of the figures' period and departments, as the report mail shows them."""
    return {
        chart: draw(chart, engine, config, figures.period, figures.departments, words, figures)
        for chart in Chart
    }
