"""Business-time arithmetic, against answers computed by hand from a calendar."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from mailrouter.businesshours import BusinessHours, always_open, hours_of, parse_openings
from mailrouter.errors import ConfigError

OSLO = ZoneInfo("Europe/Oslo")
STOCKHOLM = ZoneInfo("Europe/Stockholm")
WORKDAYS = ["08:00-16:00"] * 5 + ["", ""]


def oslo(year: int, month: int, day: int, hour: int, minute: int) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=OSLO)


def norway(closed_days: frozenset[date] = frozenset()) -> BusinessHours:
    return hours_of("Europe/Oslo", WORKDAYS, country="NO", closed_days=closed_days)


def test_adding_within_one_day() -> None:
    hours = hours_of("Europe/Oslo", WORKDAYS)
    assert hours.add(oslo(2026, 5, 6, 9, 0), timedelta(hours=4)) == oslo(2026, 5, 6, 13, 0)


def test_adding_across_a_weekend_skips_saturday_and_sunday() -> None:
    hours = hours_of("Europe/Oslo", WORKDAYS)
    # Friday 15:00 + 3h: one hour on Friday, two on Monday from 08:00.
    assert hours.add(oslo(2026, 5, 8, 15, 0), timedelta(hours=3)) == oslo(2026, 5, 11, 10, 0)


def test_an_instant_outside_hours_starts_counting_at_the_next_opening() -> None:
    hours = hours_of("Europe/Oslo", WORKDAYS)
    assert hours.add(oslo(2026, 5, 9, 12, 0), timedelta(minutes=30)) == oslo(2026, 5, 11, 8, 30)
    assert hours.add(oslo(2026, 5, 6, 6, 0), timedelta(hours=1)) == oslo(2026, 5, 6, 9, 0)


def test_elapsed_across_a_weekend_counts_only_open_hours() -> None:
    hours = hours_of("Europe/Oslo", WORKDAYS)
    # Friday 14:00 to Monday 10:00: two hours each side of the weekend.
    assert hours.elapsed(oslo(2026, 5, 8, 14, 0), oslo(2026, 5, 11, 10, 0)) == timedelta(hours=4)
    assert hours.elapsed(oslo(2026, 5, 11, 10, 0), oslo(2026, 5, 8, 14, 0)) == timedelta(hours=-4)


def test_norwegian_constitution_day_is_closed() -> None:
    hours = norway()
    # Tuesday 16 May 2028 15:30 + 1h: half an hour on Tuesday, Wednesday 17 May is closed.
    assert hours.add(oslo(2028, 5, 16, 15, 30), timedelta(hours=1)) == oslo(2028, 5, 18, 8, 30)
    assert hours.closed_because(date(2028, 5, 17)) == "Constitution Day"
    assert hours.elapsed(oslo(2028, 5, 16, 12, 0), oslo(2028, 5, 18, 12, 0)) == timedelta(hours=8)


def test_without_a_country_a_holiday_is_an_ordinary_day() -> None:
    hours = hours_of("Europe/Oslo", WORKDAYS)
    assert hours.add(oslo(2028, 5, 16, 15, 30), timedelta(hours=1)) == oslo(2028, 5, 17, 8, 30)


def test_ascension_day_is_a_movable_holiday() -> None:
    hours = norway()
    # Wednesday 13 May 2026 15:00 + 2h: Thursday 14 May 2026 is Ascension Day.
    assert hours.add(oslo(2026, 5, 13, 15, 0), timedelta(hours=2)) == oslo(2026, 5, 15, 9, 0)


def test_swedish_midsummer_eve_is_closed_with_the_de_facto_holidays() -> None:
    days = ["08:00-17:00"] * 5 + ["", ""]
    de_facto = hours_of("Europe/Stockholm", days, country="SE", categories=("public", "de_facto"))
    public = hours_of("Europe/Stockholm", days, country="SE")
    start = datetime(2026, 6, 18, 16, 0, tzinfo=STOCKHOLM)  # Thursday before Midsummer
    # Friday 19 June is Midsummer Eve, Saturday 20 June Midsummer Day: back on Monday 22 June.
    assert de_facto.add(start, timedelta(hours=2)) == datetime(2026, 6, 22, 9, 0, tzinfo=STOCKHOLM)
    assert public.add(start, timedelta(hours=2)) == datetime(2026, 6, 19, 9, 0, tzinfo=STOCKHOLM)
    assert de_facto.closed_because(date(2026, 6, 19)) == "Midsummer Eve"
    assert public.closed_because(date(2026, 6, 20)) == "Midsummer Day"


@pytest.mark.parametrize(
    ("country", "day", "name"),
    [
        ("DK", date(2026, 4, 2), "Maundy Thursday"),
        ("FI", date(2026, 12, 6), "Independence Day"),
        ("FI", date(2026, 6, 19), "Midsummer Eve"),
        ("SE", date(2026, 6, 6), "National Day"),
    ],
)
def test_danish_finnish_and_swedish_holidays_are_known(country: str, day: date, name: str) -> None:
    assert hours_of("UTC", WORKDAYS, country=country).closed_because(day) == name


def test_extra_closed_days_from_the_config() -> None:
    hours = norway(closed_days=frozenset({date(2026, 12, 24)}))
    # Wednesday 23 Dec 15:00 + 2h: 24 Dec closed by config, 25 Dec Christmas, 26-27 the weekend.
    assert hours.add(oslo(2026, 12, 23, 15, 0), timedelta(hours=2)) == oslo(2026, 12, 28, 9, 0)
    assert hours.closed_because(date(2026, 12, 24)) == "closed in the config"


def test_spring_forward_day_has_23_hours_and_autumn_back_25() -> None:
    hours = always_open("Europe/Oslo")
    assert hours.elapsed(oslo(2026, 3, 29, 0, 0), oslo(2026, 3, 30, 0, 0)) == timedelta(hours=23)
    assert hours.elapsed(oslo(2026, 10, 25, 0, 0), oslo(2026, 10, 26, 0, 0)) == timedelta(hours=25)
    # Saturday noon + 24h of real time is Sunday 13:00 on the wall clock, after the change.
    assert hours.add(oslo(2026, 3, 28, 12, 0), timedelta(hours=24)) == oslo(2026, 3, 29, 13, 0)


def test_office_hours_across_the_dst_change_are_wall_clock_hours() -> None:
    hours = hours_of("Europe/Oslo", WORKDAYS)
    friday = oslo(2026, 3, 27, 15, 0)  # CET, 14:00 UTC
    monday = hours.add(friday, timedelta(hours=2))
    assert monday == oslo(2026, 3, 30, 9, 0)  # CEST
    assert monday.astimezone(UTC) == datetime(2026, 3, 30, 7, 0, tzinfo=UTC)
    assert hours.elapsed(friday, monday) == timedelta(hours=2)


def test_a_lunch_break_is_not_business_time() -> None:
    hours = hours_of("Europe/Oslo", ["08:00-11:30, 12:00-16:00"] * 5 + ["", ""])
    assert hours.add(oslo(2026, 5, 6, 11, 0), timedelta(hours=1)) == oslo(2026, 5, 6, 12, 30)
    assert hours.elapsed(oslo(2026, 5, 6, 11, 0), oslo(2026, 5, 6, 12, 30)) == timedelta(hours=1)


def test_add_and_elapsed_agree() -> None:
    hours = norway()
    start = oslo(2026, 5, 13, 10, 17)
    for minutes in (1, 59, 480, 481, 2000, 10000):
        due = hours.add(start, timedelta(minutes=minutes))
        assert hours.elapsed(start, due) == timedelta(minutes=minutes)


def test_opening_hours_text() -> None:
    assert parse_openings("") == ()
    assert len(parse_openings("00:00-24:00")) == 1
    for bad in ("8-16", "16:00-08:00", "08:00-12:00, 11:00-16:00", "08:00"):
        with pytest.raises(ValueError):
            parse_openings(bad)


def test_never_open_is_a_config_error() -> None:
    with pytest.raises(ConfigError):
        hours_of("UTC", [""] * 7)


def test_naive_instants_are_refused() -> None:
    with pytest.raises(ValueError):
        always_open().add(datetime(2026, 1, 1), timedelta(hours=1))


def test_open_days_before_skips_the_weekend() -> None:
    hours = hours_of("Europe/Oslo", WORKDAYS)
    # Tuesday 12 May 2026 10:00, two open days back: Monday, then Friday 8 May, at 10:00.
    assert hours.open_days_before(oslo(2026, 5, 12, 10, 0), 2) == oslo(2026, 5, 8, 10, 0)
    assert hours.open_days_before(oslo(2026, 5, 12, 10, 0), 0) == oslo(2026, 5, 12, 10, 0)


def test_open_days_before_skips_a_holiday() -> None:
    # Thursday 18 May 2028, one open day back: Wednesday 17 May is Constitution Day.
    assert norway().open_days_before(oslo(2028, 5, 18, 9, 0), 1) == oslo(2028, 5, 16, 9, 0)
