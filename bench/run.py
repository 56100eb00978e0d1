"""mailrouter benchmark: throughput, single-stage limits, latency, idle cost and memory, on the real stack.

    .venv/bin/python bench/run.py            # everything, a few minutes
    .venv/bin/python bench/run.py --quick    # a smaller version of everything, about a minute

Needs the mail stack (scripts/mailstack start, with the same MAILSTACK_* variables) and, for the
PostgreSQL run, a server at --postgres (skip it with --postgres "").
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import hostile, idle, latency, limits, stages
from bench.corpus import big_message, build, corpus
from bench.harness import append_all, count_messages, machine_cpu, make_daemon, passed_on
from tests.mailstack import DISCARD_DOMAIN, MailStack, stack_from_env

TARGET_RATE = 200.0
TARGET_RATIO = 0.7
TARGET_P50, TARGET_P99 = 0.5, 2.0
TARGET_IDLE_GROWTH = 2.0
TARGET_RSS_MB = 200.0
SMTP_LIMIT = "SMTP hand-off, aiosmtplib (one connection)"


def say(text: str = "") -> None:
    print(text, flush=True)


def verdict(met: bool) -> str:
    return "met" if met else "MISSED"


def machine() -> dict[str, str]:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    nproc = subprocess.run(["nproc"], capture_output=True, text=True).stdout.strip()
    memory = subprocess.run(["free", "-h"], capture_output=True, text=True).stdout.splitlines()[1].split()[1]
    return {
        "cpu": cpu,
        "nproc": nproc,
        "memory": memory,
        "python": platform.python_version(),
        "loadavg": load_average(),
    }


def load_average() -> str:
    """Other work on the machine skews every number here: say how busy it was."""
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def throughput(
    stack: MailStack,
    work: Path,
    database_url: str,
    count: int,
    *,
    with_limits: bool,
    label: str,
    deliver_locally: bool = False,
    with_agents: bool = False,
) -> dict[str, Any]:
    say(f"\n== Throughput on {label}: {count} messages ==")
    run = uuid.uuid4().hex[:8]
    agents = tuple(f"agent-{run}-{n}@{DISCARD_DOMAIN}" for n in (1, 2)) if with_agents else ()
    daemon = make_daemon(stack, work / f"daemon-{label}", database_url, agents=agents)
    department, password = daemon.accounts["it"]
    # A backlog comes from many people: about four messages each (three new, one reply).
    senders = range(max(1, count // 4))
    if deliver_locally:  # into four local mailboxes, as the runs before 2026-11-25 04:00 did
        accounts = stack.new_accounts(*["bench-cust"] * 4)
        customers = [_subaddress(accounts[k % 4][0], k) for k in senders]
    else:  # elsewhere: the relay accepts, queues and drops them, as it would pass them on
        customers = [f"kunde-{run}-{k}@{DISCARD_DOMAIN}" for k in senders]
    messages, replies = corpus(count, run=run, to=department, customers=customers)
    size = sum(map(len, messages))
    seconds = append_all(stack, department, password, messages)
    say(
        f"preloaded {count} messages ({size / count / 1024:.1f} KB average, {replies} replies) "
        f"by IMAP APPEND in {seconds:.1f}s"
    )
    result: dict[str, Any] = {"messages": count, "replies": replies, "average_kb": size / count / 1024}

    if with_limits:
        result["limits"], result["limits_together"] = single_stage_limits(
            stack, work, department, password, count, letters_per_message=(count - replies) / count
        )
    else:
        rate = limits.commits(database_url, min(count, 1000)).rate
        result["commit_rate"] = rate
        say(f"  commit rate on this database, one row per commit: {rate:.0f}/s")

    # Each new case is acknowledged; with agents, each new case and each reply notifies them too.
    letters = count - replies + (count if agents else 0)
    daemon.start()
    try:
        ready = daemon.wait_ready()
        machine_before, groups_before = machine_cpu(), daemon.cpu()
        done = daemon.wait_done(count, letters, timeout=max(180.0, count / 5))
        machine_after, groups_after = machine_cpu(), daemon.cpu()
        rss = daemon.peak_rss_mb()
    finally:
        daemon.stop()
    elapsed = done - ready
    result.update(
        startup_s=ready,
        elapsed_s=elapsed,
        rate=count / elapsed,
        rate_including_startup=count / done,
        peak_rss_mb=rss,
        acknowledgements=count - replies,
        notifications=count if agents else 0,
    )
    notified = f" and {count} notifications to {len(agents)} agents" if agents else ""
    say(
        f"daemon ready after {ready:.2f}s; all {count} registered and {count - replies} acknowledgements"
        f"{notified} accepted by the relay {elapsed:.2f}s later"
    )
    say(
        f"end-to-end: {result['rate']:.0f} messages/s ({result['rate_including_startup']:.0f}/s counting "
        f"start-up); peak RSS {rss:.0f} MB (daemon and parse workers)"
    )
    result["cpu"] = cpu_report(
        count,
        machine_after[0] - machine_before[0],
        machine_after[1] - machine_before[1],
        {name: groups_after[name] - groups_before[name] for name in groups_after},
    )
    # Let Postfix finish with the acknowledgements before anything else is measured.
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if deliver_locally:
            done_with = sum(count_messages(stack, *account) for account in accounts)
        else:
            done_with = passed_on(stack, f"kunde-{run}-")
        agents_done = not agents or passed_on(stack, f"agent-{run}-") >= count * len(agents)
        if done_with >= count - replies and agents_done:
            break
        time.sleep(0.5)

    if with_limits:
        say("\n-- time per stage (the daemon's stage functions, in this process, one at a time) --")
        per = stages.run_stages(
            stack,
            daemon.directory / "config.toml",
            work / f"stages-{run}.db",
            department,
            password,
            messages,
            send_sample=min(count, 500),
        )
        result["stages"] = per
        total = 0.0
        for name, value in per["per_message"].items():
            if not name.startswith(" "):
                total += value
            say(f"  {name:<40} {value * 1000:7.2f} ms/message  ({1 / value if value else 0:7.0f}/s alone)")
        say(
            f"  {'sum (one message, all stages in turn)':<40} {total * 1000:7.2f} ms"
            f"  → {1 / total:.0f}/s serial"
        )
        slowest = min(limit["rate"] for limit in result["limits"].values())
        result["ratio_to_slowest_limit"] = result["rate"] / slowest
        say(
            f"\nend-to-end / slowest single-stage limit ({slowest:.0f}/s): "
            f"{result['ratio_to_slowest_limit']:.2f}; / the four together "
            f"({result['limits_together']:.0f}/s): {result['rate'] / result['limits_together']:.2f}"
        )
    return result


def cpu_report(count: int, busy: float, total: float, groups: dict[str, float]) -> dict[str, float]:
    """Where the machine's CPU time went while the daemon worked, per message. `busy` and
    `total`: the machine's busy and all CPU seconds, every core added up."""
    cores = os.cpu_count() or 1
    per_message = {name: seconds / count for name, seconds in groups.items()}
    per_message["the rest (kernel, the benchmark, …)"] = max(busy - sum(groups.values()), 0.0) / count
    shown = ", ".join(f"{name} {seconds * 1000:.2f}" for name, seconds in per_message.items())
    say(f"CPU per message, ms: {shown}")
    wall = total / cores
    say(
        f"  machine {busy / wall * 100:.0f}% busy of {cores * 100}%; the daemon "
        f"{groups['daemon'] / wall * 100:.0f}% of one core (its Python runs on one at a time)"
    )
    return {**per_message, "machine_busy_share": busy / total}


def _subaddress(address: str, detail: int) -> str:
    local, domain = address.split("@")
    return f"{local}+{detail}@{domain}"


def single_stage_limits(
    stack: MailStack, work: Path, department: str, password: str, count: int, letters_per_message: float
) -> tuple[dict[str, dict[str, float]], float]:
    """Each limit's rate and CPU time per message; and, from those, the most messages per second
    the machine could take through mailrouter's own path (aioimaplib, mail-parser, a commit and
    the acknowledgements) if nothing but those libraries and servers did any work."""
    say("\n-- single-stage limits, same messages (CPU: the whole machine's busy time per message) --")
    found: dict[str, limits.Limit] = {}
    found["IMAP fetch, imaplib (one UID FETCH 1:*)"], fetched = limits.imaplib_fetch(
        stack, department, password
    )
    found["IMAP fetch, aioimaplib (batches of 50)"] = limits.aioimaplib_fetch(stack, department, password, 50)
    found["parse, mail-parser parse_from_bytes"] = limits.mailparser_parse(fetched)
    found["SQLite commit, one row per commit"] = limits.commits(
        f"sqlite:///{work}/commits-{uuid.uuid4().hex[:6]}.db", count
    )
    # To the discard domain, as the acknowledgements go: the relay's work is the same.
    sink = f"sink-{uuid.uuid4().hex[:8]}@{DISCARD_DOMAIN}"
    letter, _ = build(0, run="sink", to=sink, customers=["it@example.test"], rng=random.Random(1))
    found[SMTP_LIMIT] = limits.smtp_handoff(stack, "it@example.test", sink, [letter] * count)
    for name, limit in found.items():
        say(f"  {name:<44} {limit.rate:8.0f} messages/s  {limit.cpu * 1000:6.2f} ms CPU")
    path = {
        "IMAP fetch, aioimaplib (batches of 50)": 1.0,
        "parse, mail-parser parse_from_bytes": 1.0,
        "SQLite commit, one row per commit": 1.0,
        SMTP_LIMIT: letters_per_message,
    }
    cpu = sum(found[name].cpu * share for name, share in path.items())
    cores = os.cpu_count() or 1
    together = cores / cpu
    say(
        f"  aioimaplib + mail-parser + a commit + {letters_per_message:.2f} letters: {cpu * 1000:.2f} ms "
        f"CPU per message, so at most {together:.0f} messages/s on {cores} cores"
    )
    deadline = time.monotonic() + 180  # let Postfix finish with them
    while passed_on(stack, sink.partition("@")[0]) < count and time.monotonic() < deadline:
        time.sleep(0.2)
    return {name: asdict(limit) for name, limit in found.items()}, together


def latency_part(
    stack: MailStack, work: Path, rate: float, seconds: float, poll_interval: float
) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for mode, idle_on, poll in (
        ("IDLE", True, 30),
        (f"polling every {poll_interval:g} s", False, poll_interval),
    ):
        say(f"\n== Latency with {mode}: {rate:g} mails/s for {seconds:g}s ==")
        daemon = make_daemon(
            stack,
            work / f"latency-{mode[:4]}",
            f"sqlite:///{work}/latency-{mode[:4]}.db",
            idle=idle_on,
            poll_interval=poll,
        )
        customer = stack.new_account("bench-lat")
        daemon.start()
        try:
            daemon.wait_ready()
            values, sent = latency.measure(
                stack, daemon.accounts["it"][0], customer, rate, seconds, uuid.uuid4().hex[:8]
            )
        finally:
            daemon.stop()
        row = {
            "sent": sent,
            "acknowledged": len(values),
            "p50": latency.percentile(values, 0.5),
            "p90": latency.percentile(values, 0.9),
            "p99": latency.percentile(values, 0.99),
            "max": max(values, default=float("nan")),
        }
        results[mode] = row
        say(
            f"  {len(values)}/{sent} acknowledged: p50 {row['p50'] * 1000:.0f} ms, "
            f"p90 {row['p90'] * 1000:.0f} ms, "
            f"p99 {row['p99'] * 1000:.0f} ms, max {row['max'] * 1000:.0f} ms"
        )
    return results


def idle_part(stack: MailStack, sizes: list[int]) -> list[dict[str, Any]]:
    say("\n== Idle cost: one poll cycle with nothing new (fetch worker's _drain) ==")
    rows = []
    for size in sizes:
        address, password = stack.new_account("bench-idle")
        written = idle.fill_maildir(stack, address, size)
        row = idle.poll_cost(stack, address, password)
        row["maildir_write_s"] = written
        rows.append(row)
        say(
            f"  {row['messages']:>7} messages (written in {written:.1f}s, "
            f"first SELECT {row['first_select_s']:.2f}s): "
            f"poll {row['poll_median_ms']:.2f} ms median, {row['poll_p90_ms']:.2f} ms p90, "
            f"{row['poll_commands']:.0f} command, {row['poll_bytes_out']:.0f} B out / "
            f"{row['poll_bytes_in']:.0f} B in"
            f"  | UID SEARCH ALL would be {row['naive_search_all_ms']:.1f} ms, "
            f"{row['naive_search_all_bytes_in'] / 1024:.0f} KB"
        )
    return rows


def memory_part(stack: MailStack, work: Path, megabytes: int) -> dict[str, float]:
    say(f"\n== Memory: one {megabytes} MB message ==")
    daemon = make_daemon(stack, work / "memory", f"sqlite:///{work}/memory.db")
    department, password = daemon.accounts["it"]
    customer = stack.new_account("bench-big")
    raw = big_message(
        run=uuid.uuid4().hex[:8], to=department, customer=customer[0], size=megabytes * 1024 * 1024
    )
    append_all(stack, department, password, [raw])
    daemon.start()
    try:
        ready = daemon.wait_ready()
        done = daemon.wait_done(1, 1, timeout=300)
        rss = daemon.peak_rss_mb()
    finally:
        daemon.stop()
    say(
        f"  {len(raw) / 1024 / 1024:.1f} MB message registered and acknowledged in {done - ready:.2f}s; "
        f"peak RSS {rss:.0f} MB (daemon and parse workers)"
    )
    return {"message_mb": len(raw) / 1024 / 1024, "seconds": done - ready, "peak_rss_mb": rss}


def postgres_database(server: str, name: str, create: bool) -> None:
    import psycopg

    with psycopg.connect(f"{server}/postgres", autocommit=True) as connection:
        if create:
            connection.execute(f'CREATE DATABASE "{name}"')
        else:
            connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def summary(results: dict[str, Any]) -> None:
    say("\n== Targets ==")
    sqlite = results.get("throughput_sqlite")
    if sqlite:
        say(
            f"  end-to-end ≥ {TARGET_RATE:.0f}/s on SQLite: {sqlite['rate']:.0f}/s — "
            f"{verdict(sqlite['rate'] >= TARGET_RATE)}"
        )
        if "ratio_to_slowest_limit" in sqlite:
            ratio = sqlite["ratio_to_slowest_limit"]
            say(
                f"  ≥ {TARGET_RATIO} × slowest single-stage limit: {ratio:.2f} — "
                f"{verdict(ratio >= TARGET_RATIO)}"
            )
        say(
            f"  peak RSS < {TARGET_RSS_MB:.0f} MB, throughput run: {sqlite['peak_rss_mb']:.0f} MB — "
            f"{verdict(sqlite['peak_rss_mb'] < TARGET_RSS_MB)}"
        )
    postgres = results.get("throughput_postgres")
    if postgres:
        say(f"  (PostgreSQL end-to-end: {postgres['rate']:.0f}/s, peak RSS {postgres['peak_rss_mb']:.0f} MB)")
    lat = results.get("latency", {}).get("IDLE")
    if lat:
        say(
            f"  latency with IDLE p50 < {TARGET_P50}s: {lat['p50']:.3f}s — "
            f"{verdict(lat['p50'] < TARGET_P50)}; "
            f"p99 < {TARGET_P99}s: {lat['p99']:.3f}s — {verdict(lat['p99'] < TARGET_P99)}"
        )
    rows = results.get("idle")
    if rows and len(rows) > 1:
        growth = rows[-1]["poll_median_ms"] / rows[0]["poll_median_ms"]
        bytes_growth = rows[-1]["poll_bytes_in"] / max(rows[0]["poll_bytes_in"], 1)
        say(
            f"  idle poll flat within {TARGET_IDLE_GROWTH:g}× "
            f"from {rows[0]['messages']} to {rows[-1]['messages']}: "
            f"time ×{growth:.2f}, bytes ×{bytes_growth:.2f} — "
            f"{verdict(growth <= TARGET_IDLE_GROWTH and bytes_growth <= TARGET_IDLE_GROWTH)}"
        )
    memory = results.get("memory")
    if memory:
        say(
            f"  peak RSS < {TARGET_RSS_MB:.0f} MB with a {memory['message_mb']:.0f} MB message: "
            f"{memory['peak_rss_mb']:.0f} MB — {verdict(memory['peak_rss_mb'] < TARGET_RSS_MB)}"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="smaller sizes throughout (about a minute)")
    parser.add_argument("--messages", type=int, help="throughput run size (default 2000, quick 300)")
    parser.add_argument("--latency-rate", type=float, default=5.0, help="mails per second (default 5)")
    parser.add_argument("--latency-seconds", type=float, help="how long to send (default 60, quick 10)")
    parser.add_argument(
        "--poll-interval", type=float, default=1.0, help="the polling daemon's poll_interval (default 1)"
    )
    parser.add_argument("--idle-sizes", help="comma-separated folder sizes (default 100,10000,100000)")
    parser.add_argument(
        "--big-mb", type=int, default=25, help="size of the memory run's message (default 25)"
    )
    parser.add_argument(
        "--postgres",
        default="postgresql+psycopg://postgres@127.0.0.1:5432",
        help='PostgreSQL server URL without database; "" skips the PostgreSQL run',
    )
    parser.add_argument(
        "--deliver-locally",
        action="store_true",
        help="throughput runs: deliver the acknowledgements into local mailboxes (Dovecot on the same "
        "cores) instead of letting the relay drop them",
    )
    parser.add_argument(
        "--agents",
        action="store_true",
        help="throughput runs: two agents in every group, notified of each new case and each reply "
        "with the original attached, as in production",
    )
    parser.add_argument(
        "--only", help="comma-separated parts: throughput,postgres,latency,idle,memory,hostile"
    )
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)

    count = args.messages or (300 if args.quick else 2000)
    seconds = args.latency_seconds or (10.0 if args.quick else 60.0)
    sizes = [
        int(s)
        for s in (args.idle_sizes or ("100,1000,10000" if args.quick else "100,10000,100000")).split(",")
    ]
    parts = set((args.only or "throughput,postgres,latency,idle,memory,hostile").split(","))
    if not args.postgres:
        parts.discard("postgres")

    stack = stack_from_env()
    stack.start()
    results: dict[str, Any] = {"date": datetime.now(UTC).isoformat(timespec="seconds"), "machine": machine()}
    say(f"mailrouter benchmark, {results['date']}: {results['machine']}")
    with tempfile.TemporaryDirectory(prefix="mailrouter-bench-") as directory:
        work = Path(directory)
        if "throughput" in parts:
            results["throughput_sqlite"] = throughput(
                stack,
                work,
                f"sqlite:///{work}/throughput.db",
                count,
                with_limits=True,
                label="SQLite",
                deliver_locally=args.deliver_locally,
                with_agents=args.agents,
            )
        if "postgres" in parts:
            name = f"mailrouter_bench_{uuid.uuid4().hex[:8]}"
            postgres_database(args.postgres.replace("+psycopg", ""), name, create=True)
            try:
                results["throughput_postgres"] = throughput(
                    stack,
                    work,
                    f"{args.postgres}/{name}",
                    count,
                    with_limits=False,
                    label="PostgreSQL",
                    deliver_locally=args.deliver_locally,
                    with_agents=args.agents,
                )
            finally:
                postgres_database(args.postgres.replace("+psycopg", ""), name, create=False)
        if "latency" in parts:
            results["latency"] = latency_part(stack, work, args.latency_rate, seconds, args.poll_interval)
        if "idle" in parts:
            results["idle"] = idle_part(stack, sizes)
        if "memory" in parts:
            results["memory"] = memory_part(stack, work, args.big_mb)
        if "hostile" in parts:
            results["hostile"] = hostile.run(stack, work, 100 if args.quick else 300, say)
    results["loadavg_at_end"] = load_average()
    say(
        f"\nload average at the end: {results['loadavg_at_end']} "
        f"(at the start: {results['machine']['loadavg']})"
    )
    summary(results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
