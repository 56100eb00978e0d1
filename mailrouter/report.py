"""report: kpi's figures written out for a person or a program — a terminal table, JSON, CSV that
Excel opens as it is on a Nordic desktop, and an HTML page.

Every format lists the same figures under the same names (COLUMNS); the definitions are kpi's
and the README's.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from datetime import timedelta
from typing import Any

from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

from mailrouter import kpi, sla
from mailrouter.kpi import Compliance, Durations, Figures, Group

WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
NONE = "-"  # nothing to count: no case answered, no survey answered


@dataclass(frozen=True)
class Column:
    name: str
    value: Callable[[Group], float | int | None]
    unit: str = ""  # "s": seconds, "%": a share from 0 to 1, "": a count or a mean


def _durations(name: str, pick: Callable[[Group], Durations]) -> tuple[Column, ...]:
    return (
        Column(f"{name} median", lambda g: pick(g).median, "s"),
        Column(f"{name} p90", lambda g: pick(g).p90, "s"),
    )


def _compliance(name: str, pick: Callable[[Group], Compliance]) -> tuple[Column, ...]:
    return (
        Column(f"{name} met", lambda g: pick(g).met),
        Column(f"{name} missed", lambda g: pick(g).missed),
        Column(f"{name} running", lambda g: pick(g).running),
        Column(name, lambda g: pick(g).rate, "%"),
    )


COLUMNS: tuple[Column, ...] = (
    Column("created", lambda g: g.kpis.created),
    Column("resolved", lambda g: g.kpis.resolved),
    Column("reopened", lambda g: g.kpis.reopened),
    Column("closed", lambda g: g.kpis.closed),
    Column("backlog", lambda g: g.kpis.backlog_total),
    *(
        Column(f"backlog {label}", lambda g, i=index: g.kpis.backlog[i])  # type: ignore[misc]
        for index, (label, _) in enumerate(kpi.AGE_BANDS)
    ),
    Column("first responses", lambda g: g.kpis.first_response.calendar.count),
    *_durations("first response business", lambda g: g.kpis.first_response.business),
    *_durations("first response calendar", lambda g: g.kpis.first_response.calendar),
    Column("first resolutions", lambda g: g.kpis.first_resolutions),
    *_durations("resolution business", lambda g: g.kpis.resolution.business),
    *_durations("resolution calendar", lambda g: g.kpis.resolution.calendar),
    *_compliance("sla first response", lambda g: g.kpis.sla_first_response),
    *_compliance("sla next response", lambda g: g.kpis.sla_next_response),
    *_compliance("sla resolution", lambda g: g.kpis.sla_resolution),
    Column("first contact resolutions", lambda g: g.kpis.first_contact_resolutions),
    Column("first contact resolution", lambda g: g.kpis.first_contact_resolution_rate, "%"),
    Column("reopen rate", lambda g: g.kpis.reopen_rate, "%"),
    Column("agent replies per case", lambda g: g.kpis.replies_per_case),
    Column("surveys sent", lambda g: g.satisfaction.surveys_sent),
    Column("survey response rate", lambda g: g.satisfaction.response_rate, "%"),
    Column("satisfaction answers", lambda g: g.satisfaction.answers),
    Column("satisfaction mean", lambda g: g.satisfaction.mean),
    *(
        Column(f"satisfaction {score}", lambda g, i=index: g.satisfaction.distribution[i])  # type: ignore[misc]
        for index, score in enumerate(kpi.SCORES)
    ),
)
# The terminal's and the HTML page's breakdown tables, what fits a line: (column, its heading).
BRIEF = (
    ("created", "created"),
    ("resolved", "resolved"),
    ("reopened", "reopened"),
    ("backlog", "backlog"),
    ("first response business median", "answer"),
    ("resolution business median", "resolution"),
    ("sla first response", "sla answer"),
    ("sla next response", "sla next answer"),
    ("sla resolution", "sla resolution"),
    ("first contact resolution", "first contact"),
    ("satisfaction mean", "satisfaction"),
)
_BY_NAME = {column.name: column for column in COLUMNS}


def column(name: str) -> Column:
    """One of COLUMNS by its name (the report mail's and the dashboard's summary lines)."""
    return _BY_NAME[name]


def readable(column: Column, group: Group) -> str:
    """A figure as a person reads it: 3h 05m, 67 %, 4.5."""
    value = column.value(group)
    if value is None:
        return NONE
    if column.unit == "s":
        return sla.duration_text(timedelta(seconds=value))
    if column.unit == "%":
        return f"{round(value * 100)} %"
    return str(value) if isinstance(value, int) else f"{value:.2f}"


def _label(figures: Figures, names: Mapping[str, str]) -> str:
    period = figures.period
    span = period.first.isoformat() if period.first == period.last else f"{period.first} to {period.last}"
    return f"{period.name} ({span}), {', '.join(names.get(d, d) for d in figures.departments)}"


def _key(dimension: kpi.Dimension, key: str, names: Mapping[str, str]) -> str:
    if dimension == kpi.Dimension.DEPARTMENT:
        return names.get(key, key)
    return key or "(none)"


def table(figures: Figures, names: Mapping[str, str]) -> str:
    """For a terminal: every figure of the whole, then each breakdown's main figures."""
    lines = [f"Report {_label(figures, names)}", ""]
    width = max(len(c.name) for c in COLUMNS)
    lines += [f"  {c.name:<{width}}  {readable(c, figures.total)}" for c in COLUMNS]
    brief = [_BY_NAME[name] for name, _ in BRIEF]
    lines += ["", "median business times; sla: the share of targets met", ""]
    for breakdown in figures.breakdowns:
        if not breakdown.groups:
            continue
        rows = [
            [_key(breakdown.dimension, g.key, names), *(readable(c, g) for c in brief)]
            for g in breakdown.groups
        ]
        header = [f"by {breakdown.dimension}", *(heading for _, heading in BRIEF)]
        widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header))]
        for row in (header, *rows):
            cells = [row[0].ljust(widths[0]), *(v.rjust(w) for v, w in zip(row[1:], widths[1:], strict=True))]
            lines.append("  ".join(cells).rstrip())
        lines.append("")
    lines += ["cases created by weekday and hour of arrival (local time)"]
    lines += ["           " + " ".join(f"{h:>3}" for h in range(24))]
    lines += [
        f"{day:<10} " + " ".join(f"{n:>3}" for n in hours)
        for day, hours in zip(WEEKDAYS, figures.arrivals, strict=True)
    ]
    return "\n".join(lines) + "\n"


def _plain(group: Group) -> dict[str, Any]:
    return {"key": group.key, **{c.name: c.value(group) for c in COLUMNS}}


def as_json(figures: Figures) -> str:
    """Every figure under its column name (seconds, shares from 0 to 1), per group."""
    document = {
        "period": {
            **asdict(figures.period),
            "first": figures.period.first.isoformat(),
            "last": figures.period.last.isoformat(),
        },
        "departments": list(figures.departments),
        "total": _plain(figures.total),
        "breakdowns": {b.dimension.value: [_plain(g) for g in b.groups] for b in figures.breakdowns},
        "arrivals": {day: list(hours) for day, hours in zip(WEEKDAYS, figures.arrivals, strict=True)},
        "age_bands": [label for label, _ in kpi.AGE_BANDS],
    }
    return json.dumps(document, ensure_ascii=False, indent=2) + "\n"


def _spreadsheet(column: Column, group: Group) -> str:
    """Hours for durations, per cent for shares, with a decimal comma: what a Nordic Excel reads
    as a number."""
    value = column.value(group)
    if value is None:
        return ""
    if column.unit == "s":
        value = value / 3600
    elif column.unit == "%":
        value = value * 100
    return str(value) if isinstance(value, int) else f"{value:.2f}".replace(".", ",")


def csv_bytes(figures: Figures, names: Mapping[str, str]) -> bytes:
    """UTF-8 with a byte-order mark and `;` between fields: Excel on a Nordic locale opens it
    with å ä ö ø æ intact and each figure in its own column. Durations in hours, shares in per
    cent; a row per group, the whole first; the arrivals as a table of their own below."""
    out = io.StringIO()
    writer = csv.writer(out, delimiter=";", lineterminator="\r\n")
    units = {"s": " (hours)", "%": " (%)"}
    writer.writerow(["breakdown", "group", *(c.name + units.get(c.unit, "") for c in COLUMNS)])
    writer.writerow(["total", _label(figures, names), *(_spreadsheet(c, figures.total) for c in COLUMNS)])
    for breakdown in figures.breakdowns:
        for group in breakdown.groups:
            key = _key(breakdown.dimension, group.key, names)
            writer.writerow([breakdown.dimension.value, key, *(_spreadsheet(c, group) for c in COLUMNS)])
    writer.writerow([])
    writer.writerow(["weekday", *(f"{h:02d}" for h in range(24))])
    for day, hours in zip(WEEKDAYS, figures.arrivals, strict=True):
        writer.writerow([day, *hours])
    return b"\xef\xbb\xbf" + out.getvalue().encode("utf-8")


_PAGES = Environment(
    loader=PackageLoader("mailrouter", "pages"),
    autoescape=select_autoescape(enabled_extensions=("html.j2",)),
    undefined=StrictUndefined,
)


def html(figures: Figures, names: Mapping[str, str]) -> str:
    """A page of its own (inline styles only, so it also reads well pasted into a mail)."""
    brief = [_BY_NAME[name] for name, _ in BRIEF]
    breakdowns = [
        (
            b.dimension.value,
            [(_key(b.dimension, g.key, names), [readable(c, g) for c in brief]) for g in b.groups],
        )
        for b in figures.breakdowns
        if b.groups
    ]
    busiest = max((n for hours in figures.arrivals for n in hours), default=0)
    return _PAGES.get_template("report.html.j2").render(
        title=f"Report {_label(figures, names)}",
        total=[(c.name, readable(c, figures.total)) for c in COLUMNS],
        brief=[heading for _, heading in BRIEF],
        breakdowns=breakdowns,
        arrivals=list(zip(WEEKDAYS, figures.arrivals, strict=True)),
        busiest=busiest,
    )
