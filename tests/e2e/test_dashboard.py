"""The dashboard in a real browser: customers' mail through Postfix and Dovecot becomes cases, an
agent answers and resolves from their mail client, and Debian's headless Chromium (selenium,
/usr/bin/chromedriver) loads the department's page from the running daemon. Its figures are the
ones `mailrouter report --format json` gives, its words the configured language's, its charts are
drawn images, and screenshots of a wall screen and a phone are kept in tests/artifacts/."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from mailrouter.sla import duration_text
from mailrouter.templates import Templates
from tests.e2e.conftest import ROOT, Account, Daemon, send_mail
from tests.e2e.test_agents import reply_as
from tests.e2e.test_http import with_http
from tests.mailstack import MailStack

pytestmark = pytest.mark.e2e

ARTIFACTS = ROOT / "tests" / "artifacts"
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[webdriver.Chrome]:
    options = Options()
    options.binary_location = "/usr/bin/chromium"
    for flag in (*FLAGS, f"--user-data-dir={tmp_path / 'chromium-profile'}", "--window-size=1600,1200"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def screenshot(driver: webdriver.Chrome, name: str) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / name
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(driver.get_window_size()["width"], height + 100)
    assert driver.get_screenshot_as_file(str(path))
    print(f"dashboard screenshot: {path}")
    return path


def spread(total: dict[str, float | None], name: str) -> str:
    """The dashboard's "median / p90" from the report's seconds."""
    median, p90 = total[f"{name} median"], total[f"{name} p90"]
    if median is None or p90 is None:
        return "-"
    return f"{duration_text(timedelta(seconds=median))} / {duration_text(timedelta(seconds=p90))}"


def test_the_dashboard_in_chromium_shows_what_mailrouter_report_counts(
    installation, mailstack: MailStack, customer: Account, browser: webdriver.Chrome
) -> None:
    daemon: Daemon = installation()
    daemon.env["E2E_HTTP_TOKEN"] = "wall-screen-token"
    base = with_http(daemon, language="no", token_env="E2E_HTTP_TOKEN")
    it, agent = daemon.mailboxes["it"], daemon.agents["agent1"]
    daemon.start(wait=True)
    for subject in ("Skrivaren på plan 3", "Skjermen flimrer", "Ny mus"):
        send_mail(mailstack, f"Kari <{customer.address}>", it.address, subject, "Hei, kan dere hjelpe?")
    notifications = mailstack.wait_for_messages(agent.address, agent.password, 3)
    first = next(n for n in notifications if "Skrivaren" in str(n["Subject"]))
    second = next(n for n in notifications if "Skjermen" in str(n["Subject"]))
    reply_as(mailstack, agent, first, "Prøv den andre skuffen.")
    reply_as(mailstack, agent, second, "#resolve\nStarte ruteren på nytt løste det.")
    daemon.wait_until(
        lambda: (
            sum(c.first_response_at is not None for c in daemon.cases()) == 2
            and any(c.status == "resolved" for c in daemon.cases())
        ),
        "the answer and the resolution",
        30,
    )
    shown = daemon.cli("report", "--period", "today", "--department", "it", "--format", "json")
    assert shown.returncode == 0, shown.stderr
    total = json.loads(shown.stdout)["total"]
    assert (total["created"], total["resolved"], total["backlog"]) == (3, 1, 2)

    # A wall screen sends no header: the link with the token logs it in, a cookie remembers it
    # (for the charts too), and the token is gone from the address bar.
    browser.get(f"{base}/dashboard/it?token=wall-screen-token")
    assert browser.title.startswith("IT Support") and "token" not in browser.current_url
    # [http] language = "no": the report mail's Norwegian words.
    words = Templates(ROOT / "templates").words("no")
    assert browser.find_element(By.TAG_NAME, "html").get_attribute("lang") == "no"
    assert browser.find_element(By.CSS_SELECTOR, "#today h2").get_attribute("textContent") == words["today"]
    assert (
        browser.find_element(By.CSS_SELECTOR, "#backlog h2").get_attribute("textContent") == words["open_now"]
    )
    figures = {
        element.get_attribute("data-figure"): element.text
        for element in browser.find_elements(By.CSS_SELECTOR, "[data-figure]")
    }
    assert figures["today.created"] == str(total["created"])
    assert figures["today.resolved"] == str(total["resolved"])
    assert figures["today.first_response"] == spread(total, "first response business")
    assert figures["backlog"] == str(total["backlog"])
    assert [figures[f"backlog.{i}"] for i in range(5)] == [
        str(total[f"backlog {b}"]) for b in json.loads(shown.stdout)["age_bands"]
    ]
    assert int(figures["week.created"]) >= int(figures["today.created"])
    # Every chart is a drawn image, not a broken one.
    WebDriverWait(browser, 30).until(
        lambda d: all(
            d.execute_script("return arguments[0].complete && arguments[0].naturalWidth", image) == 1200
            for image in d.find_elements(By.CSS_SELECTOR, "img.chart")
        )
    )
    assert len(browser.find_elements(By.CSS_SELECTOR, "img.chart")) == 4
    page = browser.page_source
    assert "Skrivaren" not in page and customer.address not in page  # a wall screen shows no one
    assert screenshot(browser, "dashboard-wall.png").stat().st_size > 10_000
    browser.set_window_size(390, 844)  # a phone: the tiles stack, nothing runs off to the side
    assert browser.execute_script("return document.documentElement.scrollWidth") <= 390
    assert screenshot(browser, "dashboard-phone.png").stat().st_size > 10_000
    assert daemon.stop() == 0
