"""Every KPI on a small history with known answers, made by the real intake with a test clock."""

from __future__ import annotations

from datetime import UTC, date, datetime
from zoneinfo import ZoneInfo

from mailrouter import kpi
from tests.unit.test_agent_flow import agent_reply, new_case
from tests.unit.test_history import customer_writes

OSLO = ZoneInfo("Europe/Oslo")
NOVEMBER = kpi.Period(date(2026, 11, 1), date(2026, 11, 30), "last-month")


def figures(intake, period=NOVEMBER, **options):
    return kpi.figures(intake.engine, period, {"it": OSLO, "hr": OSLO}, **options)


def test_last_months_figures_do_not_change_when_a_case_is_reopened_today(intake, clock):
    clock.now = datetime(2026, 11, 27, 9, tzinfo=UTC)
    notification = new_case(intake)
    clock.advance(hours=2)
    agent_reply(intake, notification, "Try the other tray.")
    clock.advance(hours=1)
    agent_reply(intake, notification, "#resolve")
    today = datetime(2026, 12, 2, 10, tzinfo=UTC)  # within the reopen window
    before = figures(intake, now=today)
    clock.now = today  # the customer writes again
    customer_writes(intake)
    after = figures(intake, now=clock.now)
    assert after == before
    total = after.total.kpis
    assert (total.created, total.resolved, total.reopened, total.backlog_total) == (1, 1, 0, 0)
    assert total.first_response.calendar == kpi.Durations(1, 7200.0, 7200.0)
    assert total.resolution.calendar == kpi.Durations(1, 10800.0, 10800.0)
    december = figures(
        intake, kpi.Period(date(2026, 12, 1), date(2026, 12, 31), "this-month"), now=clock.advance(minutes=1)
    )
    assert (december.total.kpis.created, december.total.kpis.reopened, december.total.kpis.backlog_total) == (
        0,
        1,
        1,
    )
