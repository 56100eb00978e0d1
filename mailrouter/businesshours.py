"""businesshours: time that counts towards an SLA target, in a department's own calendar.

A department is open in its time zone's wall-clock hours on its open weekdays, and closed on its
country's public holidays (the maintained `holidays` library knows them, Easter and Midsummer
included, year by year) and on the extra days its config closes. Every opening interval is
turned into UTC instants before anything is counted, so a day on which the clocks change is
as long as it really is, and arithmetic is exact to the microsecond.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import holidays

from mailrouter.errors import ConfigError

# Arithmetic looks at most this far ahead for open time: a calendar closed for ten years is a
# configuration error, not a wait.
HORIZON_DAYS = 3660
MIDNIGHT = time(0, 0)


@dataclass(frozen=True)
class Opening:
    """One opening interval of a weekday, in wall-clock time; `closes` None means midnight after."""

    opens: time
    closes: time | None


@dataclass(frozen=True)
class BusinessHours:
    zone: ZoneInfo
    # Monday first, as date.weekday() counts: each day's opening intervals, in order.
    week: tuple[tuple[Opening, ...], ...]
    closed_days: frozenset[date] = frozenset()
    country: str = ""
    subdivision: str = ""
    categories: tuple[str, ...] = ("public",)
    _holidays: holidays.HolidayBase | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if len(self.week) != 7:
            raise ConfigError("business hours need seven weekdays")
        if not any(self.week):
            raise ConfigError("business hours are never open")
        if self.country and self._holidays is None:
            try:
                calendar = holidays.country_holidays(
                    self.country,
                    subdiv=self.subdivision or None,
                    categories=self.categories,
                    language="en_US",
                )
            except (NotImplementedError, KeyError, ValueError) as exc:
                raise ConfigError(f"holidays {self.country!r}: {exc}") from None
            object.__setattr__(self, "_holidays", calendar)

    def closed_because(self, day: date) -> str | None:
        """Why a whole day is closed (a holiday's name, or the config's closing), or None."""
        if day in self.closed_days:
            return "closed in the config"
        if self._holidays is not None and day in self._holidays:
            return str(self._holidays.get(day))
        return None

    def _intervals(self, day: date) -> Iterator[tuple[datetime, datetime]]:
        """The day's opening intervals as UTC instants."""
        if self.closed_because(day) is not None:
            return
        for opening in self.week[day.weekday()]:
            start = datetime.combine(day, opening.opens, self.zone)
            if opening.closes is None:
                end = datetime.combine(day + timedelta(days=1), MIDNIGHT, self.zone)
            else:
                end = datetime.combine(day, opening.closes, self.zone)
            yield start.astimezone(UTC), end.astimezone(UTC)

    def _from(self, instant: datetime) -> Iterator[tuple[datetime, datetime]]:
        """Opening intervals from the one around `instant` on, clipped to start at it."""
        day = instant.astimezone(self.zone).date() - timedelta(days=1)
        for offset in range(HORIZON_DAYS):
            for start, end in self._intervals(day + timedelta(days=offset)):
                if end > instant:
                    yield max(start, instant), end
        raise ConfigError(f"business hours have no open time within {HORIZON_DAYS} days of {instant}")

    def add(self, instant: datetime, duration: timedelta) -> datetime:
        """The instant at which `duration` of business time from `instant` has passed."""
        _aware(instant)
        remaining = duration
        if remaining <= timedelta(0):
            return instant
        for start, end in self._from(instant):
            if end - start >= remaining:
                return start + remaining
            remaining -= end - start
        raise AssertionError("unreachable: _from raises past its horizon")

    def is_open_day(self, day: date) -> bool:
        return bool(self.week[day.weekday()]) and self.closed_because(day) is None

    def open_days_before(self, instant: datetime, days: int) -> datetime:
        """The same wall-clock time `days` open days before `instant`: whatever happened before
        it has waited that many business days (a Friday's mail, on Tuesday, two)."""
        _aware(instant)
        local = instant.astimezone(self.zone)
        day, counted = local.date(), 0
        for _ in range(HORIZON_DAYS):
            if counted == days:
                return datetime.combine(day, local.time().replace(tzinfo=None), self.zone).astimezone(UTC)
            day -= timedelta(days=1)
            counted += self.is_open_day(day)
        raise ConfigError(f"business hours have no {days} open days within {HORIZON_DAYS} days of {instant}")

    def elapsed(self, start: datetime, end: datetime) -> timedelta:
        """Business time between two instants; negative when `end` comes first."""
        _aware(start)
        _aware(end)
        if end < start:
            return -self.elapsed(end, start)
        total = timedelta(0)
        if end == start:
            return total
        for open_from, open_until in self._from(start):
            if open_from >= end:
                break
            total += min(open_until, end) - open_from
        return total


def _aware(instant: datetime) -> None:
    if instant.tzinfo is None:
        raise ValueError(f"business time needs an aware instant, not {instant}")


WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")


def parse_openings(text: str) -> tuple[Opening, ...]:
    """ "08:00-16:00", several joined by commas ("08:00-11:30, 12:00-16:00"), "24:00" as the
    day's end, and "" for closed."""
    openings: list[Opening] = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        opens_text, dash, closes_text = part.partition("-")
        if not dash:
            raise ValueError(f"expected HH:MM-HH:MM, not {part!r}")
        opens = _clock(opens_text)
        closes = None if closes_text.strip() == "24:00" else _clock(closes_text)
        if opens is None or (closes is not None and closes <= opens):
            raise ValueError(f"{part!r} closes before it opens")
        if openings and (openings[-1].closes is None or opens < openings[-1].closes):
            raise ValueError(f"{part!r} overlaps the interval before it")
        openings.append(Opening(opens, closes))
    return tuple(openings)


def _clock(text: str) -> time | None:
    try:
        return time.fromisoformat(text.strip())
    except ValueError:
        if text.strip() == "24:00":
            return None
        raise ValueError(f"expected a time of day HH:MM, not {text.strip()!r}") from None


def always_open(zone: str = "UTC") -> BusinessHours:
    """Every hour of every day, no holidays: where no business hours are configured."""
    return BusinessHours(ZoneInfo(zone), tuple((Opening(MIDNIGHT, None),) for _ in WEEKDAYS))


def hours_of(
    zone: str,
    days: Sequence[str],
    *,
    closed_days: frozenset[date] = frozenset(),
    country: str = "",
    subdivision: str = "",
    categories: tuple[str, ...] = ("public",),
) -> BusinessHours:
    """Business hours from their config text: a zone name and seven days' openings, Monday first."""
    return BusinessHours(
        ZoneInfo(zone),
        tuple(parse_openings(day) for day in days),
        closed_days,
        country,
        subdivision,
        categories,
    )
