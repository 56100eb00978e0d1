"""summary: the figures as a person reads them at a glance, one line per department and one for
them all: counts, the median and 90th-percentile business time to the first answer and to the
resolution, SLA compliance, first-contact resolution and satisfaction. The report mail and the
dashboard show these lines; the definitions are kpi's, the wording report's.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from mailrouter.kpi import Dimension, Figures, Group
from mailrouter.report import NONE, column, readable


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
    sla_next_response: str
    sla_resolution: str
    first_contact: str
    satisfaction: str


def _figure(name: str, group: Group) -> str:
    return readable(column(name), group)


def _spread(name: str, group: Group) -> str:
    """Median / 90th percentile, or one NONE when nothing was counted."""
    median = _figure(f"{name} median", group)
    return NONE if median == NONE else f"{median} / {_figure(f'{name} p90', group)}"


def line(name: str, group: Group) -> Line:
    kpis = group.kpis
    return Line(
        name=name,
        created=kpis.created,
        resolved=kpis.resolved,
        reopened=kpis.reopened,
        closed=kpis.closed,
        backlog=kpis.backlog_total,
        first_response=_spread("first response business", group),
        resolution=_spread("resolution business", group),
        sla_first_response=_figure("sla first response", group),
        sla_next_response=_figure("sla next response", group),
        sla_resolution=_figure("sla resolution", group),
        first_contact=_figure("first contact resolution", group),
        satisfaction=_figure("satisfaction mean", group),
    )


def empty(name: str) -> Line:
    """The line of a department with no case in the period."""
    return Line(name, 0, 0, 0, 0, 0, NONE, NONE, NONE, NONE, NONE, NONE, NONE)


def lines(figures: Figures, names: Mapping[str, str]) -> list[Line]:
    """A line per department reported on (`names`: department -> display name), a department
    without cases too, then the total when there are several."""
    groups = {g.key: g for g in figures.breakdown(Dimension.DEPARTMENT).groups}
    found = [line(names[d], groups[d]) if d in groups else empty(names[d]) for d in figures.departments]
    if len(figures.departments) > 1:
        found.append(line("", figures.total))
    return found
