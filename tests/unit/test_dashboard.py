"""The dashboard on the daemon's real HTTP endpoint (aiohttp's test server), over cases the real
intake registered: the department's figures as kpi computes them, the cases nearest to and past
their SLA without a subject or customer, the charts as PNGs, and the endpoint's token."""

from __future__ import annotations

import html
import re
from datetime import UTC, datetime, timedelta

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from pydantic import SecretStr
from sqlmodel import Session, select

from mailrouter import charts, dashboard, kpi
from mailrouter.config import HttpSettings
from mailrouter.daemon import load
from mailrouter.db import open_database
from mailrouter.health import Health
from mailrouter.http import Endpoint
from mailrouter.intake import Intake
from mailrouter.models import Case
from tests.unit.test_agent_flow import CUSTOMER, agent_reply, deliver, outbox
from tests.unit.test_sla import with_sla

TOKEN = "dashboard-test-token"


@pytest.fixture
def desk(config_file, clock):
    """IT with a 4h first-answer target, 24/7: one case past it, one due within the hour, one not."""
    loaded = load(with_sla(config_file))
    intake = Intake(
        loaded.config, loaded.rules, loaded.templates, open_database(loaded.config), loaded.agents
    )
    now = datetime.now(UTC)
    for age, subject in (
        (timedelta(hours=5), "Late"),
        (timedelta(hours=3, minutes=30), "Soon"),
        (timedelta(0), "New"),
    ):
        clock.now = now - age
        deliver(intake, sender=CUSTOMER, subject=f"Skrivaren {subject}")
    return intake


async def client_for(
    intake, token: SecretStr | None = None, language: str = "en"
) -> TestClient[web.Request, web.Application]:
    settings = HttpSettings.model_validate({"language": language})
    templates = intake.casework.notices.templates
    endpoint = Endpoint(settings, token, Health({}), intake.engine, 60, intake.config, templates)
    client = TestClient(TestServer(endpoint.app))
    await client.start_server()
    return client


def figure(page: str, name: str) -> str:
    found = re.search(rf'data-figure="{re.escape(name)}">([^<]*)<', page)
    assert found, f"no {name} on the page"
    return found[1]


async def test_the_board_shows_the_departments_figures_as_kpi_counts_them(desk):
    client = await client_for(desk)
    try:
        response = await client.get("/dashboard/it")
        page = await response.text()
    finally:
        await client.close()
    assert response.status == 200 and response.content_type == "text/html"
    now = datetime.now(UTC)
    zone = desk.config.calendar("it").zone
    for name, key in (("today", "today"), ("this-week", "week")):
        period = kpi.named_period(name, now.astimezone(zone).date())
        counted = kpi.figures(desk.engine, period, {"it": zone}, dimensions=()).total.kpis
        assert figure(page, f"{key}.created") == str(counted.created)
    assert figure(page, "backlog") == "3" and figure(page, "late") == "1"
    assert '<meta http-equiv="refresh" content="60">' in page
    assert 'name="viewport"' in page


async def test_the_board_counts_each_sla_target_met_missed_and_running_this_week(desk, clock):
    """The late case answered past its 4h (missed), the new one within it (met), whose customer
    then writes back (a next response running); the one due soon still waits (running)."""
    late, new = notification_of(desk, "IT-1001"), notification_of(desk, "IT-1003")
    clock.now = datetime.now(UTC)
    agent_reply(desk, late, "Sorry for the wait: try the other tray.")
    agent_reply(desk, new, "Try the other tray.")
    deliver(desk, sender=CUSTOMER, subject="Re: [IT-1003] Skrivaren New", body="Still jammed.")
    client = await client_for(desk)
    try:
        page = await (await client.get("/dashboard/it")).text()
    finally:
        await client.close()
    shown = {
        target: tuple(int(figure(page, f"sla.{target}.{o}")) for o in ("met", "missed", "running"))
        for target in ("first-response", "next-response", "resolution")
    }
    assert shown == {"first-response": (1, 1, 1), "next-response": (0, 0, 1), "resolution": (0, 0, 3)}
    assert figure(page, "sla.first-response") == "50 %" and figure(page, "sla.next-response") == "-"


def notification_of(intake, number: str):
    return next(m for m in outbox(intake, "notification") if m["Subject"].startswith(f"[{number}]"))


async def test_the_cases_nearest_their_sla_come_first_and_show_nothing_a_customer_wrote(desk):
    client = await client_for(desk)
    try:
        page = await (await client.get("/dashboard/it")).text()
    finally:
        await client.close()
    rows = re.findall(r'<tr class="(late|soon|)" data-case="([A-Z]+-\d+)" data-target="([a-z-]+)">', page)
    assert rows[:3] == [
        ("late", "IT-1001", "first-response"),
        ("soon", "IT-1002", "first-response"),
        ("", "IT-1003", "first-response"),
    ]
    assert "Skrivaren" not in page and "kari" not in page.lower()


@pytest.mark.parametrize("chart", ["volume", "answer-times", "backlog", "busiest-hours"])
async def test_each_chart_is_served_as_a_png(desk, chart):
    client = await client_for(desk)
    try:
        response = await client.get(f"/dashboard/it/{chart}.png")
        body = await response.read()
    finally:
        await client.close()
    assert response.status == 200 and response.content_type == "image/png"
    assert body[:8] == b"\x89PNG\r\n\x1a\n"


async def test_the_overview_links_every_department_with_the_figures_of_its_page(desk):
    client = await client_for(desk)
    try:
        page = await (await client.get("/dashboard")).text()
        board = await (await client.get("/dashboard/it")).text()
        missing = await client.get("/dashboard/sales")
        no_chart = await client.get("/dashboard/it/pie.png")
    finally:
        await client.close()
    assert 'href="dashboard/it"' in page and 'href="dashboard/hr"' in page
    assert missing.status == 404 and no_chart.status == 404
    assert (figure(page, "it.backlog"), figure(page, "it.late"), figure(page, "hr.backlog")) == (
        "3",
        "1",
        "0",
    )
    assert figure(page, "it.today") == figure(board, "today.created")
    assert figure(page, "it.week") == figure(board, "week.created")


async def test_the_dashboard_asks_for_the_endpoints_token(desk):
    client = await client_for(desk, SecretStr(TOKEN))
    try:
        refused = await client.get("/dashboard/it")
        chart = await client.get("/dashboard/it/volume.png")
        admitted = await client.get("/dashboard/it", headers={"Authorization": f"Bearer {TOKEN}"})
    finally:
        await client.close()
    assert (refused.status, chart.status, admitted.status) == (401, 401, 200)


async def test_a_sensitive_case_is_counted_and_never_listed(desk):
    with Session(desk.engine) as session:
        case = session.exec(select(Case).where(Case.number == "IT-1002")).one()
        case.sensitive = True
        session.add(case)
        session.commit()
    client = await client_for(desk)
    try:
        page = await (await client.get("/dashboard/it")).text()
    finally:
        await client.close()
    assert 'data-case="IT-1002"' not in page and "IT-1002" not in page
    assert 'data-case="IT-1001"' in page
    assert figure(page, "sensitive") == "1" and figure(page, "backlog") == "3"


async def test_the_dashboard_speaks_its_configured_language_in_the_report_mails_words(desk):
    """[http] language = "no": the page, its overview and its charts take the words of the report
    mail's Norwegian catalogue (one source), and no English one is left."""
    words = desk.casework.notices.templates.words("no")
    client = await client_for(desk, language="no")
    try:
        board = await (await client.get("/dashboard/it")).text()
        overview = await (await client.get("/dashboard")).text()
        backlog = await (await client.get("/dashboard/it/backlog.png")).read()
    finally:
        await client.close()
    assert '<html lang="no">' in board and '<html lang="no">' in overview
    for word in ("today", "this_week", "open_now", "created", "sla_first_response", "watch", "sla_week"):
        assert f">{words[word]}<" in board, word
    assert f"<td>{words['targets']['first-response']}</td>" in board  # "første svar"
    assert f"<td>{html.escape(words['ages'][0])}</td>" in board  # "&lt; 1 dag"
    for english in ("Today", "This week", "Open now", "new cases", "past their SLA", "first-response"):
        assert f">{english}<" not in board, english
    assert f">{words['desk']}<" in overview and f">{words['new_today']}<" in overview
    norwegian = charts.backlog(words["ages"], [3, 0, 0, 0, 0], charts.Words.of(words))
    english_words = charts.Words.of(desk.casework.notices.templates.words("en"))
    assert backlog == norwegian != charts.backlog(english_words.ages, [3, 0, 0, 0, 0], english_words)


@pytest.mark.parametrize("language", ["en", "sv", "no", "da", "fi"])
async def test_every_language_has_every_word_of_the_dashboard(desk, language):
    """The pages render with StrictUndefined: a word missing from a catalogue fails here."""
    catalogue = desk.casework.notices.templates
    assert set(catalogue.words(language)) == set(catalogue.words("en"))
    client = await client_for(desk, language=language)
    try:
        board, overview = await client.get("/dashboard/it"), await client.get("/dashboard")
    finally:
        await client.close()
    assert (board.status, overview.status) == (200, 200)


def test_a_boards_figures_are_read_at_the_boards_moment(intake, clock):
    """A case from 10:00 on Monday, the board read at 09:00 on Tuesday (UTC): open for 23
    hours then, not for the 38 it will have been open by the end of Tuesday in Oslo."""
    clock.now = datetime(2026, 11, 9, 10, tzinfo=UTC)
    deliver(intake, sender=CUSTOMER, subject="Skrivaren")
    board = dashboard.board(intake.engine, intake.config, "it", datetime(2026, 11, 10, 9, tzinfo=UTC))
    assert board.backlog == (1, 0, 0, 0, 0)  # kpi.AGE_BANDS: "< 1 day" first
