"""summary: the figures as a person reads them at a glance, one line per department and one for
them all: counts, the median and 90th-percentile business time to the first answer and to the
resolution, SLA compliance, first-contact resolution and satisfaction. The report mail and the
dashboard show these lines; the definitions are kpi's.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta

from mailrouter.kpi import Dimension, Durations, Figures, Kpis, Satisfaction
from mailrouter.sla import duration_text

NONE = "–"  # a figure with nothing to count (no case was answered, no survey answered)


@dataclass(frozen=True)
class Line:
    name: str  # a department's display name, or "" for all of them together
    created: int
    resolved: int
    reopened: int
    closed: int
    backlog: int
    first_response: str  # median / p90, business time
    resolution: str
    sla_first_response: str
    sla_resolution: str
    first_contact: str
    satisfaction: str


def duration(seconds: float | None) -> str:
    return NONE if seconds is None else duration_text(timedelta(seconds=seconds))


def percent(rate: float | None) -> str:
    return NONE if rate is None else f"{round(rate * 100)} %"


def _spread(durations: Durations) -> str:
    if durations.median is None:
        return NONE
    return f"{duration(durations.median)} / {duration(durations.p90)}"


def _satisfaction(satisfaction: Satisfaction) -> str:
    if satisfaction.mean is None:
        return NONE
    return f"{satisfaction.mean:.1f} ({satisfaction.answers})"


def line(name: str, kpis: Kpis, satisfaction: Satisfaction) -> Line:
    return Line(
        name=name,
        created=kpis.created,
        resolved=kpis.resolved,
        reopened=kpis.reopened,
        closed=kpis.closed,
        backlog=kpis.backlog_total,
        first_response=_spread(kpis.first_response.business),
        resolution=_spread(kpis.resolution.business),
        sla_first_response=percent(kpis.sla_first_response.rate),
        sla_resolution=percent(kpis.sla_resolution.rate),
        first_contact=percent(kpis.first_contact_resolution_rate),
        satisfaction=_satisfaction(satisfaction),
    )


def empty(name: str) -> Line:
    """The line of a department with no case in the period."""
    return Line(name, 0, 0, 0, 0, 0, NONE, NONE, NONE, NONE, NONE, NONE)


def lines(figures: Figures, names: Mapping[str, str]) -> list[Line]:
    """A line per department reported on (`names`: department -> display name), a department
    without cases too, then the total when there are several."""
    groups = {g.key: g for g in figures.breakdown(Dimension.DEPARTMENT).groups}
    found = [
        line(names[d], groups[d].kpis, groups[d].satisfaction) if d in groups else empty(names[d])
        for d in figures.departments
    ]
    if len(figures.departments) > 1:
        found.append(line("", figures.total.kpis, figures.total.satisfaction))
    return found
