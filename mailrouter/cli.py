"""The `mailrouter` command: a thin layer over the functions the daemon uses."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from dataclasses import asdict, is_dataclass
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import TypeAdapter, ValidationError
from sqlalchemy.exc import SQLAlchemyError

from mailrouter import __version__, logs
from mailrouter.config import RELAY, Age, Config, load_config
from mailrouter.db import open_database, open_reader
from mailrouter.errors import (
    ConfigError,
    DatabaseUnavailable,
    MailrouterError,
    ParseError,
    PrivacyError,
    SchemaMismatch,
)
from mailrouter.models import utcnow
from mailrouter.vocabulary import CaseStatus, OutboxState, PeriodName

# Each command imports what only it needs: the daemon's wiring, the intake, the OAuth libraries,
# the report mail, the storage layer and alembic's migration context cost a second of start-up
# that `report`, `show` or `status` should not wait for.
if TYPE_CHECKING:
    from mailrouter.models import Case
    from mailrouter.parse import Inbound
    from mailrouter.route import Decision

log = logging.getLogger(__name__)

DEFAULT_CONFIG = "config.toml"
STATUS_HTTP_TIMEOUT = 3.0  # `status` asks the daemon's /readyz, and says so when it does not answer


def _age(value: str) -> timedelta:
    try:
        return TypeAdapter(Age).validate_python(value)
    except ValidationError as exc:
        raise argparse.ArgumentTypeError(exc.errors()[0]["msg"].removeprefix("Value error, ")) from None


def _config_path(args: argparse.Namespace) -> Path:
    return Path(args.config or os.environ.get("MAILROUTER_CONFIG") or DEFAULT_CONFIG)


def cmd_run(args: argparse.Namespace) -> int:
    from mailrouter.daemon import load, run

    run(load(load_config(_config_path(args))))
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    """Everything that would fail at run time, each problem one line naming the file and key:
    config, secrets, rules, templates (every file rendered), the groups and agents rules name;
    with --connect also every mailbox's login, the relay's and the database."""
    from mailrouter import preflight, reportmail
    from mailrouter.route import load_rules
    from mailrouter.templates import Templates

    path = _config_path(args)
    problems: list[str] = []
    secrets_read = True
    try:
        config = load_config(path)
    except ConfigError as exc:  # invalid: nothing else can be judged; unreadable secrets: go on
        try:
            config = load_config(path, resolve_secrets=False)
        except ConfigError:
            _print_problems(str(exc).splitlines())
            return 1
        problems.extend(str(exc).splitlines())
        secrets_read = False
    try:
        rules = load_rules(config.rules_dir, frozenset(config.mailboxes), frozenset(config.file.sla))
    except ConfigError as exc:
        problems.extend(str(exc).splitlines())
        rules = ()
    problems.extend(preflight.rule_problems(config, rules))
    needed = preflight.needed_templates(config, rules)
    try:
        problems.extend(preflight.template_problems(config, Templates(config.templates_dir), needed))
    except ConfigError as exc:
        problems.append(str(exc))
    found, warnings = preflight.oauth2_problems(config, date.today())
    problems.extend(found)
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)
    if args.connect and secrets_read:
        agents = {m.lower() for members in config.file.agents.groups.values() for m in members}
        found, warnings = preflight.connect_problems(config, agents)
        problems.extend(found)
        for warning in warnings:
            print(f"warning: {warning}", file=sys.stderr)
    elif args.connect:
        print("warning: --connect skipped: no login is tried until every secret is read", file=sys.stderr)
    if problems:
        _print_problems(problems)
        return 1
    connected = " (logins, relay and database checked)" if args.connect else ""
    print(
        f"{config.path}: ok — {len(config.mailboxes)} mailbox(es), {len(rules)} rule(s), "
        f"{len(needed)} template(s){connected}"
    )
    for report in config.file.reports:
        print(f"  {reportmail.describe(config, report, utcnow())}")
    return 0


def _print_problems(problems: list[str]) -> None:
    for problem in problems:
        print(f"error: {problem.strip()}", file=sys.stderr)


def _guess_mailbox(config: Config, inbound: Inbound) -> str:
    addresses = {a.address for a in (*inbound.to, *inbound.cc)}
    for name, mailbox in config.mailboxes.items():
        if mailbox.address.lower() in addresses:
            return name
    return next(iter(config.mailboxes))


def cmd_explain(args: argparse.Namespace) -> int:
    """What routing would decide for a message, rule by rule. Touches no database, sends nothing."""
    from mailrouter.daemon import load
    from mailrouter.parse import parse
    from mailrouter.route import route
    from mailrouter.screen import screen

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
        ("sensitive", "yes: agents get the number, category and an excerpt" if decision.sensitive else "no"),
        ("acknowledge", acknowledgement),
        ("sla", _sla_explained(config, decision)),
        ("because", decision.explanation),
    ):
        print(f"  {label:<12}{value}")
    return 0


def _json(value: object) -> str:
    def plain(item: object) -> object:
        if isinstance(item, datetime):
            return item.isoformat()
        if is_dataclass(item) and not isinstance(item, type):
            return asdict(item)
        raise TypeError(f"{type(item).__name__} is not JSON")

    return json.dumps(value, default=plain, ensure_ascii=False, indent=2)


def _when(moment: datetime | None) -> str:
    return f"{moment.astimezone():%Y-%m-%d %H:%M:%S}" if moment is not None else "never"


def _sla_explained(config: Config, decision: Decision) -> str:
    from mailrouter import sla

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
    from sqlmodel import Session

    from mailrouter import store

    engine = open_reader(load_config(_config_path(args), resolve_secrets=False))
    with Session(engine) as session:
        rows = store.list_cases(
            session,
            limit=args.limit,
            status=args.status,
            department=args.department,
            assignee=args.assignee,
            older_than=args.older_than,
        )
    if args.json:
        print(_json(rows))
        return 0
    print(f"{'case':<10} {'department':<11} {'status':<8} {'priority':<8} {'customer':<28} subject")
    for row in rows:
        print(
            f"{row.number:<10} {row.department:<11} {row.status:<8} {row.priority:<8} "
            f"{row.customer or '-':<28} {row.subject}"
        )
    return 0


def _readyz(config: Config) -> dict[str, object] | str | None:
    """The running daemon's own /readyz answer, when [http] is configured: its live facts, or
    why it did not answer."""
    import urllib.error
    import urllib.request

    settings = config.file.http
    if settings is None:
        return None
    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    url = f"http://{host}:{settings.port}/readyz"
    request = urllib.request.Request(url)
    source = settings.token_source()
    if source is not None:
        token = source.resolve(f"{config.path}: http")
        request.add_header("Authorization", f"Bearer {token.get_secret_value()}")
    try:
        with urllib.request.urlopen(request, timeout=STATUS_HTTP_TIMEOUT) as response:
            body = response.read()
    except urllib.error.HTTPError as exc:  # 503: not ready, with the same JSON body
        body = exc.read()
        if exc.code != 503:
            return f"{url}: HTTP {exc.code}"
    except (OSError, TimeoutError) as exc:
        return f"{url}: not answering ({getattr(exc, 'reason', None) or exc})"
    answer = json.loads(body)
    return answer if isinstance(answer, dict) else f"{url}: unexpected answer"


def cmd_status(args: argparse.Namespace) -> int:
    """What a person at a terminal wants to know: mailboxes, outbox, quarantine, the scheduler."""
    from sqlmodel import Session

    from mailrouter import outbox, store
    from mailrouter.facts import read_facts
    from mailrouter.review import set_aside

    config = load_config(_config_path(args), resolve_secrets=False)
    engine = open_reader(config)
    with Session(engine) as session:
        mailboxes = store.mailbox_records(session, list(config.mailboxes))
        follow_up = store.next_follow_up(session)
    facts = read_facts(engine)
    oldest = outbox.oldest_queued(engine)
    quarantined = len(set_aside(engine))
    live = _readyz(config)
    engine.dispose()
    live_mailboxes = live.get("mailboxes", {}) if isinstance(live, dict) else {}
    assert isinstance(live_mailboxes, dict)
    report = {
        "mailboxes": {m.mailbox: {**asdict(m), "live": live_mailboxes.get(m.mailbox)} for m in mailboxes},
        "outbox": facts.outbox,
        "oldest_queued": oldest,
        "quarantined": quarantined,
        "next_follow_up_at": follow_up,
        "daemon": live if live is not None else "no [http] endpoint configured",
    }
    if args.json:
        print(_json(report))
        return 0
    for m in mailboxes:
        here = live_mailboxes.get(m.mailbox)
        print(f"mailbox {m.mailbox}:")
        if isinstance(here, dict):
            state = (
                "connected" + (", idle" if here.get("idle") else "")
                if here.get("connected")
                else "NOT connected"
            )
            print(
                f"  {state}; last poll {here.get('seconds_since_poll')}s ago; "
                f"last error: {here.get('last_error') or '-'}"
            )
        print(
            f"  last poll recorded {_when(m.last_poll_at)}; "
            f"checkpoint uid {m.last_uid if m.last_uid is not None else '-'}"
        )
        if m.last_event:
            print(f"  latest event {_when(m.last_event_at)}: {m.last_event}")
    states = ", ".join(f"{count} {state}" for state, count in facts.outbox.items())
    print(f"outbox: {states}")
    if oldest is not None:
        print(
            f"  oldest queued: {oldest.id} ({oldest.case_number or '-'}, {oldest.kind}) "
            f"since {_when(oldest.created_at)}"
        )
    print(f"quarantine: {quarantined} message(s) (`mailrouter quarantine list`)")
    print(f"follow-up reminders: next due {_when(follow_up) if follow_up else '-'}")
    if isinstance(live, dict):
        causes = live.get("causes") or []
        assert isinstance(causes, list)
        print("daemon: ready" if live.get("ready") else f"daemon: NOT ready: {'; '.join(map(str, causes))}")
    else:
        print(f"daemon: {live if live is not None else 'no [http] endpoint configured: live facts unknown'}")
    return 0


def cmd_outbox_list(args: argparse.Namespace) -> int:
    from mailrouter import outbox

    engine = open_reader(load_config(_config_path(args), resolve_secrets=False))
    rows = outbox.listed(engine, [args.state] if args.state else sorted(outbox.RETRYABLE), args.limit)
    if args.json:
        print(_json(rows))
        return 0
    print(f"{'id':>6} {'case':<10} {'kind':<16} {'state':<8} {'tries':>5}  to / last error")
    for row in rows:
        print(
            f"{row.id:>6} {row.case_number or '-':<10} {row.kind:<16} {row.state:<8} {row.attempts:>5}  "
            f"{', '.join(row.rcpt_to)}\n{'':>7}{row.last_error or '-'}"
        )
    if not rows:
        print("(no outgoing mail in that state)")
    return 0


def cmd_outbox_retry(args: argparse.Namespace) -> int:
    """A failed or bounced letter back to the queue; the running sender picks it up."""
    from mailrouter import outbox

    engine = open_database(load_config(_config_path(args), resolve_secrets=False), upgrade=False)
    for row_id in args.ids:
        row = outbox.requeue(engine, row_id)
        print(f"{row.id}: queued again ({row.kind} to {', '.join(row.rcpt_to)})")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    from sqlmodel import Session

    from mailrouter import store

    config = load_config(_config_path(args), resolve_secrets=False)
    engine = open_reader(config)
    with Session(engine) as session:
        record = store.case_record(session, args.case)
    if record is None:
        print(f"error: no case {args.case}", file=sys.stderr)
        return 1
    case = record.case
    print(f"{case.number}  {case.subject}")
    print(
        f"  department {case.department}, status {case.status}, priority {case.priority}, "
        f"category {case.category or '-'}, group {case.group or '-'}, assignee {case.assignee or '-'}, "
        f"tags {', '.join(case.tags) or '-'}" + (", SENSITIVE" if case.sensitive else "")
    )
    _print_sla(config, case)
    _print_satisfaction(case)
    print("messages:")
    for m in record.messages:
        print(
            f"  {m.received_at:%Y-%m-%d %H:%M:%S} {m.direction:<3} {m.author_role:<11} "
            f"{m.from_addr}  {m.subject}"
        )
        if args.text and m.text:
            print("".join(f"      {line}\n" for line in m.text.splitlines()), end="")
    print("outgoing mail:")
    for o in record.outbox:
        print(f"  {o.kind} to {', '.join(o.rcpt_to)}: {o.state} after {o.attempts} attempt(s) {o.last_error}")
    print("events:")
    for e in record.events:
        print(f"  {e.created_at:%Y-%m-%d %H:%M:%S} {e.kind:<24} {e.detail}")
    return 0


def _print_sla(config: Config, case: Case) -> None:
    """Each target's due time and how it stands, in the department's business time."""
    from mailrouter import sla

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


def _print_satisfaction(case: Case) -> None:
    if case.survey_sent_at is None:
        return
    asked = f"satisfaction: asked {case.survey_sent_at:%Y-%m-%d %H:%M} UTC"
    if case.survey_answered_at is None or case.satisfaction_score is None:
        print(f"{asked}, no answer yet")
        return
    comment = f": {case.satisfaction_comment}" if case.satisfaction_comment else ""
    answered = f"answered {case.survey_answered_at:%Y-%m-%d %H:%M} UTC"
    print(f"{asked}; {case.satisfaction_score} of 5, {answered}{comment}")


def cmd_screened(args: argparse.Namespace) -> int:
    """Mail that screening kept out of any case: auto-replies, bounces, loops, spam."""
    from mailrouter.review import screened

    engine = open_reader(load_config(_config_path(args), resolve_secrets=False))
    rows = screened(engine, args.limit)
    if args.json:
        print(_json(rows))
        return 0
    print(f"{'id':>6} {'received':<19} {'mailbox':<11} {'verdict':<11} {'from':<28} subject / why")
    for row in rows:
        print(
            f"{row.message_id:>6} {row.received_at:%Y-%m-%d %H:%M:%S} {row.mailbox:<11} "
            f"{row.verdict:<11} {row.sender or '-':<28} {row.subject}\n{'':>7}{row.reason}"
        )
    if not rows:
        print("(no screened mail)")
    return 0


def cmd_retention(args: argparse.Namespace) -> int:
    """Retention now, or (--dry-run) what the next run would remove."""
    from mailrouter import privacy

    config = load_config(_config_path(args), resolve_secrets=False)
    rules = privacy.policy(config, utcnow())
    if args.dry_run:
        with open_reader(config).connect() as connection:
            counts = privacy.due(connection, rules)
        print(f"the next retention run would remove: {counts}")
        return 0
    counts = privacy.run(open_database(config, upgrade=False), rules, config.file.privacy.retention_batch)
    print(f"retention: {counts}")
    return 0


def cmd_privacy_export(args: argparse.Namespace) -> int:
    """Everything held about a person (access request): a zip of export.json and the raw mails."""
    import zipfile

    from mailrouter import privacy

    config = load_config(_config_path(args), resolve_secrets=False)
    with open_reader(config).connect() as connection:
        document, files = privacy.export(connection, args.address)
    with zipfile.ZipFile(args.output, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("export.json", json.dumps(document, ensure_ascii=False, indent=2, default=str))
        for name, data in files.items():
            archive.writestr(name, data)
    print(
        f"{args.output}: {len(document['cases'])} case(s), {len(document['messages'])} message(s), "
        f"{len(files)} mail file(s)"
    )
    return 0


def cmd_privacy_erase(args: argparse.Namespace) -> int:
    """Everything about a person deleted or anonymised (erasure request), in one transaction."""
    from sqlmodel import Session

    from mailrouter import privacy

    config = load_config(_config_path(args), resolve_secrets=False)
    source = config.file.privacy.salt_source()
    if source is None:
        print("error: erasure needs [privacy] erasure_salt_env or erasure_salt_file", file=sys.stderr)
        return 2
    salt = source.resolve(f"{config.path}: privacy").get_secret_value()
    with Session(open_database(config, upgrade=False)) as session:
        try:
            counts = privacy.erase(session, args.address, salt, force=args.force)
        except PrivacyError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        session.commit()
    print(f"erased: {counts}")
    return 0


def cmd_quarantine_list(args: argparse.Namespace) -> int:
    from mailrouter.review import set_aside

    engine = open_reader(load_config(_config_path(args), resolve_secrets=False))
    entries = set_aside(engine)
    if args.json:
        print(_json(entries))
        return 0
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
    from mailrouter.daemon import load
    from mailrouter.intake import Intake
    from mailrouter.review import retry, set_aside

    loaded = load(load_config(_config_path(args), resolve_secrets=False))
    engine = open_database(loaded.config, upgrade=False)
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


def cmd_deliver(args: argparse.Namespace) -> int:
    """One message on standard input from an MTA (Postfix pipe(8), a .forward, procmail), through
    the daemon's own intake. The exit status is what the MTA acts on (sysexits): 0 once the
    message is ours (registered, screened, quarantined, refused but kept), EX_TEMPFAIL when it
    is not yet (the MTA keeps it and tries again), so mail we kept is never bounced."""
    from mailrouter import store
    from mailrouter.daemon import load
    from mailrouter.intake import Intake
    from mailrouter.plan import DELIVERED, Origin

    if not args.mailbox:
        print("error: deliver needs --mailbox NAME", file=sys.stderr)
        return os.EX_USAGE
    try:
        loaded = load(load_config(_config_path(args), reply_only=True))
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return os.EX_CONFIG
    config = loaded.config
    if args.mailbox not in config.mailboxes:
        print(
            f"error: no mailbox {args.mailbox!r}; configured: {', '.join(config.mailboxes)}", file=sys.stderr
        )
        return os.EX_USAGE
    raw = sys.stdin.buffer.read()
    try:
        engine = open_database(config, upgrade=False)
        intake = Intake(config, loaded.rules, loaded.templates, engine, loaded.agents)
        origin = Origin(args.mailbox, DELIVERED, store.next_delivery_uid(engine, args.mailbox), utcnow())
        try:
            outcome = intake.process(raw, origin)
        except (DatabaseUnavailable, SchemaMismatch):
            raise
        except Exception as exc:  # what the fetch worker quarantines after its tries: kept, not lost
            log.exception(
                "mailbox=%s uid=%s delivered message failed; quarantining it", args.mailbox, origin.uid
            )
            outcome = intake.quarantine(raw, origin, exc)
    except (DatabaseUnavailable, SchemaMismatch) as exc:
        print(f"error: {exc}: not delivered; the MTA keeps the message and tries again", file=sys.stderr)
        return os.EX_TEMPFAIL
    except Exception as exc:
        log.exception("mailbox=%s delivery failed", args.mailbox)
        print(f"error: {type(exc).__name__}: not delivered; the MTA keeps the message", file=sys.stderr)
        return os.EX_TEMPFAIL
    case = f" {outcome.case_number}" if outcome.case_number else ""
    print(f"{outcome.kind.value}{case}: {outcome.summary}")
    if len(raw) > config.limits.max_message_size:
        # Recorded, but not kept: the MTA returns it to its sender, who learns it did not arrive.
        print(f"error: message larger than max_message_size ({config.limits.max_message_size} bytes)")
        return os.EX_DATAERR
    return os.EX_OK


def cmd_report(args: argparse.Namespace) -> int:
    """The figures of a period, for one department or all, in local dates of the departments."""
    from mailrouter import kpi, report

    config = load_config(_config_path(args), resolve_secrets=False)
    if args.department and args.department not in config.mailboxes:
        print(
            f"error: no department {args.department!r}; configured: {', '.join(config.mailboxes)}",
            file=sys.stderr,
        )
        return 2
    departments = [args.department] if args.department else list(config.mailboxes)
    zones = {d: config.calendar(d).zone for d in departments}
    if (args.start is None) != (args.end is None):
        print("error: --from and --to go together", file=sys.stderr)
        return 2
    if args.start is not None:
        period = kpi.dates_period(args.start, args.end)
    else:  # "today" as the first department's clock has it
        period = kpi.named_period(args.period, utcnow().astimezone(zones[departments[0]]).date())
    figures = kpi.figures(open_reader(config), period, zones)
    names = {d: config.mailboxes[d].display_name for d in departments}
    if args.format == "csv":
        sys.stdout.flush()
        sys.stdout.buffer.write(report.csv_bytes(figures, names))
        sys.stdout.buffer.flush()
    elif args.format == "json":
        print(report.as_json(figures), end="")
    elif args.format == "html":
        print(report.html(figures, names), end="")
    else:
        print(report.table(figures, names), end="")
    return 0


def _date(value: str) -> date:
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a date YYYY-MM-DD, not {value!r}") from None


def cmd_oauth_login(args: argparse.Namespace) -> int:
    """The device-code sign-in of a mailbox on a delegated credential (devicelogin.py)."""
    from mailrouter import devicelogin

    config = load_config(_config_path(args))

    def tell(prompt: devicelogin.Prompt) -> None:
        print(prompt, flush=True)  # the person reads it while we wait

    path = devicelogin.login(config, args.mailbox, tell)
    print(f"signed in: the refresh token is in {path} (mode 0600); `mailrouter run` uses it")
    return 0


def cmd_migrate(args: argparse.Namespace) -> int:
    """Upgrade the schema (what `run` does on start) and say where the database stands."""
    from alembic.migration import MigrationContext

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
    parser.add_argument(
        "--log-format",
        default="text",
        choices=["text", "json"],
        help="json: one object per line (journald, ELK)",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    commands.add_parser("run", help="run every mailbox worker and the sender until SIGTERM").set_defaults(
        func=cmd_run
    )
    check = commands.add_parser(
        "check", help="find what would fail at run time: config, secrets, rules, templates"
    )
    check.add_argument(
        "--connect",
        action="store_true",
        help="also log in to every mailbox and the relay (asking about each agent) and open the database",
    )
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
    cases.add_argument("--status", type=CaseStatus, choices=list(CaseStatus))
    cases.add_argument("--department", help="the mailbox's name in config.toml, e.g. it")
    cases.add_argument("--assignee", help="an agent's address")
    cases.add_argument(
        "--older-than", type=_age, metavar="AGE", help="opened at least this long ago: 12h, 2d"
    )
    cases.add_argument("--json", action="store_true")
    cases.set_defaults(func=cmd_cases)
    status = commands.add_parser("status", help="mailboxes, outbox, quarantine and the daemon's readiness")
    status.add_argument("--json", action="store_true")
    status.set_defaults(func=cmd_status)
    show = commands.add_parser("show", help="one case with its messages, outgoing mail and events")
    show.add_argument("case", help="case number, e.g. IT-1001")
    show.add_argument("--text", action="store_true", help="each message's text too (a sensitive case's)")
    show.set_defaults(func=cmd_show)

    retention = commands.add_parser(
        "retention", help="delete and anonymise what is past its retention now (the daemon does it daily)"
    )
    retention.add_argument("--dry-run", action="store_true", help="only count what the run would remove")
    retention.set_defaults(func=cmd_retention)

    requests = commands.add_parser(
        "privacy", help="a person's access or erasure request (README: Personal data)"
    ).add_subparsers(dest="privacy_command", required=True)
    exported = requests.add_parser("export", help="everything held about an address: JSON and the .eml files")
    exported.add_argument("address")
    exported.add_argument("-o", "--output", default="privacy-export.zip", help="the zip file to write")
    exported.set_defaults(func=cmd_privacy_export)
    erased = requests.add_parser("erase", help="delete or anonymise everything about an address")
    erased.add_argument("address")
    erased.add_argument("--force", action="store_true", help="even while the person has an open case")
    erased.set_defaults(func=cmd_privacy_erase)

    listed = commands.add_parser("screened", help="mail that screening kept out of any case")
    listed.add_argument("--limit", type=int, default=50)
    listed.add_argument("--json", action="store_true")
    listed.set_defaults(func=cmd_screened)
    quarantine = commands.add_parser(
        "quarantine", help="messages refused or quarantined: list them, retry them"
    ).add_subparsers(dest="quarantine_command", required=True)
    held = quarantine.add_parser("list", help="refused and quarantined messages not yet released")
    held.add_argument("--json", action="store_true")
    held.set_defaults(func=cmd_quarantine_list)
    again = quarantine.add_parser("retry", help="process kept messages again through the intake")
    again.add_argument("ids", nargs="*", type=int, metavar="ID", help="ids from `quarantine list`")
    again.add_argument("--all", action="store_true", help="every listed message whose bytes were kept")
    again.set_defaults(func=cmd_quarantine_retry)
    mail = commands.add_parser("outbox", help="outgoing mail that failed or bounced: list it, retry it")
    mail_commands = mail.add_subparsers(dest="outbox_command", required=True)
    rows = mail_commands.add_parser("list", help="failed and bounced mail (or another state)")
    rows.add_argument("--state", type=OutboxState, choices=list(OutboxState))
    rows.add_argument("--limit", type=int, default=50)
    rows.add_argument("--json", action="store_true")
    rows.set_defaults(func=cmd_outbox_list)
    requeue = mail_commands.add_parser("retry", help="queue failed or bounced mail again")
    requeue.add_argument("ids", nargs="+", type=int, metavar="ID", help="ids from `outbox list`")
    requeue.set_defaults(func=cmd_outbox_retry)
    deliver = commands.add_parser("deliver", help="register one message from standard input (an MTA's pipe)")
    deliver.add_argument("--mailbox", help="the department mailbox it was addressed to, e.g. it")
    deliver.set_defaults(func=cmd_deliver)
    figures = commands.add_parser(
        "report", help="the desk's figures over a period (README: Reports defines each one)"
    )
    figures.add_argument("--period", choices=tuple(PeriodName), default="last-week")
    figures.add_argument("--from", dest="start", type=_date, metavar="DATE", help="first day, YYYY-MM-DD")
    figures.add_argument("--to", dest="end", type=_date, metavar="DATE", help="last day, included")
    figures.add_argument("--department", help="one department (default: all of them)")
    figures.add_argument("--format", choices=["table", "json", "csv", "html"], default="table")
    figures.set_defaults(func=cmd_report)
    oauth = commands.add_parser("oauth", help="OAuth2 credentials").add_subparsers(
        dest="oauth_command", required=True
    )
    sign_in = oauth.add_parser(
        "login",
        help="sign a mailbox on a delegated credential in once (device code), keeping its refresh token",
    )
    sign_in.add_argument("mailbox", help=f"the mailbox (its [mailboxes.<name>]), or {RELAY} for the relay")
    sign_in.set_defaults(func=cmd_oauth_login)
    commands.add_parser("migrate", help="upgrade the database schema and print its revision").set_defaults(
        func=cmd_migrate
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logs.configure(args.log_level, args.log_format)
    try:
        code: int = args.func(args)
        return code
    except MailrouterError as exc:
        print(f"error: {exc}", file=sys.stderr)
    except OSError as exc:
        print(f"error: {exc.filename or ''}: {exc.strerror or exc}", file=sys.stderr)
    except SQLAlchemyError as exc:  # the driver's words, without the statement and its parameters
        print(f"error: database: {str(getattr(exc, 'orig', None) or exc).strip()}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
