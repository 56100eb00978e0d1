"""kpi: the desk's figures over a period, each defined once (README, "Reports"), computed by the
database.

Every figure is an SQL aggregate over the case history (the cases' never-cleared report columns
and the status changes): counts and sums per group, medians and 90th percentiles by percentile
aggregates, so no case row is loaded into Python however long the history. The result is plain,
frozen data that the `report` command, the report mail and the dashboard all render.

A period is a span of local dates; each department's share of it runs from midnight to midnight
in that department's time zone (its business-hours calendar's), as do the weekday and hour of
arrival.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from enum import StrEnum
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import (
    ColumnElement,
    Connection,
    Engine,
    and_,
    case,
    cast,
    false,
    func,
    literal,
    literal_column,
    or_,
    select,
    text,
    true,
    union_all,
)
from sqlalchemy import Integer as SqlInteger

from mailrouter.errors import ReportError
from mailrouter.models import CASE, CUSTOMER, NEXT_RESPONSE, STATUS_CHANGE
from mailrouter.vocabulary import FINISHED, SENSITIVE_SUBJECT, WAITING_ON_US, CaseStatus, PeriodName

PERCENTILES = (50, 90)
TOP_CUSTOMERS = 10
# Backlog age bands: (label, at least this old); each band runs up to the next one's bound.
AGE_BANDS: tuple[tuple[str, timedelta], ...] = (
    ("< 1 day", timedelta(0)),
    ("1-3 days", timedelta(days=1)),
    ("3-7 days", timedelta(days=3)),
    ("7-30 days", timedelta(days=7)),
    ("> 30 days", timedelta(days=30)),
)
SCORES = (1, 2, 3, 4, 5)


class Dimension(StrEnum):
    """What the figures are broken down by."""

    DEPARTMENT = "department"
    CATEGORY = "category"
    PRIORITY = "priority"
    GROUP = "group"
    ASSIGNEE = "assignee"
    ORGANISATION = "organisation"
    CUSTOMER = "customer"  # the top customers by cases created in the period


PERIODS = tuple(PeriodName)


@dataclass(frozen=True)
class Period:
    """Local dates, `first` to `last` inclusive; `name` as asked for (a PERIODS name or "from-to")."""

    first: date
    last: date
    name: str

    def bounds(self, zone: ZoneInfo) -> tuple[datetime, datetime]:
        """[start, end) in UTC: midnight before `first` to midnight after `last`, in `zone`."""
        start = datetime.combine(self.first, time(0), zone)
        end = datetime.combine(self.last + timedelta(days=1), time(0), zone)
        return start.astimezone(UTC), end.astimezone(UTC)

    def previous(self) -> Period:
        """The period just before, as long (a calendar month before a calendar month)."""
        if self.first.day == 1 and (self.last + timedelta(days=1)).day == 1:
            months = (self.last.year - self.first.year) * 12 + self.last.month - self.first.month + 1
            last = self.first - timedelta(days=1)
            year, month = divmod(last.year * 12 + last.month - 1 - (months - 1), 12)
            return Period(date(year, month + 1, 1), last, f"before {self.name}")
        length = self.last - self.first + timedelta(days=1)
        return Period(self.first - length, self.first - timedelta(days=1), f"before {self.name}")


def named_period(name: str, today: date) -> Period:
    """A PERIODS name as dates around `today` (weeks begin on Monday)."""
    week = today - timedelta(days=today.weekday())
    month = today.replace(day=1)
    last_month = (month - timedelta(days=1)).replace(day=1)
    spans = {
        "today": (today, today),
        "yesterday": (today - timedelta(days=1), today - timedelta(days=1)),
        "this-week": (week, week + timedelta(days=6)),
        "last-week": (week - timedelta(days=7), week - timedelta(days=1)),
        "this-month": (month, _month_end(month)),
        "last-month": (last_month, month - timedelta(days=1)),
        "this-year": (date(today.year, 1, 1), date(today.year, 12, 31)),
        "last-year": (date(today.year - 1, 1, 1), date(today.year - 1, 12, 31)),
    }
    if name not in spans:
        raise ReportError(f"no period {name!r}: one of {', '.join(PERIODS)}, or --from and --to")
    first, last = spans[name]
    return Period(first, last, name)


def dates_period(first: date, last: date) -> Period:
    if last < first:
        raise ReportError(f"the period ends ({last}) before it begins ({first})")
    return Period(first, last, f"{first.isoformat()}..{last.isoformat()}")


def _month_end(first: date) -> date:
    return (first.replace(day=28) + timedelta(days=4)).replace(day=1) - timedelta(days=1)


# --- the figures ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Durations:
    """Seconds: how many, the median and the 90th percentile (nearest rank); None when none."""

    count: int
    median: float | None
    p90: float | None


@dataclass(frozen=True)
class Timing:
    calendar: Durations
    business: Durations  # the department's opening hours, less the time waiting on the customer


@dataclass(frozen=True)
class Compliance:
    """One SLA target: settled in the period, within its business time (met) or not (missed);
    and not yet settled at the period's end (running)."""

    met: int
    missed: int
    running: int

    @property
    def rate(self) -> float | None:
        settled = self.met + self.missed
        return self.met / settled if settled else None


@dataclass(frozen=True)
class Satisfaction:
    surveys_sent: int  # in the period
    surveys_answered: int  # of those, answered by now
    answers: int  # answers received in the period
    mean: float | None  # of the answers received in the period
    distribution: tuple[int, ...]  # answers per score, 1 to 5

    @property
    def response_rate(self) -> float | None:
        return self.surveys_answered / self.surveys_sent if self.surveys_sent else None


@dataclass(frozen=True)
class Kpis:
    created: int
    reopened: int
    resolved: int
    closed: int
    backlog: tuple[int, ...]  # open at the period's end, per AGE_BANDS
    first_response: Timing
    resolution: Timing
    sla_first_response: Compliance
    sla_next_response: Compliance
    sla_resolution: Compliance
    first_contact_resolutions: int  # of the cases first resolved in the period
    first_resolutions: int  # cases first resolved in the period
    agent_replies: int  # answers the cases first resolved in the period had by then

    @property
    def backlog_total(self) -> int:
        return sum(self.backlog)

    @property
    def reopen_rate(self) -> float | None:
        return self.reopened / self.resolved if self.resolved else None

    @property
    def first_contact_resolution_rate(self) -> float | None:
        return self.first_contact_resolutions / self.first_resolutions if self.first_resolutions else None

    @property
    def replies_per_case(self) -> float | None:
        return self.agent_replies / self.first_resolutions if self.first_resolutions else None


@dataclass(frozen=True)
class Group:
    key: str  # "" where the cases have none (no category, nobody assigned)
    kpis: Kpis
    satisfaction: Satisfaction


@dataclass(frozen=True)
class Breakdown:
    dimension: Dimension
    groups: tuple[Group, ...]  # by cases created, most first


@dataclass(frozen=True)
class Figures:
    period: Period
    departments: tuple[str, ...]
    total: Group
    breakdowns: tuple[Breakdown, ...]
    # Cases created, by weekday (Monday first) and hour of arrival in the department's time zone.
    arrivals: tuple[tuple[int, ...], ...]

    def breakdown(self, dimension: Dimension) -> Breakdown:
        return next(b for b in self.breakdowns if b.dimension == dimension)


def figures(
    bind: Engine | Connection,
    period: Period,
    departments: Mapping[str, ZoneInfo],
    dimensions: Sequence[Dimension] = tuple(Dimension),
    now: datetime | None = None,
) -> Figures:
    """The figures of the period for these departments (each with its time zone); the backlog
    of a period not yet over is today's (`now`)."""
    if not departments:
        raise ReportError("no department to report on")
    if isinstance(bind, Engine):
        with bind.connect() as connection:
            return figures(connection, period, departments, dimensions, now)
    scope = _scope(bind, period, departments, now)
    found = _breakdowns(bind, scope, dimensions)
    total = found[_TOTAL].get("") or _group("", {}, {})
    breakdowns = []
    for dimension in dimensions:
        groups = sorted(found[dimension.value].values(), key=lambda g: (-g.kpis.created, g.key))
        if dimension == Dimension.CUSTOMER:
            groups = groups[:TOP_CUSTOMERS]
        breakdowns.append(Breakdown(dimension, tuple(groups)))
    return Figures(
        period=period,
        departments=tuple(departments),
        total=total,
        breakdowns=tuple(breakdowns),
        arrivals=_arrivals(bind, scope),
    )


def daily_created(
    bind: Engine | Connection, period: Period, departments: Mapping[str, ZoneInfo]
) -> tuple[int, ...]:
    """Cases created on each local day of the period, first to last (the report's volume chart)."""
    if isinstance(bind, Engine):
        with bind.connect() as connection:
            return daily_created(connection, period, departments)
    scope = _scope(bind, period, departments, None)
    day = (_local_seconds(scope) // 86400 - (period.first - date(1970, 1, 1)).days).label("day")
    days = [0] * ((period.last - period.first).days + 1)
    for row in bind.execute(
        select(day, func.count().label("cases"))
        .select_from(CASE)
        .where(scope.within(CASE.c.created_at))
        .group_by(day)
    ):
        days[int(row.day)] += row.cases
    return tuple(days)


def first_response_bands(
    bind: Engine | Connection, period: Period, departments: Mapping[str, ZoneInfo], edges: Sequence[float]
) -> tuple[int, ...]:
    """Cases first answered in the period by the business seconds it took, one count per band
    from edges[i] to edges[i + 1] (the last band open-ended): the answer-time chart."""
    if isinstance(bind, Engine):
        with bind.connect() as connection:
            return first_response_bands(connection, period, departments, edges)
    scope = _scope(bind, period, departments, None)
    seconds = CASE.c.first_response_business_seconds
    band = case(*((seconds < edge, index) for index, edge in enumerate(edges[1:])), else_=len(edges) - 2)
    bands = [0] * (len(edges) - 1)
    for row in bind.execute(
        select(band.label("band"), func.count().label("cases"))
        .select_from(CASE)
        .where(scope.within(CASE.c.first_response_at), seconds.is_not(None))
        .group_by(band)
    ):
        bands[int(row.band)] += row.cases
    return tuple(bands)


# --- the SQL ----------------------------------------------------------------------------------

_SOURCE = CASE.outerjoin(CUSTOMER, CUSTOMER.c.id == CASE.c.customer_id)


def _unless_sensitive(key: ColumnElement[Any]) -> ColumnElement[Any]:
    """Who a case is about, except for a sensitive case: all of those are counted as one."""
    return case((CASE.c.sensitive, literal(SENSITIVE_SUBJECT)), else_=key)


_KEYS: dict[Dimension, ColumnElement[Any]] = {
    Dimension.DEPARTMENT: CASE.c.department,
    Dimension.CATEGORY: CASE.c.category,
    Dimension.PRIORITY: CASE.c.priority,
    Dimension.GROUP: CASE.c.group,
    Dimension.ASSIGNEE: CASE.c.assignee,
    Dimension.ORGANISATION: _unless_sensitive(func.coalesce(CUSTOMER.c.organisation, "")),
    Dimension.CUSTOMER: _unless_sensitive(func.coalesce(CUSTOMER.c.address, "")),
}


def _scope(
    connection: Connection, period: Period, departments: Mapping[str, ZoneInfo], now: datetime | None
) -> _Scope:
    return _Scope(
        connection.dialect.name,
        {d: period.bounds(z) for d, z in departments.items()},
        departments,
        now or datetime.now(UTC),
    )


@dataclass(frozen=True)
class _Scope:
    dialect: str
    bounds: Mapping[str, tuple[datetime, datetime]]  # per department: [start, end) in UTC
    zones: Mapping[str, ZoneInfo]
    now: datetime

    def span(self, column: ColumnElement[Any]) -> ColumnElement[bool]:
        """`column` falls between the earliest department's start and the latest one's end: a
        plain range its index answers."""
        return and_(
            column >= min(start for start, _ in self.bounds.values()),
            column < max(end for _, end in self.bounds.values()),
        )

    def within(self, column: ColumnElement[Any]) -> ColumnElement[bool]:
        """`column` falls in the period of its case's department. The span of all the
        departments' periods first, so that the column's index finds the candidates; then each
        set of departments that share a period (a time zone's)."""
        return and_(
            self.span(column),
            *self._departments_of(lambda start, end: and_(column >= start, column < end), self.bounds),
        )

    def _departments_of(
        self,
        condition: Callable[[datetime, datetime], ColumnElement[bool]],
        bounds: Mapping[str, tuple[datetime, datetime]],
    ) -> tuple[ColumnElement[bool], ...]:
        """The condition for each department's own bounds: none when all share the same (the
        span says it all), else one OR over the sets of departments that share bounds."""
        sharing = _sharing(bounds)
        if len(sharing) == 1:
            return (CASE.c.department.in_(next(iter(sharing.values()))),)
        return (
            or_(*(and_(CASE.c.department.in_(names), condition(*span)) for span, names in sharing.items())),
        )

    @property
    def ends(self) -> dict[str, datetime]:
        """Per department, the moment the backlog is counted at: the period's end, or now."""
        return {department: min(end, self.now) for department, (_, end) in self.bounds.items()}

    def before_end(self, column: ColumnElement[Any]) -> ColumnElement[bool]:
        ends = {d: (end, end) for d, end in self.ends.items()}
        return and_(
            column < max(self.ends.values()),
            *self._departments_of(lambda end, _: column < end, ends),
        )

    def per_department(self, values: Mapping[str, ColumnElement[Any]]) -> ColumnElement[Any]:
        return case(*((CASE.c.department == d, value) for d, value in values.items()))


def _sharing(bounds: Mapping[str, tuple[datetime, datetime]]) -> dict[tuple[datetime, datetime], list[str]]:
    """The departments by the bounds they share."""
    sharing: dict[tuple[datetime, datetime], list[str]] = {}
    for department, span in bounds.items():
        sharing.setdefault(span, []).append(department)
    return sharing


_EMPTY_DURATIONS = Durations(0, None, None)
# The status changes and durations the figures count.
_TO_FINISHED = and_(
    STATUS_CHANGE.c.to_status.in_(list(FINISHED)), STATUS_CHANGE.c.from_status.not_in(list(FINISHED))
)
_REOPENED = and_(
    STATUS_CHANGE.c.from_status.in_(list(FINISHED)), STATUS_CHANGE.c.to_status.in_(list(WAITING_ON_US))
)
# The durations, each counted for the cases whose anchor (the first answer, the first
# resolution) falls in the period: (name, anchor, column).
_MEASURES = (
    ("fr_calendar", "answered", CASE.c.first_response_seconds),
    ("fr_business", "answered", CASE.c.first_response_business_seconds),
    ("res_calendar", "resolved", CASE.c.resolution_seconds),
    ("res_business", "resolved", CASE.c.resolution_business_seconds),
)
# What puts a case among the period's: one of these moments in it.
_ANCHORS = (
    CASE.c.created_at,
    CASE.c.first_response_at,
    CASE.c.first_resolved_at,
    CASE.c.survey_sent_at,
    CASE.c.survey_answered_at,
)
_TOTAL = "total"  # the whole period, beside the dimensions


def _flag(condition: ColumnElement[bool]) -> ColumnElement[int]:
    return case((condition, 1), else_=0)


def _count_of(condition: ColumnElement[bool]) -> ColumnElement[int]:
    return func.coalesce(func.sum(_flag(condition)), 0)


def _constant(text: str, label: str) -> ColumnElement[str]:
    """A word of ours (a dimension's or a measure's name) as a constant of the statement."""
    return literal_column(f"'{text}'").label(label)


def _per_key(source: Any, names: Sequence[str], columns: Callable[[Any], list[ColumnElement[Any]]]) -> Any:
    """One SELECT for the whole and one per dimension over the common table `source` (whose
    key columns are k0, k1 …), each grouped by its key, joined by UNION ALL: one statement."""
    parts = [select(_constant(_TOTAL, "dimension"), _constant("", "key"), *columns(source))]
    for index, name in enumerate(names):
        key = source.c[f"k{index}"]
        # NULL: not one of the groups shown (the customers after the top ones)
        grouped = select(_constant(name, "dimension"), key.label("key"), *columns(source))
        parts.append(grouped.where(key.is_not(None)).group_by(key))
    return union_all(*parts)


def _key(connection: Connection, scope: _Scope, dimension: Dimension) -> ColumnElement[Any]:
    """What a dimension groups by; for customers only the top ones (most cases created in the
    period, ties to the first on record), the others NULL: thousands of customers' groups
    would cost more than all the rest of the report. The top ones are found once, not in each
    statement that groups by them."""
    if dimension != Dimension.CUSTOMER:
        return _KEYS[dimension]
    top = connection.scalars(
        select(CASE.c.customer_id)
        .where(scope.within(CASE.c.created_at), CASE.c.customer_id.is_not(None))
        .group_by(CASE.c.customer_id)
        .order_by(func.count().desc(), CASE.c.customer_id)
        .limit(TOP_CUSTOMERS)
    ).all()
    return case((CASE.c.customer_id.in_(top), _KEYS[dimension]), else_=None)


def _breakdowns(
    connection: Connection, scope: _Scope, dimensions: Sequence[Dimension]
) -> dict[str, dict[str, Group]]:
    """Every figure of the whole (under _TOTAL) and per value of each dimension, in four
    statements: the cases that count in the period, those open at its end, the status changes
    in it and the next-response clocks, each a common table read once and aggregated per
    dimension."""
    names = [d.value for d in dimensions]
    rows: dict[str, dict[str, dict[str, Any]]] = {name: {} for name in (_TOTAL, *names)}
    _nearest_rank_on(connection)
    if connection.dialect.name == "postgresql":
        # Compiling these wide statements just in time took PostgreSQL 7 s, running them 0.3 s.
        connection.execute(text("SET LOCAL jit = off"))
    keys = [_key(connection, scope, d).label(f"k{index}") for index, d in enumerate(dimensions)]
    for make in (_period_cases, _backlog, _transitions, _next_responses):
        statement = make(scope, keys, names)
        for row in connection.execute(statement):
            rows[row.dimension].setdefault(row.key, {}).update(row._mapping)

    def durations(row: Mapping[str, Any]) -> dict[str, Durations]:
        found = {}
        for measure, _, _ in _MEASURES:
            median, p90 = _spread_of(row.get(f"{measure}_spread"))
            found[measure] = Durations(int(row.get(f"{measure}_n") or 0), median, p90)
        return found

    return {
        dimension: {key: _group(key, row, durations(row)) for key, row in groups.items() if key is not None}
        for dimension, groups in rows.items()
    }


def _period_cases(scope: _Scope, keys: Sequence[ColumnElement[Any]], names: Sequence[str]) -> Any:
    """Per key: the cases created, first answered and first resolved (with their SLA outcome
    and first-contact resolution), surveyed and rated in the period. The candidates are found by
    plain ranges of indexed columns; each case's flags and durations are worked out once, so
    that each key's sums add up plain columns."""
    anchored = {
        "created": scope.within(CASE.c.created_at),
        "answered": scope.within(CASE.c.first_response_at),
        "resolved": scope.within(CASE.c.first_resolved_at),
        "surveyed": scope.within(CASE.c.survey_sent_at),
        "rated": scope.within(CASE.c.survey_answered_at),
    }
    answered, resolved, surveyed = anchored["answered"], anchored["resolved"], anchored["surveyed"]
    counted = {
        "created": anchored["created"],
        "fr_met": and_(answered, CASE.c.first_response_met == true()),
        "fr_missed": and_(answered, CASE.c.first_response_met == false()),
        "first_resolutions": resolved,
        "res_met": and_(resolved, CASE.c.resolution_met == true()),
        "res_missed": and_(resolved, CASE.c.resolution_met == false()),
        "fcr": and_(resolved, CASE.c.first_contact_resolution == true()),
        "surveys_sent": surveyed,
        "surveys_answered": and_(surveyed, CASE.c.satisfaction_score.is_not(None)),
    }
    touched = (
        select(
            *keys,
            *(_flag(condition).label(name) for name, condition in counted.items()),
            case((resolved, CASE.c.resolution_replies), else_=0).label("replies"),
            case((anchored["rated"], CASE.c.satisfaction_score), else_=None).label("score"),
            *(case((anchored[anchor], column), else_=None).label(m) for m, anchor, column in _MEASURES),
        )
        .select_from(_SOURCE)
        .where(
            or_(*(scope.span(column) for column in _ANCHORS)),
            CASE.c.department.in_(list(scope.bounds)),
        )
        .cte("touched")
    )

    def columns(source: Any) -> list[ColumnElement[Any]]:
        return [
            *(func.sum(source.c[name]).label(name) for name in (*counted, "replies")),
            *(_count_of(source.c.score == score).label(f"score{score}") for score in SCORES),
            *(func.count(source.c[measure]).label(f"{measure}_n") for measure, _, _ in _MEASURES),
            *(
                _spread(scope.dialect, source.c[measure]).label(f"{measure}_spread")
                for measure, _, _ in _MEASURES
            ),
        ]

    return _per_key(touched, names, columns)


def _backlog(scope: _Scope, keys: Sequence[ColumnElement[Any]], names: Sequence[str]) -> Any:
    """Per key: the cases open at the period's end, by age band, and the SLA targets they had
    not settled by then (running). A case never finished before the end is open at it; one
    finished before it is open only if reopened since, which its last status change before the
    end tells (reopened cases are few: only theirs are looked up). A period still running counts
    its backlog now (`now` being the present: the history holds nothing after it): the cases
    whose status is open, which the status index finds without reading their histories (the
    dashboard's today and this week). The candidates are named by their ids: as conditions
    beside the range of creation times, SQLite read every case created before the end."""
    ends = scope.ends
    unfinished = or_(CASE.c.first_resolved_at.is_(None), ~scope.before_end(CASE.c.first_resolved_at))
    if all(end == scope.now for end in ends.values()):
        open_at_end: ColumnElement[bool] = CASE.c.id.in_(
            select(CASE.c.id).where(CASE.c.status.in_(list(WAITING_ON_US)))
        )
    else:
        # No DISTINCT: IN needs none, and with it SQLite read every status change in case order.
        reopened = select(STATUS_CHANGE.c.case_id).where(_REOPENED, STATUS_CHANGE.c.at < max(ends.values()))
        last_change = STATUS_CHANGE.alias("last_change")
        status_at_end = (
            select(last_change.c.to_status)
            .where(
                last_change.c.case_id == CASE.c.id,
                scope.per_department({d: last_change.c.at < end for d, end in ends.items()}),
            )
            .order_by(last_change.c.at.desc(), last_change.c.id.desc())
            .limit(1)
            .scalar_subquery()
        )
        open_again = and_(CASE.c.id.in_(reopened), status_at_end.in_(list(WAITING_ON_US)))
        candidates = union_all(
            select(CASE.c.id).where(CASE.c.first_resolved_at.is_(None)),
            select(CASE.c.id).where(CASE.c.first_resolved_at >= min(ends.values())),
            reopened,
        )
        open_at_end = and_(CASE.c.id.in_(candidates), or_(unfinished, open_again))
    # The bands' bounds: at most a day old is band 0, older than 30 days the last.
    band = scope.per_department(
        {
            d: case(
                *((CASE.c.created_at > end - AGE_BANDS[i + 1][1], i) for i in range(len(AGE_BANDS) - 1)),
                else_=len(AGE_BANDS) - 1,
            )
            for d, end in ends.items()
        }
    )
    # The targets a case open at the end had and had not settled by then.
    fr_unsettled = and_(
        CASE.c.first_response_due.is_not(None),
        or_(CASE.c.first_response_at.is_(None), ~scope.before_end(CASE.c.first_response_at)),
    )
    res_unsettled = and_(CASE.c.resolution_due.is_not(None), unfinished)
    open_cases = (
        select(
            *keys,
            band.label("band"),
            _flag(fr_unsettled).label("fr_running"),
            _flag(res_unsettled).label("res_running"),
        )
        .select_from(_SOURCE)
        .where(open_at_end, scope.before_end(CASE.c.created_at), CASE.c.department.in_(list(scope.bounds)))
        .cte("open_cases")
    )

    def columns(source: Any) -> list[ColumnElement[Any]]:
        return [
            *(_count_of(source.c.band == i).label(f"band{i}") for i in range(len(AGE_BANDS))),
            *(func.sum(source.c[name]).label(name) for name in ("fr_running", "res_running")),
        ]

    return _per_key(open_cases, names, columns)


def _transitions(scope: _Scope, keys: Sequence[ColumnElement[Any]], names: Sequence[str]) -> Any:
    """Per key: the cases resolved (from an unfinished status), closed, and reopened in the
    period. The status changes that can count, in the span (by the indexes of their kinds),
    are reduced to one row per case first, with each kind's flag per set of departments that
    share a period: the case's own department picks its flag once the case is joined, so no
    status change is looked up in the cases."""
    change = STATUS_CHANGE.c
    kinds = {
        "resolved": _TO_FINISHED,
        "closed": change.to_status == CaseStatus.CLOSED,
        "reopened": _REOPENED,
    }
    sharing = list(_sharing(scope.bounds).items())
    per_case = (
        select(
            change.case_id,
            *(
                func.max(_flag(and_(change.at >= start, change.at < end, condition))).label(f"{kind}{i}")
                for i, ((start, end), _) in enumerate(sharing)
                for kind, condition in kinds.items()
            ),
        )
        .where(
            or_(*(and_(scope.span(change.at), c) for c in (change.to_status.in_(list(FINISHED)), _REOPENED)))
        )
        .group_by(change.case_id)
        .subquery()
    )

    def flag(kind: str) -> ColumnElement[Any]:
        return case(
            *(
                (CASE.c.department.in_(departments), per_case.c[f"{kind}{i}"])
                for i, (_, departments) in enumerate(sharing)
            )
        )

    moved = (
        select(*keys, *(flag(kind).label(kind) for kind in kinds))
        .select_from(per_case.join(_SOURCE, CASE.c.id == per_case.c.case_id))
        .where(CASE.c.department.in_(list(scope.bounds)))
        .cte("moved")
    )

    def columns(source: Any) -> list[ColumnElement[Any]]:
        return [func.sum(source.c[kind]).label(kind) for kind in kinds]

    return _per_key(moved, names, columns)


def _next_responses(scope: _Scope, keys: Sequence[ColumnElement[Any]], names: Sequence[str]) -> Any:
    """Per key: the next-response clocks settled by an answer in the period, by the due time
    (met) or after it (missed), and those started before the period's end and not settled by
    then (running). The candidates: settled in the span, or started before its end and
    unsettled at its start."""
    clock = NEXT_RESPONSE.c
    settled = scope.within(clock.settled_at)
    ends = scope.ends
    running = and_(
        scope.before_end(clock.started_at),
        or_(clock.settled_at.is_(None), ~scope.before_end(clock.settled_at)),
    )
    candidates = or_(
        scope.span(clock.settled_at),
        and_(
            clock.started_at < max(ends.values()),
            or_(clock.settled_at.is_(None), clock.settled_at >= min(ends.values())),
        ),
    )
    clocks = (
        select(
            *keys,
            _flag(and_(settled, clock.met == true())).label("met"),
            _flag(and_(settled, clock.met == false())).label("missed"),
            _flag(running).label("running"),
        )
        .select_from(NEXT_RESPONSE.join(_SOURCE, CASE.c.id == clock.case_id))
        .where(candidates, CASE.c.department.in_(list(scope.bounds)))
        .cte("clocks")
    )

    def columns(source: Any) -> list[ColumnElement[Any]]:
        return [
            func.coalesce(func.sum(source.c[name]), 0).label(f"nr_{name}")
            for name in ("met", "missed", "running")
        ]

    return _per_key(clocks, names, columns)


def _spread(dialect: str, value: ColumnElement[Any]) -> ColumnElement[Any]:
    """The median and 90th percentile of `value` over the group, nearest rank (the value at rank
    ceil(p·n/100) in ascending order): PostgreSQL's percentile_disc, an aggregate of ours on
    SQLite (which has none); NULL when the group has no value."""
    if dialect == "postgresql":
        return func.percentile_disc(literal_column("ARRAY[0.5, 0.9]")).within_group(value)
    # FILTER: no call into Python for a case without a value (not answered in the period).
    return func.mailrouter_nearest_rank(value).filter(value.is_not(None))


def _spread_of(found: Any) -> tuple[float | None, float | None]:
    """(median, p90) from _spread's result: PostgreSQL's array, or our aggregate's text."""
    if found is None:
        return None, None
    median, p90 = found if isinstance(found, list) else (float(v) for v in str(found).split())
    return float(median), float(p90)


class _NearestRank:
    """SQLite aggregate: "median p90" of the non-NULL values, by nearest rank."""

    def __init__(self) -> None:
        self.values: list[float] = []

    def step(self, value: float | None) -> None:
        if value is not None:
            self.values.append(value)

    def finalize(self) -> str | None:
        if not self.values:
            return None
        self.values.sort()
        n = len(self.values)
        return " ".join(repr(self.values[(n * p + 99) // 100 - 1]) for p in PERCENTILES)


def _nearest_rank_on(connection: Connection) -> None:
    if connection.dialect.name == "sqlite":
        driver = connection.connection.driver_connection
        driver.create_aggregate("mailrouter_nearest_rank", 1, _NearestRank)  # type: ignore[union-attr]


def _group(key: str, row: Mapping[str, Any], durations: Mapping[str, Durations]) -> Group:
    def number(name: str) -> int:
        return int(row.get(name) or 0)

    def timing(calendar: str, business: str) -> Timing:
        return Timing(durations.get(calendar, _EMPTY_DURATIONS), durations.get(business, _EMPTY_DURATIONS))

    distribution = tuple(number(f"score{score}") for score in SCORES)
    answers = sum(distribution)
    kpis = Kpis(
        created=number("created"),
        reopened=number("reopened"),
        resolved=number("resolved"),
        closed=number("closed"),
        backlog=tuple(number(f"band{i}") for i in range(len(AGE_BANDS))),
        first_response=timing("fr_calendar", "fr_business"),
        resolution=timing("res_calendar", "res_business"),
        sla_first_response=Compliance(number("fr_met"), number("fr_missed"), number("fr_running")),
        sla_next_response=Compliance(number("nr_met"), number("nr_missed"), number("nr_running")),
        sla_resolution=Compliance(number("res_met"), number("res_missed"), number("res_running")),
        first_contact_resolutions=number("fcr"),
        first_resolutions=number("first_resolutions"),
        agent_replies=number("replies"),
    )
    satisfaction = Satisfaction(
        surveys_sent=number("surveys_sent"),
        surveys_answered=number("surveys_answered"),
        answers=answers,
        mean=sum(s * n for s, n in zip(SCORES, distribution, strict=True)) / answers if answers else None,
        distribution=distribution,
    )
    return Group(key, kpis, satisfaction)


def _arrivals(connection: Connection, scope: _Scope) -> tuple[tuple[int, ...], ...]:
    """Cases created per local weekday and hour: seconds since the epoch in UTC, plus the zone's
    offset at that instant (a CASE over the offset changes the period contains), divided out."""
    local = _local_seconds(scope)
    # 1970-01-01 was a Thursday: day number + 3, modulo 7, counts from Monday.
    weekday = ((local // 86400 + 3) % 7).label("weekday")
    hour = ((local % 86400) // 3600).label("hour")
    grid = [[0] * 24 for _ in range(7)]
    for row in connection.execute(
        select(weekday, hour, func.count().label("cases"))
        .select_from(CASE)
        .where(scope.within(CASE.c.created_at))
        .group_by(weekday, hour)
    ):
        grid[int(row.weekday)][int(row.hour)] += row.cases
    return tuple(tuple(day) for day in grid)


def _local_seconds(scope: _Scope) -> ColumnElement[int]:
    """CASE.created_at as seconds since the epoch on its department's local clock."""
    return scope.per_department(
        {
            d: _epoch(scope.dialect, CASE.c.created_at) + _offset(zone, *scope.bounds[d])
            for d, zone in scope.zones.items()
        }
    )


def _epoch(dialect: str, column: ColumnElement[Any]) -> ColumnElement[int]:
    if dialect == "sqlite":
        return cast(func.strftime("%s", column), SqlInteger)
    return cast(func.floor(func.extract("epoch", column)), SqlInteger)


def _offset(zone: ZoneInfo, start: datetime, end: datetime) -> ColumnElement[int]:
    """The zone's UTC offset in seconds at CASE.created_at, for instants in [start, end)."""
    changes = _offset_changes(zone, start, end)
    first = changes[0][1]
    if len(changes) == 1:
        return literal(first)
    return case(
        *((CASE.c.created_at < changes[i + 1][0], offset) for i, (_, offset) in enumerate(changes[:-1])),
        else_=changes[-1][1],
    )


def _offset_changes(zone: ZoneInfo, start: datetime, end: datetime) -> list[tuple[datetime, int]]:
    """(from, offset seconds) for each stretch of constant offset in [start, end)."""

    def offset(moment: datetime) -> int:
        shift = moment.astimezone(zone).utcoffset()
        return int(shift.total_seconds()) if shift is not None else 0

    changes = [(start, offset(start))]
    moment = start
    while moment < end:
        step = min(moment + timedelta(hours=6), end)
        if offset(step) != changes[-1][1]:
            low, high = moment, step  # the change lies in (low, high]: halve to the second
            while high - low > timedelta(seconds=1):
                middle = low + (high - low) / 2
                low, high = (middle, high) if offset(middle) == changes[-1][1] else (low, middle)
            changes.append((high.replace(microsecond=0), offset(step)))
        moment = step
    return changes
