"""kpi: the desk's figures over a period, each defined once (README, "Reports"), computed by the
database.

Every figure is an SQL aggregate over the case history (the cases' never-cleared report columns
and the status changes): counts and sums per group, medians and 90th percentiles by window
functions, so no case row is loaded into Python however long the history. The result is plain,
frozen data that the `report` command, the report mail and the dashboard all render.

A period is a span of local dates; each department's share of it runs from midnight to midnight
in that department's time zone (its business-hours calendar's), as do the weekday and hour of
arrival.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
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
    distinct,
    false,
    func,
    literal,
    or_,
    select,
    true,
)
from sqlalchemy import Integer as SqlInteger
from sqlalchemy.sql import Select

from mailrouter.errors import ReportError
from mailrouter.plan import SENSITIVE_SUBJECT
from mailrouter.store import CASE, CUSTOMER, STATUS_CHANGE
from mailrouter.vocabulary import FINISHED, WAITING_ON_US, CaseStatus, PeriodName

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
    """SLA targets settled in the period: met within their business time, or not."""

    met: int
    missed: int

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
    total = _groups(bind, scope, literal("")).get("") or _group("", {}, None, None, {})
    breakdowns = []
    for dimension in dimensions:
        groups = sorted(
            _groups(bind, scope, _KEYS[dimension]).values(), key=lambda g: (-g.kpis.created, g.key)
        )
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
    day = (_local_seconds(scope) / 86400 - (period.first - date(1970, 1, 1)).days).label("day")
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

    def within(self, column: ColumnElement[Any]) -> ColumnElement[bool]:
        """`column` falls in the period of its case's department."""
        return or_(
            *(
                and_(CASE.c.department == department, column >= start, column < end)
                for department, (start, end) in self.bounds.items()
            )
        )

    @property
    def ends(self) -> dict[str, datetime]:
        """Per department, the moment the backlog is counted at: the period's end, or now."""
        return {department: min(end, self.now) for department, (_, end) in self.bounds.items()}

    def before_end(self, column: ColumnElement[Any]) -> ColumnElement[bool]:
        return or_(*(and_(CASE.c.department == d, column < end) for d, end in self.ends.items()))

    def per_department(self, values: Mapping[str, ColumnElement[Any]]) -> ColumnElement[Any]:
        return case(*((CASE.c.department == d, value) for d, value in values.items()))


def _count_if(condition: ColumnElement[bool]) -> ColumnElement[int]:
    return func.coalesce(func.sum(case((condition, 1), else_=0)), 0)


_EMPTY_DURATIONS = Durations(0, None, None)


def _groups(connection: Connection, scope: _Scope, key: ColumnElement[Any]) -> dict[str, Group]:
    """Every figure per value of `key`, in a handful of aggregate queries."""
    key = key.label("key")
    created = scope.within(CASE.c.created_at)
    answered = scope.within(CASE.c.first_response_at)
    resolved = scope.within(CASE.c.first_resolved_at)
    surveyed = scope.within(CASE.c.survey_sent_at)
    rated = scope.within(CASE.c.survey_answered_at)
    counts = (
        select(
            key,
            _count_if(created).label("created"),
            _count_if(and_(answered, CASE.c.first_response_met == true())).label("fr_met"),
            _count_if(and_(answered, CASE.c.first_response_met == false())).label("fr_missed"),
            _count_if(resolved).label("first_resolutions"),
            _count_if(and_(resolved, CASE.c.resolution_met == true())).label("res_met"),
            _count_if(and_(resolved, CASE.c.resolution_met == false())).label("res_missed"),
            _count_if(and_(resolved, CASE.c.first_contact_resolution == true())).label("fcr"),
            func.coalesce(func.sum(case((resolved, CASE.c.resolution_replies), else_=0)), 0).label("replies"),
            _count_if(surveyed).label("surveys_sent"),
            _count_if(and_(surveyed, CASE.c.satisfaction_score.is_not(None))).label("surveys_answered"),
        )
        .select_from(_SOURCE)
        .where(or_(created, answered, resolved, surveyed))
        .group_by(key)
    )
    rows: dict[str, dict[str, Any]] = {}
    for row in connection.execute(counts):
        rows[row.key] = dict(row._mapping)
    for row in connection.execute(_transitions(scope, key)):
        rows.setdefault(row.key, {}).update(row._mapping)
    scores: dict[str, list[int]] = {}
    for row in connection.execute(
        select(key, CASE.c.satisfaction_score, func.count().label("answers"))
        .select_from(_SOURCE)
        .where(rated, CASE.c.satisfaction_score.is_not(None))
        .group_by(key, CASE.c.satisfaction_score)
    ):
        if row.satisfaction_score in SCORES:
            scores.setdefault(row.key, [0] * len(SCORES))[row.satisfaction_score - 1] = row.answers
    backlog = _backlog(connection, scope, key)
    durations = {
        column: _percentiles(connection, scope, key, anchor, column)
        for anchor, column in (
            (CASE.c.first_response_at, CASE.c.first_response_seconds),
            (CASE.c.first_response_at, CASE.c.first_response_business_seconds),
            (CASE.c.first_resolved_at, CASE.c.resolution_seconds),
            (CASE.c.first_resolved_at, CASE.c.resolution_business_seconds),
        )
    }
    keys = set(rows) | set(scores) | set(backlog)
    return {k: _group(k, rows.get(k, {}), scores.get(k), backlog.get(k), durations) for k in keys}


def _group(
    key: str,
    row: Mapping[str, Any],
    scores: list[int] | None,
    backlog: list[int] | None,
    durations: Mapping[Any, Mapping[str, Durations]],
) -> Group:
    def number(name: str) -> int:
        return int(row.get(name) or 0)

    def timing(calendar: Any, business: Any) -> Timing:
        return Timing(
            durations.get(calendar, {}).get(key, _EMPTY_DURATIONS),
            durations.get(business, {}).get(key, _EMPTY_DURATIONS),
        )

    distribution = tuple(scores or [0] * len(SCORES))
    answers = sum(distribution)
    kpis = Kpis(
        created=number("created"),
        reopened=number("reopened"),
        resolved=number("resolved"),
        closed=number("closed"),
        backlog=tuple(backlog or [0] * len(AGE_BANDS)),
        first_response=timing(CASE.c.first_response_seconds, CASE.c.first_response_business_seconds),
        resolution=timing(CASE.c.resolution_seconds, CASE.c.resolution_business_seconds),
        sla_first_response=Compliance(number("fr_met"), number("fr_missed")),
        sla_resolution=Compliance(number("res_met"), number("res_missed")),
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


def _transitions(scope: _Scope, key: ColumnElement[Any]) -> Select[Any]:
    """Cases resolved (from an unfinished status), closed, and reopened in the period."""
    to_finished = and_(
        STATUS_CHANGE.c.to_status.in_(list(FINISHED)), STATUS_CHANGE.c.from_status.not_in(list(FINISHED))
    )
    reopened = and_(
        STATUS_CHANGE.c.from_status.in_(list(FINISHED)), STATUS_CHANGE.c.to_status.not_in(list(FINISHED))
    )
    changed = STATUS_CHANGE.c.case_id

    def cases(condition: ColumnElement[bool]) -> ColumnElement[int]:
        return func.count(distinct(case((condition, changed))))

    return (
        select(
            key,
            cases(to_finished).label("resolved"),
            cases(STATUS_CHANGE.c.to_status == CaseStatus.CLOSED).label("closed"),
            cases(reopened).label("reopened"),
        )
        .select_from(STATUS_CHANGE.join(_SOURCE, CASE.c.id == STATUS_CHANGE.c.case_id))
        .where(scope.within(STATUS_CHANGE.c.at))
        .group_by(key)
    )


def _backlog(connection: Connection, scope: _Scope, key: ColumnElement[Any]) -> dict[str, list[int]]:
    """Cases waiting on us or the customer at the period's end, by age then. A case never
    finished before the end is open at it; a case finished before it is open only if it was
    reopened since, which its last status change before the end tells (reopened cases are few,
    so only theirs are looked up)."""
    end = scope.ends
    # The bands' bounds: at most 1 day old is band 0, older than 30 days the last.
    band = scope.per_department(
        {
            d: case(
                *(
                    (CASE.c.created_at > moment - AGE_BANDS[index + 1][1], index)
                    for index in range(len(AGE_BANDS) - 1)
                ),
                else_=len(AGE_BANDS) - 1,
            )
            for d, moment in end.items()
        }
    ).label("band")
    unfinished = or_(CASE.c.first_resolved_at.is_(None), ~scope.before_end(CASE.c.first_resolved_at))
    reopened_before_end = (
        select(STATUS_CHANGE.c.case_id)
        .where(
            STATUS_CHANGE.c.from_status.in_(list(FINISHED)),
            STATUS_CHANGE.c.to_status.not_in(list(FINISHED)),
            or_(*(STATUS_CHANGE.c.at < moment for moment in end.values())),
        )
        .distinct()
    )
    last_change = STATUS_CHANGE.alias("last_change")
    status_at_end = (
        select(last_change.c.to_status)
        .where(
            last_change.c.case_id == CASE.c.id,
            scope.per_department({d: last_change.c.at < moment for d, moment in end.items()}),
        )
        .order_by(last_change.c.at.desc(), last_change.c.id.desc())
        .limit(1)
        .scalar_subquery()
    )
    open_again = and_(CASE.c.id.in_(reopened_before_end), status_at_end.in_(list(WAITING_ON_US)))
    found: dict[str, list[int]] = {}
    for condition in (unfinished, open_again):
        statement = (
            select(key, band, func.count().label("cases"))
            .select_from(_SOURCE)
            .where(scope.before_end(CASE.c.created_at), condition)
            .group_by(key, band)
        )
        for row in connection.execute(statement):
            found.setdefault(row.key, [0] * len(AGE_BANDS))[row.band] += row.cases
    return found


def _percentiles(
    connection: Connection,
    scope: _Scope,
    key: ColumnElement[Any],
    anchor: ColumnElement[Any],
    column: ColumnElement[Any],
) -> dict[str, Durations]:
    """Median and 90th percentile of `column` over the cases whose `anchor` falls in the period,
    per key: the value at rank ceil(p·n/100) in ascending order, picked by window functions."""
    ranked = (
        select(
            key,
            column.label("value"),
            func.row_number().over(partition_by=key, order_by=column).label("rank"),
            func.count().over(partition_by=key).label("n"),
        )
        .select_from(_SOURCE)
        .where(scope.within(anchor), column.is_not(None))
        .subquery()
    )
    # Floor division: `/` is true division in SQLAlchemy, and PostgreSQL rounds the cast of it.
    wanted = [(ranked.c.n * p + 99) // 100 for p in PERCENTILES]
    picked: dict[str, dict[int, float]] = {}
    counts: dict[str, int] = {}
    for row in connection.execute(
        select(ranked.c.key, ranked.c.value, ranked.c.rank, ranked.c.n).where(
            or_(*(ranked.c.rank == rank for rank in wanted))
        )
    ):
        counts[row.key] = row.n
        for p in PERCENTILES:
            if row.rank == (row.n * p + 99) // 100:
                picked.setdefault(row.key, {})[p] = float(row.value)
    return {k: Durations(n, picked[k].get(50), picked[k].get(90)) for k, n in counts.items()}


def _arrivals(connection: Connection, scope: _Scope) -> tuple[tuple[int, ...], ...]:
    """Cases created per local weekday and hour: seconds since the epoch in UTC, plus the zone's
    offset at that instant (a CASE over the offset changes the period contains), divided out."""
    local = _local_seconds(scope)
    # 1970-01-01 was a Thursday: day number + 3, modulo 7, counts from Monday.
    weekday = ((local / 86400 + 3) % 7).label("weekday")
    hour = ((local % 86400) / 3600).label("hour")
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
