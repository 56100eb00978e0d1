"""slots: a report's schedule in its own time zone, and the slot due at a moment within the grace."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from mailrouter import slots

HOURS_6 = timedelta(hours=6)


def test_monday_seven_in_oslo_is_six_utc_in_winter_and_five_in_summer():
    when = slots.trigger("mon 07:00", "Europe/Oslo")
    winter = slots.due(when, datetime(2026, 12, 7, 6, 30, tzinfo=UTC), HOURS_6)
    summer = slots.due(when, datetime(2026, 6, 1, 5, 30, tzinfo=UTC), HOURS_6)
    assert winter == datetime(2026, 12, 7, 6, 0, tzinfo=UTC)
    assert summer == datetime(2026, 6, 1, 5, 0, tzinfo=UTC)


def test_a_crontab_line_and_the_short_form_name_the_same_slots():
    now = datetime(2026, 12, 7, 6, 30, tzinfo=UTC)
    short = slots.due(slots.trigger("mon 07:00", "Europe/Oslo"), now, HOURS_6)
    assert short == slots.due(slots.trigger("0 7 * * mon", "Europe/Oslo"), now, HOURS_6)


def test_nothing_is_due_before_the_slot_nor_after_its_grace():
    when = slots.trigger("mon 07:00", "Europe/Oslo")
    slot = datetime(2026, 12, 7, 6, 0, tzinfo=UTC)
    assert slots.due(when, slot - timedelta(seconds=1), HOURS_6) is None  # 06:59:59 in Oslo
    assert slots.due(when, slot, HOURS_6) == slot
    assert slots.due(when, slot + HOURS_6, HOURS_6) == slot
    assert slots.due(when, slot + HOURS_6 + timedelta(seconds=1), HOURS_6) is None


def test_of_several_missed_slots_only_the_latest_is_due():
    daily = slots.trigger("daily 07:00", "UTC")
    assert slots.due(daily, datetime(2026, 12, 7, 8, tzinfo=UTC), timedelta(days=3)) == datetime(
        2026, 12, 7, 7, tzinfo=UTC
    )


def test_seconds_and_weekday_ranges_are_understood():
    assert slots.due(
        slots.trigger("mon-fri 06:30:15", "UTC"), datetime(2026, 12, 4, 6, 31, tzinfo=UTC), HOURS_6
    ) == datetime(2026, 12, 4, 6, 30, 15, tzinfo=UTC)
    assert (
        slots.due(slots.trigger("mon-fri 06:30", "UTC"), datetime(2026, 12, 5, 7, tzinfo=UTC), HOURS_6)
        is None
    )


@pytest.mark.parametrize(
    ("schedule", "zone", "says"),
    [
        ("monday 7", "UTC", "expected days and a time"),
        ("mon 25:00", "UTC", "schedule 'mon 25:00'"),
        ("0 7 * *", "UTC", "expected days and a time"),
        ("mon 07:00", "Europe/Atlantis", "not a known time zone"),
    ],
)
def test_a_schedule_that_cannot_be_read_says_what_was_expected(schedule, zone, says):
    with pytest.raises(ValueError, match=says):
        slots.trigger(schedule, zone)
