"""How long a dashboard page takes on a desk's whole history, on SQLite and PostgreSQL.

The history is bench/report.py's (by default 100,000 cases and 400,000 messages over two years
in four departments); its open cases are given first-answer and resolution due times as an SLA
policy would, so the page's list of cases nearest to and past their SLA has work to do. Then,
at the history's last moment, it times what each request does in the daemon: the overview, a
department's page (today's and this week's figures, the backlog, the SLA list) and each of the
page's four charts, and the page with its charts as a browser loads them (one after another).

    .venv/bin/python -m bench.dashboard [--cases N] [--messages N] [--postgres URL | --postgres ""]
                                        [--keep DIR]

Target (issue 18): a dashboard page in < 1 s on the 2-core dev machine.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import Engine, func, text, update

from bench.report import END, on_each_database, parser, prepared, say, timed
from mailrouter import dashboard
from mailrouter.config import load_config
from mailrouter.models import CASE
from mailrouter.pictures import Chart
from mailrouter.templates import Templates
from mailrouter.vocabulary import CaseStatus

TARGET = 1.0  # seconds for a page


def give_due_times(engine: Engine) -> int:
    """The open cases' due times: 4 h to the first answer, 2 days to the resolution (calendar
    time, near enough for the list's queries); returns how many cases got them."""

    def later(span: str) -> Any:
        if engine.dialect.name == "postgresql":
            return CASE.c.created_at + text(f"interval '{span}'")
        return func.datetime(CASE.c.created_at, f"+{span}")

    running = CASE.c.status.in_([CaseStatus.NEW, CaseStatus.OPEN])
    unanswered = CASE.c.first_response_at.is_(None)
    with engine.begin() as connection:
        connection.execute(
            update(CASE).where(running, unanswered).values(first_response_due=later("4 hours"))
        )
        done = connection.execute(update(CASE).where(running).values(resolution_due=later("2 days")))
        return int(done.rowcount)


def measure(label: str, url: str, directory: Path) -> None:
    engine, path = prepared(label, url, directory, ARGS.cases, ARGS.messages)
    say(f"{label}: {give_due_times(engine)} open cases given SLA due times")
    config = load_config(path, resolve_secrets=False)
    department = "it"
    words = Templates(config.templates_dir).words("en")
    results = {
        "overview": timed(lambda: dashboard.overview_page(engine, config, words, END)),
        "page": timed(lambda: dashboard.board_page(engine, config, words, department, END)),
    }
    for chart in Chart:
        results[f"chart {chart}"] = timed(
            lambda c=chart: dashboard.chart(engine, config, words, department, c, END)
        )
    results["page with its charts"] = results["page"] + sum(results[f"chart {c}"] for c in Chart)
    for name, seconds in results.items():
        say(f"{label}: {name:<22} {seconds:6.3f} s")
    met = "met" if results["page"] < TARGET else "NOT met"
    say(f"{label}: target: a dashboard page in < {TARGET:g} s: {met} ({results['page']:.3f} s)")
    engine.dispose()


if __name__ == "__main__":
    parser.description = __doc__
    ARGS = parser.parse_args()
    on_each_database(measure, ARGS.postgres, ARGS.keep)
