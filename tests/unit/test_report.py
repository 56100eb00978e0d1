"""`mailrouter report` in each format, over the hand-worked November of test_kpi."""

from __future__ import annotations

import csv
import io
import json
from html.parser import HTMLParser

import pytest

from mailrouter.cli import main
from tests.unit.test_kpi import desk, november  # noqa: F401  (fixtures)

NORDIC = "IT-støtte på Åsane, Ærø og Göteborg"
NOVEMBER = ["--from", "2026-11-01", "--to", "2026-11-30"]


@pytest.fixture
def nordic(config_file, request):
    """November's desk, whose IT department is then renamed with every Nordic letter (after
    the fixture's mail: the test's agents write the name unencoded into their To)."""
    request.getfixturevalue("november")
    config_file.write_text(
        config_file.read_text().replace('display_name = "IT Support"', f'display_name = "{NORDIC}"')
    )
    return config_file


def report(config_file, capsysbinary: pytest.CaptureFixture[bytes], *options: str) -> bytes:
    assert main(["--config", str(config_file), "report", *NOVEMBER, *options]) == 0
    return capsysbinary.readouterr().out


def test_json_gives_every_figure_by_its_column_name(nordic, capsysbinary):
    document = json.loads(report(nordic, capsysbinary, "--format", "json"))
    total = document["total"]
    assert (total["created"], total["resolved"], total["reopened"], total["backlog"]) == (6, 3, 1, 3)
    assert total["first response business median"] == 3 * 3600
    assert total["sla first response"] == pytest.approx(2 / 3)
    sla = {
        target: [total[f"sla {target} {outcome}"] for outcome in ("met", "missed", "running")]
        for target in ("first response", "next response", "resolution")
    }
    assert sla == {"first response": [2, 1, 3], "next response": [1, 0, 0], "resolution": [3, 0, 3]}
    assert total["sla next response"] == 1.0
    assert document["period"] == {
        "first": "2026-11-01",
        "last": "2026-11-30",
        "name": "2026-11-01..2026-11-30",
    }
    assert [g["key"] for g in document["breakdowns"]["department"]] == ["it"]
    assert document["arrivals"]["Monday"][9] == 1


def test_csv_opens_in_a_nordic_excel_bom_semicolons_and_letters_intact(nordic, capsysbinary):
    data = report(nordic, capsysbinary, "--format", "csv")
    assert data.startswith(b"\xef\xbb\xbf")
    rows = list(csv.reader(io.StringIO(data.decode("utf-8-sig")), delimiter=";"))
    header, total = rows[0], rows[1]
    assert header[:3] == ["breakdown", "group", "created"] and len(header) == len(total)
    assert NORDIC in total[1]
    assert total[header.index("first response business median (hours)")] == "3,00"  # a decimal comma
    assert total[header.index("sla first response (%)")] == "66,67"
    assert total[header.index("sla resolution running")] == "3"
    assert total[header.index("sla next response (%)")] == "100,00"
    department = next(row for row in rows if row[:1] == ["department"])
    assert department[1] == NORDIC
    assert ["weekday", *(f"{h:02d}" for h in range(24))] in rows


def test_the_table_lists_every_figure_and_the_breakdowns(nordic, capsysbinary):
    text = report(nordic, capsysbinary).decode()
    assert f"Report 2026-11-01..2026-11-30 (2026-11-01 to 2026-11-30), {NORDIC}" in text
    figures = {
        line.rsplit("  ", 1)[0].strip(): line.rsplit("  ", 1)[1]
        for line in text.splitlines()
        if line.startswith("  ")
    }
    assert figures["sla first response"] == "67 %" and figures["created"] == "6"
    assert (figures["sla first response running"], figures["sla next response met"]) == ("3", "1")
    assert figures["first response business median"] == "3h 00m"
    assert "by department" in text and "by customer" in text and "kari@kunde.example" in text


def test_html_is_a_page_with_the_figures(nordic, capsysbinary):
    page = report(nordic, capsysbinary, "--format", "html").decode()

    cells: list[str] = []

    class Cells(HTMLParser):
        def handle_data(self, data: str) -> None:
            if data.strip():
                cells.append(data.strip())

    Cells().feed(page)
    assert cells[cells.index("created") + 1] == "6" and "By department" in cells and NORDIC in cells
    assert cells[cells.index("sla resolution running") + 1] == "3"
    assert cells[cells.index("sla next response") + 1] == "100 %"


def test_one_department_and_its_own_figures(nordic, capsysbinary):
    document = json.loads(report(nordic, capsysbinary, "--format", "json", "--department", "hr"))
    assert document["departments"] == ["hr"] and document["total"]["created"] == 0


def test_an_unknown_department_or_half_a_period_is_refused(config_file, capsys):
    assert main(["--config", str(config_file), "report", "--department", "nope"]) == 2
    assert "no department 'nope'" in capsys.readouterr().err
    assert main(["--config", str(config_file), "report", "--from", "2026-11-01"]) == 2
    assert "--from and --to go together" in capsys.readouterr().err
