"""preflight: what `mailrouter check` finds before the daemon would meet it at run time.

Each check returns its problems, one readable line each naming the file and the key; none of
them stops at the first. The config's own validation and its secrets are load_config's; rules'
validation is load_rules'. What is only known against a server (logins, the database) is in
`connect_problems`.
"""

from __future__ import annotations

import asyncio
import json
import os
import ssl
from collections.abc import Iterable
from datetime import date
from typing import Any

import aioimaplib
import aiosmtplib
from cryptography.hazmat.primitives import serialization
from pydantic import SecretStr

from mailrouter import imap
from mailrouter.alerts import credential_users
from mailrouter.config import RELAY, Config
from mailrouter.db import open_reader, sqlite_path
from mailrouter.errors import MailrouterError, SchemaMismatch, TokenRefused
from mailrouter.models import Case, Customer
from mailrouter.oauth import (
    Tokens,
    TokenSource,
    certificate_expiry,
    expiry_warnings,
    read_refresh_token,
    refresh_token_path,
)
from mailrouter.outbox import Refusal
from mailrouter.parse import Address, AttachmentInfo, Inbound
from mailrouter.reportmail import TEMPLATE, ReportView, departments_of
from mailrouter.route import Rule
from mailrouter.send import RelayLogin, classify, refused_recipients
from mailrouter.summary import Line
from mailrouter.templates import DEFAULT, Templates

# The templates the daemon renders besides the acknowledgements mailboxes and rules name.
# With agent groups: new cases and replies (of sensitive cases too), follow-ups.
AGENT_TEMPLATES = ("notify", "notify-sensitive", "remind")
SLA_TEMPLATE = "sla"  # with [sla] policies: warnings and escalations


_SAMPLE_LINE = Line(
    "IT Support",
    42,
    38,
    3,
    30,
    17,
    "1 h 05 min / 6 h 40 min",
    "1 d 2 h / 4 d 1 h",
    "93 %",
    "90 %",
    "88 %",
    "61 %",
    "4.4 (12)",
)
SAMPLE_REPORT = ReportView(
    name="weekly",
    departments="IT Support",
    period="2026-11-23 – 2026-11-29",
    slot="2026-11-30 07:00:00 CET",
    lines=(_SAMPLE_LINE,),
    total=_SAMPLE_LINE,
    charts={"volume": "v@x", "answer_times": "a@x", "backlog": "b@x", "busiest_hours": "h@x"},
)


def sample_context(config: Config, department: str) -> dict[str, Any]:
    """What a template of this department is rendered with: every name any notice passes."""
    mailbox = config.mailboxes[department]
    sample = Inbound(
        sha256="0" * 64,
        size=2048,
        message_id="<sample@example.invalid>",
        in_reply_to="",
        references=(),
        sender=Address("kari.nordmann@example.invalid", "Kari Nordmann"),
        reply_to=(),
        to=(Address(mailbox.address, mailbox.display_name),),
        cc=(),
        subject="Skrivaren på plan 3 fungerar inte",
        text="Hej!",
        html="",
        headers={},
        attachments=(AttachmentInfo("skärmbild.png", "image/png", 1024, "0" * 64),),
    )
    case = Case(
        number=f"{mailbox.prefix}-1001",
        department=department,
        subject=sample.subject,
        tags=["sample"],
        sla=mailbox.sla,
    )
    customer = Customer(
        address="kari.nordmann@example.invalid", name="Kari Nordmann", organisation="example.invalid"
    )
    return {
        "case": case,
        "customer": customer,
        "department": mailbox,
        "message": sample,
        "why": "New case",
        "excerpt": "Hej! …",
        "other_cases": [case],
        "organisation_open_cases": 2,
        "organisation_open_cases_or_more": False,
        "reopen_days": config.file.agents.reopen_days,
        "report": SAMPLE_REPORT,
    }


def needed_templates(config: Config, rules: Iterable[Rule]) -> set[tuple[str, str]]:
    """(department, template name) for every mail the daemon may render."""
    needed = {(name, m.template) for name, m in config.mailboxes.items() if m.acknowledge}
    for rule in rules:
        if not rule.then.template:
            continue
        if rule.then.department:
            departments = [rule.then.department]
        elif rule.when.mailbox:
            mailbox = rule.when.mailbox
            departments = [mailbox] if isinstance(mailbox, str) else list(mailbox)
        else:
            departments = list(config.mailboxes)
        needed.update((d, rule.then.template) for d in departments if d in config.mailboxes)
    kinds = [*(AGENT_TEMPLATES if config.file.agents.groups else ())]
    if config.file.sla:
        kinds.append(SLA_TEMPLATE)
    needed.update((name, kind) for name in config.mailboxes for kind in kinds)
    needed.update((departments_of(config, r)[0], TEMPLATE) for r in config.file.reports)
    return needed


def template_problems(config: Config, templates: Templates, needed: set[tuple[str, str]]) -> list[str]:
    """Every file (each language, text and HTML) rendered with sample data: a department's own
    with its mailbox, _default/'s with each mailbox (parts named _*, through the files that
    include them); then each needed template that no file serves."""
    problems = []
    for relative in templates.files():
        folder, _, name = relative.partition("/")
        if name.startswith("_"):
            continue  # a part other templates include: rendered through them

        departments = list(config.mailboxes) if folder == DEFAULT else [folder]
        for department in departments:
            if department not in config.mailboxes:
                break  # a folder no mailbox reads: never rendered
            problem = templates.render_file(relative, sample_context(config, department))
            if problem is not None:
                problems.append(f"{problem} (rendered with sample data for {department})")
                break
    for department, name in sorted(needed):
        try:
            templates.text_file(department, name, (config.mailboxes[department].language,))
        except MailrouterError as exc:
            problems.append(f"template {department}/{name}: {exc}")
    return problems


def rule_problems(config: Config, rules: Iterable[Rule]) -> list[str]:
    """Groups and assignees that rules name and the agents' configuration does not know."""
    groups = config.file.agents.groups
    agents = {member.lower() for members in groups.values() for member in members}
    known = ", ".join(sorted(groups)) or "none are configured"
    problems = []
    for rule in rules:
        where = f"{config.rules_dir / rule.source}: rule {rule.name!r}"
        if rule.then.group and rule.then.group not in groups:
            problems.append(f"{where}: then.group {rule.then.group!r} is not in agents.groups ({known})")
        assignee = rule.then.assignee
        if assignee and assignee.lower() not in agents:
            problems.append(
                f"{where}: then.assignee {assignee!r} is not a member of any agents.groups: "
                "their replies would not count as an agent's"
            )
    return problems


def oauth2_problems(config: Config, today: date) -> tuple[list[str], list[str]]:
    """(problems, warnings) of the [oauth2] credentials that only show when a token is asked
    for: files that cannot be read or are not what their key says, a delegated mailbox never
    signed in, a secret or certificate that has run out (a warning while it has days left)."""
    problems: list[str] = []
    for name, settings in config.file.oauth2.items():
        where = f"{config.path}: oauth2.{name}"
        for key in ("ca_file", "certificate_file"):
            file = getattr(settings, key)
            if file is None:
                continue
            try:
                pem = (config.base_dir / file).read_bytes()
                if key == "certificate_file":
                    certificate_expiry(pem)
                else:
                    ssl.create_default_context(cadata=pem.decode("ascii"))
            except (ValueError, UnicodeDecodeError, ssl.SSLError):  # SSLError before OSError, its base
                problems.append(f"{where}.{key}: {config.base_dir / file} is not a PEM certificate")
            except OSError as exc:
                problems.append(f"{where}.{key}: cannot read {config.base_dir / file}: {exc.strerror}")
        problems.extend(_key_problems(config, name))
        if settings.grant == "delegated":
            problems.extend(_signed_in(config, name))
    warnings: list[str] = []
    try:
        expiring = expiry_warnings(config, today)
    except (OSError, ValueError):
        expiring = []  # an unreadable certificate is a problem above
    for expiry in expiring:
        (problems if expiry.days_left < 0 else warnings).append(f"{config.path}: {expiry}")
    return problems, warnings


def _key_problems(config: Config, name: str) -> list[str]:
    """A private key (Microsoft's certificate credential, a service account's) that cannot sign."""
    settings = config.file.oauth2[name]
    where = f"{config.path}: oauth2.{name}"
    if settings.private_key_file is not None:
        key, at = config.secret(f"oauth2.{name}.key"), f"{where}.private_key_file"
    elif settings.service_account_file is not None:
        account = config.secret(f"oauth2.{name}")
        key = (
            None if account is None else SecretStr(str(json.loads(account.get_secret_value())["private_key"]))
        )
        at = f"{where}.service_account_file: its private_key"
    else:
        return []
    if key is None:
        return []  # unreadable: said where the secrets are read
    try:
        serialization.load_pem_private_key(key.get_secret_value().encode(), password=None)
    except (ValueError, TypeError):
        return [f"{at} is not an unencrypted PEM private key"]
    return []


def _signed_in(config: Config, name: str) -> list[str]:
    """The users of a delegated credential that have no refresh token yet."""
    problems = []
    for user in credential_users(config, name):
        where = f"{config.path}: " + (RELAY if user == RELAY else f"mailboxes.{user}.imap")
        path = refresh_token_path(config, user)
        try:
            read_refresh_token(path, name)
        except TokenRefused:
            problems.append(
                f"{where}: oauth2.{name} is delegated and {path} holds no refresh token: "
                f"run `mailrouter oauth login {user}`"
            )
    return problems


def connect_problems(config: Config, agents: Iterable[str]) -> tuple[list[str], list[str]]:
    """(problems, warnings) of logging in to every mailbox and the relay and opening the
    database, all at once."""
    return asyncio.run(_connect(config, sorted(agents)))


async def _connect(config: Config, agents: list[str]) -> tuple[list[str], list[str]]:
    from mailrouter.daemon import relay_login  # the daemon's wiring: only `check --connect` needs it

    tokens = Tokens(config)
    logins = asyncio.gather(*(_mailbox_problem(config, tokens, name) for name in config.mailboxes))
    database = asyncio.to_thread(_database, config)
    mailbox_problems, (relay_problem, refusals), (database_problem, database_warning) = await asyncio.gather(
        logins, _relay(config, relay_login(config, tokens), agents), database
    )
    problems = [p for p in (*mailbox_problems, relay_problem, database_problem) if p is not None]
    groups = config.file.agents.groups
    warnings: list[str] = []
    for refusal in refusals:
        of = ", ".join(sorted(n for n, members in groups.items() if refusal.recipient in members))
        warnings.append(f"the relay refuses agent {refusal} (group {of})")
    if database_warning is not None:
        warnings.append(database_warning)
    return problems, warnings


async def _mailbox_problem(config: Config, tokens: Tokens, name: str) -> str | None:
    settings = config.mailboxes[name].imap
    where = f"{config.path}: mailboxes.{name}.imap"
    credential: SecretStr | TokenSource | None
    if settings.oauth2 is not None:
        credential = tokens.source(settings.oauth2, settings.user, name)
    else:
        credential = config.secret(f"imap.{name}")
    assert credential is not None, "secrets are resolved before connecting"
    try:
        connection = await asyncio.wait_for(imap.connect(settings, credential), settings.timeout)
        await connection.logout()
    except (MailrouterError, aioimaplib.AioImapException, OSError, TimeoutError) as exc:
        reason = str(exc) or type(exc).__name__
        return f"{where}: cannot log in to {settings.host}:{settings.port} as {settings.user}: {reason}"
    return None


async def _relay(config: Config, login: RelayLogin, agents: list[str]) -> tuple[str | None, list[Refusal]]:
    """Log in to the relay (SMTP AUTH where configured) and ask about each agent (RCPT TO, no DATA)."""
    smtp = config.smtp
    mail_from = next(iter(config.mailboxes.values())).address
    try:
        return None, await refused_recipients(smtp, login, mail_from, agents)
    except (aiosmtplib.SMTPException, OSError, TimeoutError, MailrouterError) as exc:
        reason = exc if isinstance(exc, MailrouterError) else classify(exc)
        user = f" as {smtp.username}" if smtp.username else ""
        return f"{config.path}: smtp: relay {smtp.host}:{smtp.port}{user}: {reason}", []


def _database(config: Config) -> tuple[str | None, str | None]:
    """(problem, warning): the database opened read-only at this version's schema. A SQLite file
    not there yet needs a directory `run` can create it in; an older schema `run` upgrades."""
    where = f"{config.path}: database_url"
    path = sqlite_path(config.database_url)
    if path is not None:
        if not path.exists():
            if not path.parent.is_dir():  # systemd makes a StateDirectory= when it starts the unit
                return None, f"{where}: {path.parent} does not exist yet: `mailrouter run` needs it"
            if not os.access(path.parent, os.W_OK | os.X_OK):
                return f"{where}: cannot create {path}: {path.parent} is not a writable directory", None
            return None, f"{where}: {path} does not exist yet: `mailrouter run` creates it"
        for writable in (path, path.parent):  # SQLite writes its journal beside the file
            if not os.access(writable, os.W_OK):
                return f"{where}: {writable} is not writable", None
    try:
        open_reader(config).dispose()
    except SchemaMismatch as exc:
        if exc.newer:
            return f"{where}: {exc}", None
        return None, f"{where}: {exc} (or `mailrouter run`, which upgrades it)"
    except Exception as exc:  # the driver's own words, without a statement's parameters
        reason = " ".join(str(getattr(exc, "orig", None) or exc).split())
        return f"{where}: cannot open the database: {reason}", None
    return None, None
