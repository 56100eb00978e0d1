"""charts: every chart is a PNG a mail client and a browser show, and an empty period says so."""

from __future__ import annotations

import struct
from datetime import date, timedelta
from pathlib import Path

import pytest

from mailrouter import charts
from mailrouter.templates import Templates

CATALOGUE = Templates(Path(__file__).resolve().parents[2] / "templates")
WORDS = charts.Words.of(CATALOGUE.words("en"))
DAYS = [date(2026, 11, 23) + timedelta(days=d) for d in range(7)]
WEEK = [[(d * 24 + h) % 5 if 8 <= h < 16 else 0 for h in range(24)] for d in range(7)]


def _size(png: bytes) -> tuple[int, int]:
    assert png[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    assert png[12:16] == b"IHDR"
    width, height = struct.unpack(">II", png[16:24])
    return width, height


CHARTS = {
    "volume": lambda: charts.volume(DAYS, [5, 8, 3, 0, 9, 1, 0], [4, 6, 7, 2, 5, 0, 1], WORDS),
    "answer_times": lambda: charts.answer_times([0, 1, 4, 8, 24], [10, 6, 3, 1], 8.0, WORDS),
    "backlog": lambda: charts.backlog(["< 1 d", "1-3 d", "3-7 d", "> 7 d"], [4, 3, 2, 1], WORDS),
    "busiest_hours": lambda: charts.busiest_hours(WEEK, WORDS),
}
EMPTY = {
    "volume": lambda: charts.volume(DAYS, [0] * 7, [0] * 7, WORDS),
    "answer_times": lambda: charts.answer_times([0, 1, 4, 8, 24], [0, 0, 0, 0], 8.0, WORDS),
    "backlog": lambda: charts.backlog(["< 1 d", "1-3 d"], [0, 0], WORDS),
    "busiest_hours": lambda: charts.busiest_hours([[0] * 24] * 7, WORDS),
}


@pytest.mark.parametrize("name", CHARTS)
def test_each_chart_is_a_png_of_mail_width_and_modest_size(name):
    png = CHARTS[name]()
    assert _size(png) == (1200, 520)
    assert 5_000 < len(png) < 200_000


@pytest.mark.parametrize("name", EMPTY)
def test_an_empty_period_draws_the_no_cases_chart_not_bare_axes(name):
    png = EMPTY[name]()
    assert _size(png) == (1200, 520)
    assert png == charts.volume(DAYS, [0] * 7, [0] * 7, WORDS), "the one 'no cases' picture"
    assert png != CHARTS[name]()


def test_the_no_cases_chart_speaks_the_report_language():
    swedish = charts.volume(DAYS, [0] * 7, [0] * 7, charts.Words.of(CATALOGUE.words("sv")))
    assert swedish != charts.volume(DAYS, [0] * 7, [0] * 7, WORDS)


def test_every_report_language_has_its_chart_words():
    for language in ("en", "sv", "no", "da", "fi"):
        words = charts.Words.of(CATALOGUE.words(language))
        assert len(set(words.weekdays)) == 7 and len(words.ages) == 5


def test_the_sla_target_beyond_the_last_band_still_draws():
    assert _size(charts.answer_times([0, 1, 4], [3, 2], 100.0, WORDS)) == (1200, 520)
