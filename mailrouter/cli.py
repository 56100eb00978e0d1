"""The `mailrouter` command: a thin layer over the functions the daemon uses."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from pathlib import Path

import aiosmtplib
from alembic.migration import MigrationContext
from sqlmodel import Session, col, select

from mailrouter import __version__, sla
from mailrouter.config import Config, load_config
from mailrouter.daemon import Loaded, load, open_database, run
from mailrouter.errors import MailrouterError, ParseError
from mailrouter.intake import Intake
from mailrouter.models import Case, Customer, Event, Message, OutboxMessage, utcnow
from mailrouter.parse import Address, Inbound, parse
from mailrouter.review import retry, screened, set_aside
from mailrouter.route import Decision, route
from mailrouter.screen import screen
from mailrouter.send import classify, refused_recipients

DEFAULT_CONFIG = "config.toml"


def _config_path(args: argparse.Namespace) -> Path:
    return Path(args.config or os.environ.get("MAILROUTER_CONFIG") or DEFAULT_CONFIG)


def cmd_run(args: argparse.Namespace) -> int:
    run(load(load_config(_config_path(args))))
    return 0


def _sample_context(loaded: Loaded, department: str) -> dict[str, object]:
    mailbox = loaded.config.mailboxes[department]
    sample = Inbound(
        sha256="0" * 64,
        size=0,
        message_id="<sample@example.invalid>",
        in_reply_to="",
        references=(),
        sender=Address("kari.nordmann@example.invalid", "Kari Nordmann"),
        reply_to=(),
        to=(),
        cc=(),
        subject="Skrivaren på plan 3 fungerar inte",
        text="Hej!",
        html="",
        headers={},
    )
    case = Case(number=f"{mailbox.prefix}-1001", department=department, subject=sample.subject, tags=[])
    customer = Customer(
        address="kari.nordmann@example.invalid",
        name="Kari Nordmann",
        organisation="example.invalid",
    )
    return {
        "case": case,
        "customer": customer,
        "department": mailbox,
        "message": sample,
        "why": "New case",
        "other_cases": [case],
        "organisation_open_cases": 2,
        "organisation_open_cases_or_more": False,
    }


def cmd_check(args: argparse.Namespace) -> int:
    """Validate config, rules and templates; render every acknowledgement once with sample data."""
    path = _config_path(args)
    problems: list[str] = []
    try:
        loaded = load(load_config(path))
    except MailrouterError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    problems.extend(loaded.templates.check())
    groups = loaded.agents.groups
    for rule in loaded.rules:
        if groups and rule.then.group and rule.then.group not in groups:
            problems.append(
                f"rule {rule.name!r} ({rule.source}): then.group {rule.then.group!r} is not in agents.groups"
            )
    templates = {(name, m.template) for name, m in loaded.config.mailboxes.items() if m.acknowledge}
    for rule in loaded.rules:
        if rule.then.template:
            when_mailboxes = rule.when.mailbox
            if rule.then.department:
                departments = [rule.then.department]
            elif when_mailboxes:
                departments = [when_mailboxes] if isinstance(when_mailboxes, str) else when_mailboxes
            else:
                departments = list(loaded.config.mailboxes)
            templates.update((d, rule.then.template) for d in departments)
    if loaded.agents.signer is not None:
        templates.update((name, kind) for name in loaded.config.mailboxes for kind in ("notify", "remind"))
    for department, template in sorted(templates):
        languages = ("en", "sv", "no")
        try:
            loaded.templates.render(department, template, languages, _sample_context(loaded, department))
        except MailrouterError as exc:
            problems.append(f"template {department}/{template}: {exc}")
    if args.connect:
        problems.extend(_check_relay(loaded))
    for problem in problems:
        print(f"error: {problem}", file=sys.stderr)
    if problems:
        return 1
    config = loaded.config
    print(
        f"{config.path}: ok — {len(config.mailboxes)} mailbox(es), {len(loaded.rules)} rule(s), "
        f"{len(templates)} template(s)"
    )
    return 0


def _check_relay(loaded: Loaded) -> list[str]:
    """Connect and log in to the relay, and warn of the agents it refuses (RCPT TO, no DATA)."""
    config = loaded.config
    mail_from = next(iter(config.mailboxes.values())).address
    agents = sorted(loaded.agents.agents)
    try:
        refused = asyncio.run(refused_recipients(config.smtp, config.secret("smtp"), mail_from, agents))
    except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
        return [f"smtp relay {config.smtp.host}:{config.smtp.port}: {classify(exc)}"]
    groups = loaded.agents.groups
    for refusal in refused:
        of = ", ".join(sorted(name for name, members in groups.items() if refusal.recipient in members))
        print(f"warning: the relay refuses agent {refusal} (group {of})", file=sys.stderr)
    return []


def _guess_mailbox(config: Config, inbound: Inbound) -> str:
    addresses = {a.address for a in (*inbound.to, *inbound.cc)}
    for name, mailbox in config.mailboxes.items():
        if mailbox.address.lower() in addresses:
            return name
    return next(iter(config.mailboxes))


def cmd_explain(args: argparse.Namespace) -> int:
    """What routing would decide for a message, rule by rule. Touches no database, sends nothing."""
    loaded = load(load_config(_config_path(args), resolve_secrets=False))
    config = loaded.config
    try:
        inbound = parse(Path(args.file).read_bytes())
    except ParseError as exc:
        print(f"error: {args.file}: {exc}", file=sys.stderr)
        return 1
    mailbox = args.mailbox or _guess_mailbox(config, inbound)
    if mailbox not in config.mailboxes:
        print(
            f"error: no mailbox {mailbox!r}; configured: {', '.join(config.mailboxes)}",
            file=sys.stderr,
        )
        return 1
    verdict = screen(inbound, config.own_addresses())
    decision = route(inbound, mailbox, config.mailboxes, loaded.rules, explain=True)
    sender = inbound.sender.address if inbound.sender else "(no sender)"
    print(f"message:   {inbound.subject!r} from {sender}, as received by mailbox {mailbox!r}")
    print(f"screening: {verdict.kind.value} — {verdict.explanation}")
    if not verdict.may_open_case:
        print("           (screening alone would keep this message from opening a case)")
    print("rules:")
    width = max((len(v.rule) for v in decision.verdicts), default=0)
    for v in decision.verdicts:
        mark = "MATCH" if v.matched else ("skip " if v.skipped else "no   ")
        print(f"  {mark} {v.rule:<{width}}  [{v.source}]  {'; '.join(v.reasons)}")
    if not decision.verdicts:
        print("  (no rules loaded)")
    acknowledgement = (
        f"{decision.department}/{decision.template} ({decision.language})" if decision.template else "none"
    )
    if decision.template and not verdict.may_acknowledge:
        acknowledgement += " — but screening forbids an automatic answer"
    print("decision:")
    for label, value in (
        ("department", decision.department),
        ("category", decision.category or "-"),
        ("priority", decision.priority),
        ("group", decision.group or "-"),
        ("assignee", decision.assignee or "-"),
        ("tags", ", ".join(decision.tags) or "-"),
        ("acknowledge", acknowledgement),
        ("sla", _sla_explained(config, decision)),
        ("because", decision.explanation),
    ):
        print(f"  {label:<12}{value}")
    return 0


def _sla_explained(config: Config, decision: Decision) -> str:
    choice = sla.choose(config, decision.sla, decision.department, decision.priority)
    policy = sla.policy(config, choice.policy)
    if policy is None:
        return f"none ({choice.why})"
    targets = f"first response {sla.duration_text(policy.first_response)}"
    if policy.next_response is not None:
        targets += f", next response {sla.duration_text(policy.next_response)}"
    targets += f", resolution {sla.duration_text(policy.resolution)} of business time"
    return f"{choice.policy} ({choice.why}): {targets}"


def cmd_cases(args: argparse.Namespace) -> int:
    config = load_config(_config_path(args), resolve_secrets=False)
    engine = open_database(config)
    with Session(engine) as session:
        rows = session.exec(
            select(Case, Customer)
            .join(Customer, isouter=True)
            .order_by(col(Case.id).desc())
            .limit(args.limit)
        ).all()
        print(f"{'case':<10} {'department':<11} {'status':<8} {'priority':<8} {'customer':<28} subject")
        for case, customer in reversed(rows):
            who = customer.address if customer else "-"
            print(
                f"{case.number:<10} {case.department:<11} {case.status:<8} {case.priority:<8} "
                f"{who:<28} {case.subject}"
            )
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    config = load_config(_config_path(args), resolve_secrets=False)
    engine = open_database(config)
    with Session(engine) as session:
        case = session.exec(select(Case).where(Case.number == args.case)).first()
        if case is None:
            print(f"error: no case {args.case}", file=sys.stderr)
            return 1
        print(f"{case.number}  {case.subject}")
        print(
            f"  department {case.department}, status {case.status}, priority {case.priority}, "
            f"category {case.category or '-'}, group {case.group or '-'}, assignee {case.assignee or '-'}, "
            f"tags {', '.join(case.tags) or '-'}"
        )
        _print_sla(config, case)
        print("messages:")
        for m in session.exec(select(Message).where(Message.case_id == case.id).order_by(col(Message.id))):
            print(
                f"  {m.received_at:%Y-%m-%d %H:%M:%S} {m.direction:<3} {m.author_role:<11} "
                f"{m.from_addr}  {m.subject}"
            )
        print("outgoing mail:")
        for o in session.exec(
            select(OutboxMessage).where(OutboxMessage.case_id == case.id).order_by(col(OutboxMessage.id))
        ):
            print(
                f"  {o.kind} to {', '.join(o.rcpt_to)}: {o.state} after {o.attempts} attempt(s) "
                f"{o.last_error}"
            )
        print("events:")
        for e in session.exec(select(Event).where(Event.case_id == case.id).order_by(col(Event.id))):
            print(f"  {e.created_at:%Y-%m-%d %H:%M:%S} {e.kind:<24} {e.detail}")
    return 0


def _print_sla(config: Config, case: Case) -> None:
    """Each target's due time and how it stands, in the department's business time."""
    if not case.sla:
        return
    paused = (
        f", paused {case.sla_paused_seconds:.0f}s of business time so far" if case.sla_paused_seconds else ""
    )
    print(f"sla {case.sla}{paused}:")
    targets = (
        (sla.Target.FIRST_RESPONSE, case.first_response_due, case.first_response_at),
        (sla.Target.NEXT_RESPONSE, case.next_response_due, None),
        (sla.Target.RESOLUTION, case.resolution_due, case.resolved_at),
    )
    now = utcnow()
    for target, due, met_at in targets:
        if due is None:
            continue
        state = sla.standing(config, case.department, target, due, met_at, case.sla_paused_at, now)
        escalated = getattr(case, f"breached_{target.column}_at")
        note = f"; escalated {escalated:%Y-%m-%d %H:%M} UTC" if escalated else ""
        print(f"  {target:<15} due {due:%Y-%m-%d %H:%M:%S} UTC  {state.text()}{note}")


def cmd_screened(args: argparse.Namespace) -> int:
    """Mail that screening kept out of any case: auto-replies, bounces, loops, spam."""
    engine = open_database(load_config(_config_path(args), resolve_secrets=False))
    rows = screened(engine, args.limit)
    print(f"{'id':>6} {'received':<19} {'mailbox':<11} {'verdict':<11} {'from':<28} subject / why")
    for row in rows:
        print(
            f"{row.message_id:>6} {row.received_at:%Y-%m-%d %H:%M:%S} {row.mailbox:<11} "
            f"{row.verdict:<11} {row.sender or '-':<28} {row.subject}\n{'':>7}{row.reason}"
        )
    if not rows:
        print("(no screened mail)")
    return 0


def cmd_quarantine_list(args: argparse.Namespace) -> int:
    engine = open_database(load_config(_config_path(args), resolve_secrets=False))
    entries = set_aside(engine)
    print(f"{'id':>6} {'when':<19} {'kind':<11} {'mailbox':<11} {'uid':>6}  reason")
    for entry in entries:
        kept = "" if entry.raw_kept else " [bytes not kept: see the quarantine folder]"
        print(
            f"{entry.event_id:>6} {entry.created_at:%Y-%m-%d %H:%M:%S} {entry.kind:<11} "
            f"{entry.mailbox:<11} {entry.uid if entry.uid is not None else '-':>6}  {entry.reason}{kept}"
        )
    if not entries:
        print("(nothing in quarantine)")
    return 0


def cmd_quarantine_retry(args: argparse.Namespace) -> int:
    """Process kept bytes again through the daemon's own intake (after fixing a rule or template)."""
    loaded = load(load_config(_config_path(args), resolve_secrets=False))
    engine = open_database(loaded.config)
    intake = Intake(loaded.config, loaded.rules, loaded.templates, engine, loaded.agents)
    if args.all:
        ids = [entry.event_id for entry in set_aside(engine) if entry.raw_kept]
    elif args.ids:
        ids = args.ids
    else:
        print("error: name the quarantine id(s) to retry, or --all", file=sys.stderr)
        return 2
    failed = 0
    for event_id in ids:
        try:
            outcome = retry(intake, event_id)
        except MailrouterError as exc:
            print(f"{event_id}: error: {exc}", file=sys.stderr)
            failed += 1
            continue
        case = f" {outcome.case_number}" if outcome.case_number else ""
        print(f"{event_id}: {outcome.kind.value}{case}: {outcome.summary}")
        failed += outcome.kind.value in ("quarantined", "refused")
    return 1 if failed else 0


def cmd_migrate(args: argparse.Namespace) -> int:
    """Upgrade the schema (what every command does on start) and say where the database stands."""
    config = load_config(_config_path(args), resolve_secrets=False)
    engine = open_database(config)
    with engine.connect() as connection:
        revision = MigrationContext.configure(connection).get_current_revision()
    engine.dispose()
    print(f"{engine.url.render_as_string(hide_password=True)}: schema at revision {revision}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mailrouter", description=__doc__)
    parser.add_argument("--version", action="version", version=f"mailrouter {__version__}")
    parser.add_argument(
        "-c", "--config", help=f"config file (default: $MAILROUTER_CONFIG or ./{DEFAULT_CONFIG})"
    )
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    commands = parser.add_subparsers(dest="command", required=True)

    commands.add_parser("run", help="run every mailbox worker and the sender until SIGTERM").set_defaults(
        func=cmd_run
    )
    check = commands.add_parser("check", help="validate config, rules and templates")
    check.add_argument("--connect", action="store_true", help="also log in to the relay and try each agent")
    check.set_defaults(func=cmd_check)

    rules = commands.add_parser("rules", help="routing rules").add_subparsers(
        dest="rules_command", required=True
    )
    explain = rules.add_parser("explain", help="show each rule's verdict for a message file")
    explain.add_argument("file", help="a raw message (.eml)")
    explain.add_argument("--mailbox", help="the mailbox it arrived in (default: from its To/Cc)")
    explain.set_defaults(func=cmd_explain)

    cases = commands.add_parser("cases", help="list the most recent cases")
    cases.add_argument("--limit", type=int, default=20)
    cases.set_defaults(func=cmd_cases)
    show = commands.add_parser("show", help="one case with its messages, outgoing mail and events")
    show.add_argument("case", help="case number, e.g. IT-1001")
    show.set_defaults(func=cmd_show)

    listed = commands.add_parser("screened", help="mail that screening kept out of any case")
    listed.add_argument("--limit", type=int, default=50)
    listed.set_defaults(func=cmd_screened)
    quarantine = commands.add_parser(
        "quarantine", help="messages refused or quarantined: list them, retry them"
    ).add_subparsers(dest="quarantine_command", required=True)
    quarantine.add_parser("list", help="refused and quarantined messages not yet released").set_defaults(
        func=cmd_quarantine_list
    )
    again = quarantine.add_parser("retry", help="process kept messages again through the intake")
    again.add_argument("ids", nargs="*", type=int, metavar="ID", help="ids from `quarantine list`")
    again.add_argument("--all", action="store_true", help="every listed message whose bytes were kept")
    again.set_defaults(func=cmd_quarantine_retry)
    commands.add_parser("migrate", help="upgrade the database schema and print its revision").set_defaults(
        func=cmd_migrate
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except MailrouterError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
