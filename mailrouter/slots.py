"""slots: when a scheduled report is due. A schedule names moments (slots) in a time zone; the
slot due at a moment is the latest one at most the report's grace ago.

A schedule is "mon 07:00", "mon-fri 06:30", "daily 07:00:30" (days as cron writes them; the
seconds are for tests) or a five-field crontab line ("0 7 * * mon").
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from apscheduler.triggers.cron import CronTrigger

_SHORT = re.compile(r"^\s*(?P<days>\S+)\s+(?P<hour>\d{1,2}):(?P<minute>\d{2})(?::(?P<second>\d{2}))?\s*$")


def trigger(schedule: str, time_zone: str) -> CronTrigger:
    """The schedule as an apscheduler trigger; ValueError saying what was expected."""
    try:
        zone = ZoneInfo(time_zone)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"time_zone {time_zone!r} is not a known time zone (e.g. Europe/Oslo)") from None
    short = _SHORT.match(schedule)
    try:
        if short:
            days = short["days"].lower()
            return CronTrigger(
                day_of_week="*" if days == "daily" else days,
                hour=int(short["hour"]),
                minute=int(short["minute"]),
                second=int(short["second"] or 0),
                timezone=zone,
            )
        if len(schedule.split()) == 5:
            return CronTrigger.from_crontab(schedule, timezone=zone)
    except ValueError as exc:
        raise ValueError(f"schedule {schedule!r}: {exc}") from None
    raise ValueError(
        f"schedule {schedule!r}: expected days and a time such as 'mon 07:00', 'mon-fri 06:30', "
        "'daily 07:00', or a crontab line such as '0 7 * * mon'"
    )


def due(when: CronTrigger, now: datetime, grace: timedelta) -> datetime | None:
    """The latest slot in [now - grace, now], in UTC; None when there is none. Older slots of a
    long outage are not sent: their reports would be stale, and the latest covers the news."""
    found = None
    slot = when.get_next_fire_time(None, now - grace)
    while slot is not None and slot <= now:
        found = slot
        slot = when.get_next_fire_time(slot, slot + timedelta(seconds=1))
    return None if found is None else found.astimezone(UTC)


MISSED_LOOKED_AT = 1000  # slots counted after the last one taken: an outage of years stops there


def missed(when: CronTrigger, last: datetime, now: datetime, grace: timedelta) -> tuple[datetime, ...]:
    """The slots after `last` (the latest one taken) that are past their grace at `now`, in
    UTC: no instance ran while they were due, and they will never be sent."""
    found: list[datetime] = []
    slot = when.get_next_fire_time(None, last + timedelta(seconds=1))
    while slot is not None and slot < now - grace and len(found) < MISSED_LOOKED_AT:
        found.append(slot.astimezone(UTC))
        slot = when.get_next_fire_time(slot, slot + timedelta(seconds=1))
    return tuple(found)


def describe(slot: datetime, time_zone: str) -> str:
    """A slot as the report's readers know it: in its own time zone."""
    return slot.astimezone(ZoneInfo(time_zone)).strftime("%Y-%m-%d %H:%M:%S %Z")
