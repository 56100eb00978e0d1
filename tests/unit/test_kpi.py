"""Every KPI on a small history with known answers, made by the real intake with a test clock."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from email.message import Message
from zoneinfo import ZoneInfo

import pytest
from sqlmodel import Session, select

from mailrouter import charts, kpi, pictures
from mailrouter.config import load_config
from mailrouter.daemon import load
from mailrouter.db import open_database
from mailrouter.intake import Intake
from mailrouter.models import Case, StatusChange
from mailrouter.vocabulary import CaseStatus
from tests.postgres import temporary_database
from tests.unit.test_agent_flow import CUSTOMER, agent_reply, deliver, new_case, outbox
from tests.unit.test_history import customer_writes
from tests.unit.test_sla import with_sla

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


# --- one November on a desk with business hours (Oslo, 08-16 on weekdays) and an SLA -----------
# first response 4h and resolution 2d (16h) of business time. Oslo is UTC+1 all November.

HOURS = 3600


@pytest.fixture
def desk(config_file):
    department = 'sla = "standard"\nbusiness_hours = "oslo"\nsatisfaction_survey = true\n'
    loaded = load(with_sla(config_file, department=department))
    return Intake(loaded.config, loaded.rules, loaded.templates, open_database(loaded.config), loaded.agents)


def at(day: int, hour: int, minute: int = 0, month: int = 11) -> datetime:
    return datetime(2026, month, day, hour, minute, tzinfo=UTC)


def open_case(intake, clock, moment: datetime, subject: str) -> tuple[str, Message]:
    clock.now = moment
    number = deliver(intake, sender=CUSTOMER, subject=subject).case_number
    [notification, *_] = [m for m in outbox(intake, "notification") if f"[{number}]" in m["Subject"]]
    return number, notification


def answer(intake, clock, moment: datetime, notification: Message, body: str) -> None:
    clock.now = moment
    agent_reply(intake, notification, body)


def writes(intake, clock, moment: datetime, number: str, body: str = "Still broken.") -> None:
    clock.now = moment
    deliver(intake, sender=CUSTOMER, subject=f"Re: [{number}] it", body=body)


def rates(intake, clock, moment: datetime, number: str, score: str) -> None:
    clock.now = moment
    [survey] = [m for m in outbox(intake, "survey") if f"[{number}]" in m["Subject"]]
    headers = {"In-Reply-To": survey["Message-ID"], "References": survey["Message-ID"]}
    deliver(intake, sender=CUSTOMER, subject=f"Re: {survey['Subject']}", body=score, headers=headers)


@pytest.fixture
def november(desk, clock):
    """Six cases; the expected figures are worked out by hand in the tests below."""
    return happen_in_november(desk, clock)


def happen_in_november(desk, clock):
    open_case(desk, clock, at(31, 23, 30, month=10), "E: arrives at 00:30 on 1 November in Oslo")
    a, a_mail = open_case(desk, clock, at(2, 8), "A")  # 09:00 Monday in Oslo
    answer(desk, clock, at(2, 10), a_mail, "Try the other tray.")  # 2h, 2h of business
    answer(desk, clock, at(2, 12), a_mail, "#resolve")  # 4h, 4h; one answer: first contact
    b, b_mail = open_case(desk, clock, at(2, 14), "B")  # 15:00, an hour before closing
    answer(desk, clock, at(3, 9), b_mail, "#pending\nWhich floor?")  # 19h; 1h + 2h of business
    writes(desk, clock, at(4, 10), a)  # A reopened
    answer(desk, clock, at(4, 11), a_mail, "#resolve")  # resolved again: its first figures stay
    rates(desk, clock, at(4, 12), a, "5 - thanks!")
    writes(desk, clock, at(5, 10), b, "Third floor.")  # pending 6h + 8h + 3h of business
    answer(desk, clock, at(5, 12), b_mail, "#resolve\nFixed.")  # 70h; 22h - 17h = 5h of business
    open_case(desk, clock, at(6, 15, 30), "C")  # Friday 16:30, after closing: never answered
    _, f_mail = open_case(desk, clock, at(10, 8), "F")  # Tuesday 09:00
    answer(desk, clock, at(11, 8), f_mail, "Replaced the toner.")  # 24h; 7h + 1h: over 4h
    answer(desk, clock, at(11, 9), f_mail, "#resolve")  # 25h, 9h
    open_case(desk, clock, at(29, 23, 30), "D: arrives at 00:30 on Monday 30 November in Oslo")
    return desk


def test_counts_follow_the_status_history(november):
    kpis = figures(november, now=at(3, 12, month=12)).total.kpis
    assert (kpis.created, kpis.resolved, kpis.reopened, kpis.closed) == (6, 3, 1, 0)
    assert kpis.reopen_rate == pytest.approx(1 / 3)


def test_the_backlog_is_counted_at_the_periods_end_by_age(november):
    """End: midnight in Oslo, 23:00 UTC on 30 November. E is 29 days and 23.5 hours old, C 24
    days, D 23.5 hours."""
    kpis = figures(november, now=at(3, 12, month=12)).total.kpis
    assert kpis.backlog == (1, 0, 0, 2, 0)


def test_answer_and_resolution_times_in_calendar_and_business_time(november):
    kpis = figures(november, now=at(3, 12, month=12)).total.kpis
    assert kpis.first_response == kpi.Timing(
        calendar=kpi.Durations(3, 19.0 * HOURS, 24.0 * HOURS),
        business=kpi.Durations(3, 3.0 * HOURS, 8.0 * HOURS),
    )
    assert kpis.resolution == kpi.Timing(
        calendar=kpi.Durations(3, 25.0 * HOURS, 70.0 * HOURS),
        business=kpi.Durations(3, 5.0 * HOURS, 9.0 * HOURS),
    )


def test_sla_compliance_per_target(november):
    """Met and missed as settled in November; running: E, C and D, open at its end and never
    answered. B's next response (the answer two hours after "Third floor.") was met; A's
    clock, started by the reopening message, ended with "#resolve", which answers nothing."""
    kpis = figures(november, now=at(3, 12, month=12)).total.kpis
    assert kpis.sla_first_response == kpi.Compliance(met=2, missed=1, running=3)
    assert kpis.sla_resolution == kpi.Compliance(met=3, missed=0, running=3)
    assert kpis.sla_next_response == kpi.Compliance(met=1, missed=0, running=0)
    assert kpis.sla_first_response.rate == pytest.approx(2 / 3)


def test_a_running_target_is_settled_by_the_periods_end_or_not(november):
    """At the end of 2 November A is resolved, B answered (first response met, resolution
    running); E's targets run since 1 November."""
    kpis = figures(november, kpi.Period(date(2026, 11, 1), date(2026, 11, 2), "two days")).total.kpis
    assert kpis.sla_first_response == kpi.Compliance(met=1, missed=0, running=2)
    assert kpis.sla_resolution == kpi.Compliance(met=1, missed=0, running=2)


def next_response_due(intake, number: str) -> datetime | None:
    with Session(intake.engine) as session:
        return session.exec(select(Case).where(Case.number == number)).one().next_response_due


def test_next_responses_met_missed_and_running_per_period(desk, clock):
    """One case in late November; next response 8h of business time (Oslo, 08-16, UTC+1)."""
    g, g_mail = open_case(desk, clock, at(16, 8), "G")  # Monday 09:00
    answer(desk, clock, at(16, 9), g_mail, "Looking at it.")
    writes(desk, clock, at(16, 10), g)  # clock 1, due Tuesday 11:00 (10:00 UTC)
    writes(desk, clock, at(16, 12), g, "Any news?")  # counted from the older message: no move
    assert next_response_due(desk, g) == at(17, 10)
    answer(desk, clock, at(17, 11), g_mail, "Ordered a part.")  # an hour late: missed
    writes(desk, clock, at(18, 8), g)  # clock 2
    answer(desk, clock, at(18, 9), g_mail, "It is on its way.")  # met
    writes(desk, clock, at(19, 8), g)  # clock 3
    answer(desk, clock, at(19, 9), g_mail, "#pending")  # no answer: the clock ends, uncounted
    assert next_response_due(desk, g) is None
    writes(desk, clock, at(20, 8), g, "Here is the serial number.")  # clock 4, out of pending
    answer(desk, clock, at(30, 8), g_mail, "Thanks, noted.")  # a week on: missed
    writes(desk, clock, at(30, 14, 30), g)  # clock 5, Monday 15:30: still running at midnight
    answer(desk, clock, at(1, 8, month=12), g_mail, "Fixed now.")  # 1.5h: met, in December
    november = figures(desk, now=at(3, 12, month=12)).total.kpis.sla_next_response
    assert november == kpi.Compliance(met=1, missed=2, running=1)
    assert november.rate == pytest.approx(1 / 3)
    december = kpi.Period(date(2026, 12, 1), date(2026, 12, 31), "this-month")
    assert figures(desk, december, now=at(3, 12, month=12)).total.kpis.sla_next_response == kpi.Compliance(
        met=1, missed=0, running=0
    )
    third_week = kpi.Period(date(2026, 11, 16), date(2026, 11, 22), "week")
    assert figures(desk, third_week, now=at(3, 12, month=12)).total.kpis.sla_next_response == kpi.Compliance(
        met=1, missed=1, running=1
    )


def test_first_contact_resolution_and_replies_per_case(november):
    """A and F were settled by their one answer; B took two, and the customer wrote between."""
    kpis = figures(november, now=at(3, 12, month=12)).total.kpis
    assert (kpis.first_resolutions, kpis.first_contact_resolutions, kpis.agent_replies) == (3, 2, 4)
    assert kpis.replies_per_case == pytest.approx(4 / 3)


def test_satisfaction(november):
    satisfaction = figures(november, now=at(3, 12, month=12)).total.satisfaction
    assert (satisfaction.surveys_sent, satisfaction.surveys_answered, satisfaction.answers) == (3, 1, 1)
    assert satisfaction.mean == 5.0 and satisfaction.distribution == (0, 0, 0, 0, 1)
    assert satisfaction.response_rate == pytest.approx(1 / 3)


def test_arrivals_by_weekday_and_hour_in_the_departments_time_zone(november):
    arrivals = figures(november, now=at(3, 12, month=12)).arrivals
    counted = {(day, hour): n for day, hours in enumerate(arrivals) for hour, n in enumerate(hours) if n}
    monday, tuesday, friday, sunday = 0, 1, 4, 6
    assert counted == {
        (sunday, 0): 1,
        (monday, 9): 1,
        (monday, 15): 1,
        (friday, 16): 1,
        (tuesday, 9): 1,
        (monday, 0): 1,
    }


def test_a_case_arriving_before_midnight_utc_belongs_to_the_next_local_day(november):
    october = figures(november, kpi.Period(date(2026, 10, 1), date(2026, 10, 31), "october"))
    assert october.total.kpis.created == 0
    utc = kpi.figures(november.engine, NOVEMBER, {"it": ZoneInfo("UTC")}, now=at(3, 12, month=12))
    assert utc.total.kpis.created == 5  # in UTC, E arrived on 31 October


def test_the_breakdowns_group_the_same_figures(november):
    result = figures(november, now=at(3, 12, month=12))
    [it] = result.breakdown(kpi.Dimension.DEPARTMENT).groups
    assert it.key == "it" and it.kpis == result.total.kpis
    [organisation] = result.breakdown(kpi.Dimension.ORGANISATION).groups
    assert organisation.key == "kunde.example" and organisation.kpis.created == 6
    [customer] = result.breakdown(kpi.Dimension.CUSTOMER).groups
    assert customer.key == "kari@kunde.example"
    assert {g.key for g in result.breakdown(kpi.Dimension.PRIORITY).groups} == {"normal"}


def test_the_hour_of_arrival_is_local_on_either_side_of_a_clock_change(intake, clock):
    """Oslo's clocks go back at 01:00 UTC on 25 October: 00:30 and 01:30 UTC are both 02:30."""
    for moment in (at(25, 0, 30, month=10), at(25, 1, 30, month=10)):
        clock.now = moment
        deliver(intake, sender=CUSTOMER, subject="Clock change")
    arrivals = figures(intake, kpi.Period(date(2026, 10, 25), date(2026, 10, 25), "day")).arrivals
    sunday = 6
    assert arrivals[sunday][2] == 2 and sum(map(sum, arrivals)) == 2


def test_each_department_counts_arrivals_on_its_own_clock_across_the_spring_clock_change(engine):
    """29 March: Oslo goes from 02:00 to 03:00 and Helsinki from 03:00 to 04:00, both at 01:00
    UTC. IT (Oslo) has cases from 00:30 and 01:30 UTC: 01:30 and 03:30, none at 2 o'clock, which
    did not exist. HR (Helsinki) has one from 22:30 UTC the evening before, Sunday 00:30 there
    (Saturday 23:30 in Oslo), and one from 01:30 UTC: 04:30. On SQLite and PostgreSQL."""
    arrived = (
        (at(28, 22, 30, month=3), "hr"),
        (at(29, 0, 30, month=3), "it"),
        (at(29, 1, 30, month=3), "it"),
        (at(29, 1, 30, month=3), "hr"),
    )
    with Session(engine) as session:
        for number, (moment, department) in enumerate(arrived, 1):
            session.add(Case(number=f"X-{number}", department=department, subject="", created_at=moment))
        session.commit()
    sunday = kpi.Period(date(2026, 3, 29), date(2026, 3, 29), "day")
    zones = {"it": OSLO, "hr": ZoneInfo("Europe/Helsinki")}
    both = kpi.figures(engine, sunday, zones, now=at(30, 12, month=3)).arrivals
    assert {(day, hour): n for day, hours in enumerate(both) for hour, n in enumerate(hours) if n} == {
        (6, 0): 1,
        (6, 1): 1,
        (6, 3): 1,
        (6, 4): 1,
    }
    it_only = kpi.figures(engine, sunday, {"it": OSLO}, now=at(30, 12, month=3)).arrivals
    assert [hour for hour, n in enumerate(it_only[6]) if n] == [1, 3]
    weekend = kpi.Period(date(2026, 3, 28), date(2026, 3, 29), "weekend")
    assert kpi.daily_created(engine, weekend, zones) == (0, 4)  # HR's evening case is Sunday's


def test_the_busiest_hours_chart_of_the_mail_draws_these_arrivals(november):
    """The report mail's heat map (pictures.draw_all, which the dashboard's chart shares) is the
    drawing of kpi's arrivals on the departments' clocks, not of some other count."""
    result = figures(november, now=at(3, 12, month=12))
    words = charts.Words.of(november.casework.notices.templates.words("no"))
    drawn = pictures.draw_all(november.engine, november.config, result, words)[pictures.Chart.BUSIEST_HOURS]
    assert drawn == charts.busiest_hours(result.arrivals, words)
    in_utc = kpi.figures(november.engine, NOVEMBER, {"it": ZoneInfo("UTC")}, now=at(3, 12, month=12))
    assert drawn != charts.busiest_hours(in_utc.arrivals, words)


def test_cases_created_per_local_day_for_the_volume_chart(november):
    first_week = kpi.Period(date(2026, 11, 1), date(2026, 11, 8), "week")
    days = kpi.daily_created(november.engine, first_week, {"it": OSLO, "hr": OSLO})
    assert days == (1, 2, 0, 0, 0, 1, 0, 0)


def test_first_answers_by_business_hours_taken_for_the_answer_time_chart(november):
    """A was answered after 2 business hours, B after 3, F after 8; the last band is open."""
    edges = [h * 3600 for h in (0, 1, 2, 4, 8, float("inf"))]
    assert kpi.first_response_bands(november.engine, NOVEMBER, {"it": OSLO}, edges) == (0, 0, 2, 0, 1)


def test_a_period_without_cases_has_zero_figures(intake):
    empty = figures(intake).total
    kpis = empty.kpis
    assert (kpis.created, kpis.backlog_total, kpis.first_response.business.count) == (0, 0, 0)
    assert empty.satisfaction.mean is None


def test_the_nearest_rank_percentiles_are_the_same_on_sqlite_and_postgresql(engine):
    """Two first answers, of 100 s and 200 s: the median is the first (rank ceil(0.5 * 2) = 1),
    the 90th percentile the second (rank ceil(0.9 * 2) = 2), on either database."""
    created = datetime(2026, 11, 10, 8, tzinfo=UTC)
    with Session(engine) as session:
        for number, seconds in ((1, 100.0), (2, 200.0)):
            session.add(
                Case(
                    number=f"IT-{number}",
                    department="it",
                    subject="",
                    created_at=created,
                    first_response_at=created + timedelta(seconds=seconds),
                    first_response_seconds=seconds,
                )
            )
        session.commit()
    timing = kpi.figures(engine, NOVEMBER, {"it": OSLO}, dimensions=()).total.kpis.first_response
    assert timing.calendar == kpi.Durations(2, 100.0, 200.0)


def test_a_departments_groups_are_those_with_something_to_count_in_the_period(engine):
    """IT's November: Ann's case resolved in it. Not listed: HR and Bob (another department's
    case), Cid (reopened and resolved again in September), Dan (a case from after November)."""
    resolved, reopened = (CaseStatus.OPEN, CaseStatus.RESOLVED), (CaseStatus.RESOLVED, CaseStatus.OPEN)
    cases: list[tuple[str, str, str, datetime, list[tuple[datetime, tuple[CaseStatus, CaseStatus]]]]] = [
        ("IT-1", "it", "ann", at(10, 9), [(at(11, 9), resolved)]),
        ("HR-1", "hr", "bob", at(10, 9), [(at(12, 9), resolved)]),
        (
            "IT-2",
            "it",
            "cid",
            at(1, 9, month=9),
            [(at(2, 9, month=9), resolved), (at(5, 9, month=9), reopened), (at(6, 9, month=9), resolved)],
        ),
        ("IT-3", "it", "dan", at(2, 9, month=12), []),
    ]
    with Session(engine) as session:
        for number, department, assignee, created, changes in cases:
            case = Case(
                number=number, department=department, subject="", assignee=assignee, created_at=created
            )
            if changes:
                case.first_resolved_at = changes[0][0]
            session.add(case)
            session.flush()
            assert case.id is not None
            for moment, (before, after) in changes:
                session.add(StatusChange(case_id=case.id, at=moment, from_status=before, to_status=after))
        session.commit()
    result = kpi.figures(engine, NOVEMBER, {"it": OSLO}, now=at(3, 12, month=12))
    assert [g.key for g in result.breakdown(kpi.Dimension.DEPARTMENT).groups] == ["it"]
    assert [g.key for g in result.breakdown(kpi.Dimension.ASSIGNEE).groups] == ["ann"]
    assert (result.total.kpis.created, result.total.kpis.resolved, result.total.kpis.backlog_total) == (
        1,
        1,
        0,
    )


def test_postgresql_gives_november_the_same_figures(config_file, november, clock):
    """Every figure, the arrivals by local hour included, computed by the other database."""
    with temporary_database() as url:
        text = config_file.read_text()
        config_file.write_text(text.replace(text.split("\n")[1], f'database_url = "{url}"'))
        loaded = load(load_config(config_file))
        on_postgresql = Intake(
            loaded.config, loaded.rules, loaded.templates, open_database(loaded.config), loaded.agents
        )
        happen_in_november(on_postgresql, clock)
        expected = figures(november, now=at(3, 12, month=12))
        assert figures(on_postgresql, now=at(3, 12, month=12)) == expected
        on_postgresql.engine.dispose()


def test_a_running_periods_backlog_is_the_cases_open_now_by_their_age_now(november):
    """E (32.5 days old on 3 December at noon), C (27 days) and D (3.5 days) are open; the others
    were resolved."""
    running = kpi.Period(date(2026, 11, 1), date(2026, 12, 31), "november-december")
    kpis = figures(november, running, now=at(3, 12, month=12)).total.kpis
    assert kpis.backlog == (0, 0, 1, 1, 1)
