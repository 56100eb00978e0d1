"""How long `mailrouter report` takes on a desk's whole history, on SQLite and PostgreSQL.

Generates a realistic history (by default 100,000 cases and 400,000 messages over two years in
four departments: arrivals weighted to office hours and weekdays, lognormal answer and
resolution times, pending pauses, reopenings, closings, surveys), bulk-inserted through the
migrated schema, then times the figures of a week, a month and a year: kpi.figures in the
process (the database's share) and the whole `mailrouter report` command (with its start-up),
each the median of three runs.

    .venv/bin/python -m bench.report [--cases N] [--messages N] [--postgres URL | --postgres ""]
                                     [--keep DIR]

Generating the history takes minutes; with `--keep DIR` it is generated once into DIR (the
SQLite file) and a PostgreSQL database named after DIR, kept, and reused by the next run with
the same DIR (upgraded to the current schema first); drop the database with `--drop`.

Targets (issue 18): a month in < 2 s, a year in < 5 s, on the 2-core dev machine.
"""

from __future__ import annotations

import argparse
import math
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

from sqlalchemy import Connection, Engine, create_engine, insert, text

from mailrouter import kpi
from mailrouter.db import create_schema, make_engine
from mailrouter.models import CASE, CUSTOMER, MESSAGE, STATUS_CHANGE

ROOT = Path(__file__).resolve().parents[1]
END = datetime(2026, 12, 3, 6, 0, tzinfo=UTC)  # "now": the history's last moment
DAYS = 730
# department: (prefix, time zone, share of the cases)
DEPARTMENTS = {
    "it": ("IT", "Europe/Oslo", 0.45),
    "hr": ("HR", "Europe/Oslo", 0.15),
    "facilities": ("FAC", "Europe/Stockholm", 0.25),
    "finance": ("FIN", "Europe/Helsinki", 0.15),
}
CATEGORIES = ("hardware", "software", "access", "network", "payroll", "building", "")
PRIORITIES = (("low", 0.2), ("normal", 0.6), ("high", 0.15), ("urgent", 0.05))
AGENTS = tuple(f"agent{n}@desk.example" for n in range(1, 31))
GROUPS = ("first-line", "second-line", "specialists", "")
CHUNK = 5000

CONFIG = """
database_url = "{url}"
rules = "{root}/rules"
templates = "{root}/templates"
[smtp]
host = "127.0.0.1"
port = 25
security = "none"
[business_hours.oslo]
time_zone = "Europe/Oslo"
holidays = "NO"
[business_hours.stockholm]
time_zone = "Europe/Stockholm"
holidays = "SE"
[business_hours.helsinki]
time_zone = "Europe/Helsinki"
holidays = "FI"
{mailboxes}
"""
MAILBOX = """
[mailboxes.{name}]
address = "{name}@desk.example"
display_name = "{name}"
prefix = "{prefix}"
business_hours = "{hours}"
[mailboxes.{name}.imap]
host = "127.0.0.1"
user = "{name}@desk.example"
password_env = "UNUSED"
"""


def say(line: str) -> None:
    print(line, flush=True)


def arrival(rng: random.Random, zone: ZoneInfo) -> datetime:
    """A moment in the two years, mostly on weekdays between 07 and 17 local time."""
    while True:
        day = END.date() - timedelta(days=rng.randrange(DAYS))
        weekend = day.weekday() >= 5
        if weekend and rng.random() > 0.15:
            continue
        hour = rng.gauss(11.5, 3) if rng.random() < 0.85 else rng.uniform(0, 24)
        hour = min(max(hour, 0.0), 23.99)
        local = datetime.combine(day, datetime.min.time(), zone) + timedelta(hours=hour)
        moment = local.astimezone(UTC)
        if moment < END - timedelta(hours=1):
            return moment


def lognormal_hours(rng: random.Random, median: float, spread: float) -> timedelta:
    return timedelta(hours=rng.lognormvariate(math.log(median), spread))


def history(rng: random.Random, cases: int, messages: int) -> Iterator[tuple[str, dict[str, object]]]:
    """(table, row) for every row, cases first within each case's rows."""
    organisations = [f"org{n}.example" for n in range(400)]
    customers = [(n + 1, f"person{n}@{rng.choice(organisations)}") for n in range(6000)]
    for customer_id, address in customers:
        yield (
            "customer",
            {
                "id": customer_id,
                "address": address,
                "name": f"Person {customer_id}",
                "organisation": address.rpartition("@")[2],
                "created_at": END - timedelta(days=DAYS + 1),
            },
        )
    per_case = messages / cases
    names = list(DEPARTMENTS)
    shares = [share for _, _, share in DEPARTMENTS.values()]
    counters = {name: 1000 for name in names}
    for case_id in range(1, cases + 1):
        department = rng.choices(names, shares)[0]
        prefix, zone, _ = DEPARTMENTS[department]
        counters[department] += 1
        created = arrival(rng, ZoneInfo(zone))
        customer_id = rng.choice(customers)[0] if rng.random() < 0.7 else rng.randrange(1, 300)
        case = {
            "id": case_id,
            "number": f"{prefix}-{counters[department]}",
            "department": department,
            "subject": f"Case {case_id}: the printer on floor {case_id % 7} å ä ö",
            "status": "new",
            "priority": rng.choices([p for p, _ in PRIORITIES], [w for _, w in PRIORITIES])[0],
            "category": rng.choice(CATEGORIES),
            "group": rng.choice(GROUPS),
            "assignee": rng.choice(AGENTS) if rng.random() < 0.8 else "",
            "tags": [],
            "language": "no",
            "customer_id": customer_id,
            "created_at": created,
            "updated_at": created,
            "sla": "standard",
            "sla_paused_seconds": 0.0,
            "survey_message_id": "",
            "satisfaction_comment": "",
            "agent_replies": 0,
        }
        changes: list[dict[str, object]] = []
        mail = [(created, "in", "customer")]
        moment = created

        def change(
            at: datetime, to: str, changes: list[dict[str, object]] = changes, case_id: int = case_id
        ) -> None:
            before = changes[-1]["to_status"] if changes else "new"
            changes.append({"case_id": case_id, "at": at, "from_status": before, "to_status": to})

        answered = created + lognormal_hours(rng, 3, 1.2)
        if answered < END and rng.random() < 0.96:
            case["first_response_at"] = answered
            waited = (answered - created).total_seconds()
            case["first_response_seconds"] = waited
            business = waited * rng.uniform(0.2, 0.5)
            case["first_response_business_seconds"] = business
            case["first_response_met"] = business <= 4 * 3600
            case["agent_replies"] = 1
            mail.append((answered, "out", "agent"))
            change(answered, "open")
            moment = answered
            paused = 0.0
            if rng.random() < 0.25:  # waits on the customer
                change(moment + timedelta(minutes=5), "pending")
                back = moment + lognormal_hours(rng, 20, 1.0)
                paused = (back - moment).total_seconds() * 0.35
                mail.append((back, "in", "customer"))
                change(back, "open")
                case["customer_replied_at"] = back
                moment = back
            while rng.random() < per_case / 8:  # more back and forth
                moment += lognormal_hours(rng, 5, 1.0)
                mail += [(moment, "in", "customer"), (moment + timedelta(hours=1), "out", "agent")]
                case["customer_replied_at"] = moment
                case["agent_replies"] = int(str(case["agent_replies"])) + 1
                moment += timedelta(hours=1)
            resolved = moment + lognormal_hours(rng, 6, 1.3)
            if resolved < END and rng.random() < 0.93:
                change(resolved, "resolved")
                seconds = (resolved - created).total_seconds()
                business = max(seconds * rng.uniform(0.2, 0.45) - paused, 60.0)
                replies = int(str(case["agent_replies"]))
                case.update(
                    first_resolved_at=resolved,
                    resolved_at=resolved,
                    resolution_seconds=seconds,
                    resolution_business_seconds=business,
                    resolution_met=business <= 16 * 3600,
                    resolution_replies=replies,
                    first_contact_resolution=replies == 1 and "customer_replied_at" not in case,
                    sla_paused_seconds=paused,
                )
                if rng.random() < 0.4:
                    case["survey_sent_at"] = resolved
                    if rng.random() < 0.35:
                        case["survey_answered_at"] = resolved + lognormal_hours(rng, 10, 1)
                        case["satisfaction_score"] = rng.choices((1, 2, 3, 4, 5), (3, 4, 10, 35, 48))[0]
                moment = resolved
                if rng.random() < 0.06:  # reopened, resolved again
                    moment += lognormal_hours(rng, 30, 0.8)
                    mail.append((moment, "in", "customer"))
                    change(moment, "open")
                    moment += lognormal_hours(rng, 8, 1)
                    mail.append((moment, "out", "agent"))
                    change(moment, "resolved")
                    case["resolved_at"] = moment
                closed = moment + timedelta(days=7)
                if closed < END:
                    change(closed, "closed")
                    case["closed_at"] = closed
        changes = [c for c in changes if c["at"] < END]  # type: ignore[operator]
        case["status"] = changes[-1]["to_status"] if changes else "new"
        case["updated_at"] = changes[-1]["at"] if changes else created
        yield "case", case
        for row in changes:
            yield "statuschange", row
        for number, (at, direction, role) in enumerate(m for m in mail if m[0] < END):
            yield (
                "message",
                {
                    "case_id": case_id,
                    "direction": direction,
                    "author_role": role,
                    "mailbox": department,
                    "dedupe_key": f"{department}:<{case_id}.{number}@bench>" if direction == "in" else None,
                    "message_id": f"<{case_id}.{number}@bench>",
                    "in_reply_to": "",
                    "references": [],
                    "from_addr": "",
                    "from_name": "",
                    "to_addrs": [],
                    "cc_addrs": [],
                    "subject": str(case["subject"]),
                    "text": "Hei! Skrivaren virker ikke. " * 8,
                    "html": "",
                    "received_at": at,
                },
            )


TABLES = {"customer": CUSTOMER, "case": CASE, "statuschange": STATUS_CHANGE, "message": MESSAGE}


def fill(engine: Engine, cases: int, messages: int) -> dict[str, int]:
    """Insert the history in chunks of rows per table, in one transaction; row counts."""
    rng = random.Random(18)
    pending: dict[str, list[dict[str, object]]] = {name: [] for name in TABLES}
    counted = dict.fromkeys(TABLES, 0)
    case_defaults = {c.name: None for c in CASE.columns if c.nullable}
    with engine.begin() as connection:

        def flush(name: str) -> None:
            if pending[name]:
                connection.execute(insert(TABLES[name]), pending[name])
                counted[name] += len(pending[name])
                pending[name] = []

        for name, row in history(rng, cases, messages):
            if name == "case":
                row = {**case_defaults, **row}
                flush("customer")
            pending[name].append(row)
            if len(pending[name]) >= CHUNK:
                if name != "customer":
                    flush("case")
                flush(name)
        for name in TABLES:
            flush(name)
    return counted


def timed(function: object, repeat: int = 3) -> float:
    """The median of `repeat` runs, in seconds."""
    durations = []
    for _ in range(repeat):
        start = time.perf_counter()
        function()  # type: ignore[operator]
        durations.append(time.perf_counter() - start)
    return statistics.median(durations)


def periods() -> dict[str, tuple[str, ...]]:
    last = END.date() - timedelta(days=1)
    year = (last - timedelta(days=364)).isoformat(), last.isoformat()
    return {
        "week": ("--period", "last-week"),
        "month": ("--period", "last-month"),
        "year": ("--from", year[0], "--to", year[1]),
    }


def period_of(options: tuple[str, ...], today: date) -> kpi.Period:
    if options[0] == "--period":
        return kpi.named_period(options[1], today)
    return kpi.dates_period(date.fromisoformat(options[1]), date.fromisoformat(options[3]))


def prepared(label: str, url: str, directory: Path, cases: int, messages: int) -> tuple[Engine, Path]:
    """The migrated database at `url` with the generated history, analysed, and a config.toml
    for it in `directory` (bench/dashboard.py's history too)."""
    engine = make_engine(url)
    with engine.connect() as connection:
        kept = engine.dialect.has_table(connection, "case")
    create_schema(engine)
    if kept:
        with engine.connect() as connection:
            found = connection.execute(text('SELECT count(*) FROM "case"')).scalar()
        say(f"{label}: reusing the kept history ({found} cases), upgraded to the current schema")
    else:
        start = time.perf_counter()
        counted = fill(engine, cases, messages)
        rows = ", ".join(f"{n} {table}" for table, n in counted.items())
        say(f"{label}: generated {rows} in {time.perf_counter() - start:.1f} s")
    with engine.connect() as connection:
        connection.execute(text("ANALYZE"))  # what a database that has lived two years knows
        connection.commit()
    mailboxes = "".join(
        MAILBOX.format(name=name, prefix=prefix, hours=zone.split("/")[1].lower())
        for name, (prefix, zone, _) in DEPARTMENTS.items()
    )
    config = directory / f"{engine.dialect.name}.toml"
    config.write_text(CONFIG.format(url=url, root=ROOT, mailboxes=mailboxes))
    return engine, config


def measure(label: str, url: str, directory: Path) -> None:
    engine, config = prepared(label, url, directory, ARGS.cases, ARGS.messages)
    zones = {name: ZoneInfo(zone) for name, (_, zone, _) in DEPARTMENTS.items()}
    today = END.astimezone(zones["it"]).date()
    for name, options in periods().items():
        period = period_of(options, today)
        in_process = timed(lambda p=period: kpi.figures(engine, p, zones, now=END))
        command = [
            sys.executable,
            "-m",
            "mailrouter",
            "--config",
            str(config),
            "report",
            *options,
            "--format",
            "json",
        ]
        whole = timed(lambda c=command: _run(c))
        say(f"{label}: {name:<5} kpi.figures {in_process:6.2f} s   `mailrouter report` {whole:6.2f} s")
    startup = timed(lambda: subprocess.run([sys.executable, "-c", "import mailrouter.cli"], check=True), 1)
    say(f"{label}: importing mailrouter.cli alone takes {startup:.2f} s")
    engine.dispose()


def _run(command: list[str]) -> None:
    done = subprocess.run(command, capture_output=True, check=False)
    if done.returncode != 0:
        say(done.stderr.decode()[-2000:])


def on_each_database(
    measure: Callable[[str, str, Path], None], postgres: str, keep: Path | None = None
) -> None:
    """`measure(label, url, directory)` on a new SQLite file, then (unless `postgres` is "") on a
    new PostgreSQL database on that server, dropped afterwards; with `keep`, on the history kept
    there (made on the first run) instead, and nothing is dropped."""
    if keep is not None:
        keep.mkdir(parents=True, exist_ok=True)
        measure("SQLite", f"sqlite:///{keep.resolve()}/report.db", keep)
        if postgres:
            name = kept_database(keep)
            with _admin(postgres) as connection:
                if (
                    connection.execute(
                        text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": name}
                    ).first()
                    is None
                ):
                    connection.execute(text(f'CREATE DATABASE "{name}"'))
            measure("PostgreSQL", f"{postgres}/{name}", keep)
        return
    with tempfile.TemporaryDirectory(prefix="bench-report-") as directory:
        measure("SQLite", f"sqlite:///{directory}/report.db", Path(directory))
        if postgres:
            name = f"bench_report_{uuid.uuid4().hex[:8]}"
            with _admin(postgres) as connection:
                connection.execute(text(f'CREATE DATABASE "{name}"'))
            try:
                measure("PostgreSQL", f"{postgres}/{name}", Path(directory))
            finally:
                drop(postgres, name)


def kept_database(keep: Path) -> str:
    """The PostgreSQL database that holds the history kept in `keep`."""
    return "bench_report_" + "".join(c if c.isalnum() else "_" for c in keep.resolve().name).lower()


@contextmanager
def _admin(postgres: str) -> Iterator[Connection]:
    admin = create_engine(f"{postgres}/postgres", isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as connection:
            yield connection
    finally:
        admin.dispose()


def drop(postgres: str, name: str) -> None:
    with _admin(postgres) as connection:
        connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def main() -> None:
    if ARGS.drop:
        if ARGS.keep is None or not ARGS.postgres:
            raise SystemExit("--drop needs --keep DIR and a --postgres server")
        drop(ARGS.postgres, kept_database(ARGS.keep))
        say(f"dropped {kept_database(ARGS.keep)}")
        return
    on_each_database(measure, ARGS.postgres, ARGS.keep)


parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("--cases", type=int, default=100_000)
parser.add_argument("--messages", type=int, default=400_000)
parser.add_argument(
    "--postgres",
    default=os.environ.get("MAILROUTER_TEST_POSTGRES", "postgresql+psycopg://postgres@127.0.0.1:5432"),
    help='a server URL without database; "" skips PostgreSQL',
)
parser.add_argument("--keep", type=Path, help="generate the history once into DIR and reuse it")
parser.add_argument("--drop", action="store_true", help="drop the PostgreSQL database kept for --keep")
ARGS = parser.parse_args() if __name__ == "__main__" else parser.parse_args([])

if __name__ == "__main__":
    main()
