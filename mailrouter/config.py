"""config.toml: parsed once, validated completely, every error names the file and the key.

Secrets never live in the file: each one names an environment variable or a file (for systemd
credentials, `${CREDENTIALS_DIRECTORY}/name`), read once at start-up.
"""

from __future__ import annotations

import ipaddress
import os
import re
import tomllib
from datetime import date, timedelta
from pathlib import Path
from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    model_validator,
)

from mailrouter.agents import KEY_ID, LOCAL_PART_MAX, MIN_SECRET_BYTES, longest_signed_local_part
from mailrouter.businesshours import WEEKDAYS, BusinessHours, always_open, hours_of
from mailrouter.errors import ConfigError

_AGE = re.compile(r"^\s*(\d+)\s*([smhdw])\s*$")
_AGE_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def _age(value: object) -> object:
    """ "30m", "12h", "3d", "2w" (and "10s", for tests); anything else is left for pydantic to
    judge (and refuse)."""
    if isinstance(value, str) and (match := _AGE.match(value)):
        return timedelta(**{_AGE_UNITS[match[2]]: int(match[1])})
    if isinstance(value, str):
        raise ValueError(f"expected an age such as 30m, 12h, 3d or 2w, not {value!r}")
    return value


Age = Annotated[timedelta, BeforeValidator(_age)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SecretSource(_Strict):
    """Where one password comes from: exactly one of an environment variable or a file."""

    password_env: str | None = None
    password_file: str | None = None

    @model_validator(mode="after")
    def _one_source(self) -> SecretSource:
        if (self.password_env is None) == (self.password_file is None):
            raise ValueError("set exactly one of password_env or password_file")
        return self

    def resolve(self, where: str) -> SecretStr:
        if self.password_env is not None:
            value = os.environ.get(self.password_env)
            if value is None:
                raise ConfigError(f"{where}: environment variable {self.password_env} is not set")
            return SecretStr(value)
        assert self.password_file is not None
        path = Path(os.path.expandvars(self.password_file))
        try:
            return SecretStr(path.read_text(encoding="utf-8").rstrip("\r\n"))
        except OSError as exc:
            raise ConfigError(f"{where}: cannot read password_file {path}: {exc.strerror}") from exc


class ImapSettings(SecretSource):
    host: str
    port: int = Field(default=993, gt=0, lt=65536)
    # "tls": implicit TLS (993); "starttls": upgrade a plain connection (143); "none": loopback only.
    security: Literal["tls", "starttls", "none"] = "tls"
    ca_file: str | None = None
    # false turns certificate verification off (test servers only): logged as a WARNING at start.
    tls_verify: bool = True
    user: str
    timeout: float = Field(default=30.0, gt=0)


class SmtpSettings(_Strict):
    host: str
    port: int = Field(default=587, gt=0, lt=65536)
    security: Literal["starttls", "tls", "none"] = "starttls"
    ca_file: str | None = None
    tls_verify: bool = True
    username: str | None = None
    password_env: str | None = None
    password_file: str | None = None
    timeout: float = Field(default=30.0, gt=0)
    retry_initial: float = Field(default=30.0, gt=0)
    retry_max: float = Field(default=900.0, gt=0)
    # A letter still refused for now this long after it was queued fails (seconds; 5 days).
    give_up_after: float = Field(default=5 * 86400.0, gt=0)
    # The letters the sender holds in memory at once, in bytes (always at least one letter).
    batch_bytes: int = Field(default=16 * 1024 * 1024, gt=0)

    @model_validator(mode="after")
    def _password_with_username(self) -> SmtpSettings:
        sources = [s for s in (self.password_env, self.password_file) if s is not None]
        if self.username is not None and len(sources) != 1:
            raise ValueError("with username, set exactly one of password_env or password_file")
        if self.username is None and sources:
            raise ValueError("a password source needs a username")
        return self

    def credentials(self) -> SecretSource | None:
        if self.username is None:
            return None
        return SecretSource(password_env=self.password_env, password_file=self.password_file)


class MailboxSettings(_Strict):
    """One department mailbox; its key in config.toml is the department's name."""

    address: str = Field(pattern=r"^[^@\s]+@[^@\s]+$")
    display_name: str
    prefix: str = Field(pattern=r"^[A-Z][A-Z0-9]{0,9}$")
    language: Literal["en", "sv", "no", "da", "fi"] = "en"
    folder: str = "INBOX"
    after_processing: Literal["flag", "move"] = "flag"
    processed_folder: str = "Processed"
    quarantine_folder: str = "Quarantine"
    acknowledge: bool = True
    template: str = "ack"
    group: str = ""  # the department's default group: notified of cases nobody is assigned to
    # Where reading begins the first time mailrouter watches the folder (no checkpoint yet):
    # "now" leaves the mail already there alone, "all" registers it; `since` (a date, instead of
    # start) registers mail that arrived in the folder (INTERNALDATE) on or after that day.
    start: Literal["now", "all"] = "now"
    since: date | None = None
    # Mail that arrived longer ago than this when it is registered opens its case unanswered:
    # an acknowledgement days late (a migration, a long outage) tells the customer nothing.
    acknowledge_max_age: Age = timedelta(days=3)
    # SLA: the department's calendar (a [business_hours.<name>]; none: every hour counts) and
    # the policy of cases that neither a rule nor [sla_by_priority] gives one.
    business_hours: str = ""
    sla: str = ""
    imap: ImapSettings

    @model_validator(mode="after")
    def _start_or_since(self) -> MailboxSettings:
        if self.since is not None and "start" in self.model_fields_set:
            raise ValueError("set start or since, not both")
        return self


class DaemonSettings(_Strict):
    poll_interval: float = Field(default=30.0, gt=0)
    idle: bool = True
    idle_timeout: float = Field(default=25 * 60, gt=0, le=29 * 60)
    batch_size: int = Field(default=50, gt=0, le=1000)
    # At most this many bytes (by the server's RFC822.SIZE) in one fetched batch, however many
    # messages that is; a batch always holds at least one message.
    batch_bytes: int = Field(default=32 * 1024 * 1024, gt=0)
    # Worker processes that parse a fetched batch ahead of its registration; 0 parses in the
    # daemon's own process (a machine with one core gains nothing from them).
    parse_workers: int = Field(default=1, ge=0, le=16)
    case_number_start: int = Field(default=1001, gt=0)
    send_interval: float = Field(default=5.0, gt=0)
    shutdown_timeout: float = Field(default=20.0, gt=0)
    schedule_interval: float = Field(default=60.0, gt=0)
    # IMAP reconnects: capped exponential backoff with jitter between these bounds (seconds).
    reconnect_initial: float = Field(default=1.0, gt=0)
    reconnect_max: float = Field(default=300.0, gt=0)
    # Several instances (PostgreSQL): how often a mailbox worker checks that it still holds the
    # mailbox's lock, and how long an outbox row claimed by one instance is kept from the others.
    lock_check_interval: float = Field(default=5.0, gt=0)
    outbox_lease: float = Field(default=300.0, gt=0)
    # Set when another installation shares our department domains: it goes into our outgoing
    # Message-IDs, so a reply to that installation's mail with the same case tag is not ours.
    instance_tag: str = Field(default="", pattern=r"^[a-z0-9]{0,16}$")
    # A long-running task (mailbox worker, sender, scheduler) that fails is restarted after a
    # capped exponential backoff; restart_limit failures within restart_window seconds end the
    # process with a non-zero exit, for systemd to restart it whole.
    restart_initial: float = Field(default=1.0, gt=0)
    restart_max: float = Field(default=60.0, gt=0)
    restart_limit: int = Field(default=5, gt=0)
    restart_window: float = Field(default=300.0, gt=0)


class RetiredReplySecret(_Strict):
    """A reply secret that no longer signs, still accepted before `until` (its grace period)."""

    id: str = Field(pattern=KEY_ID.pattern)
    env: str | None = None
    file: str | None = None
    until: date

    @model_validator(mode="after")
    def _one_source(self) -> RetiredReplySecret:
        if (self.env is None) == (self.file is None):
            raise ValueError("set exactly one of env or file")
        return self


class HttpSettings(_Strict):
    """The daemon's HTTP endpoint (/metrics, /healthz, /readyz): on only when [http] is present."""

    listen: str = "127.0.0.1:8025"
    # A bearer token, required when `listen` is not a loopback address; from the environment or a
    # file (a systemd credential), never written here.
    token_env: str | None = None
    token_file: str | None = None
    # /readyz is red when a mailbox has not polled successfully for this long (IDLE accepted by
    # the server counts as a poll; while idling, daemon.idle_timeout is added) ...
    ready_max_poll_age: float = Field(default=300.0, gt=0)
    # ... or when the oldest queued outgoing mail is older than this.
    ready_max_outbox_age: float = Field(default=3600.0, gt=0)

    @property
    def host(self) -> str:
        return self.listen.rpartition(":")[0].strip("[]")

    @property
    def port(self) -> int:
        return int(self.listen.rpartition(":")[2])

    @property
    def loopback(self) -> bool:
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False  # a host name: assume it is reachable from elsewhere

    @model_validator(mode="after")
    def _valid(self) -> HttpSettings:
        host, _, port = self.listen.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"listen {self.listen!r}: expected HOST:PORT, e.g. 127.0.0.1:8025")
        if self.token_env is not None and self.token_file is not None:
            raise ValueError("set at most one of token_env or token_file")
        if not self.loopback and self.token_source() is None:
            raise ValueError(f"listen {self.listen!r} is not loopback: set token_env or token_file")
        return self

    def token_source(self) -> SecretSource | None:
        if self.token_env is None and self.token_file is None:
            return None
        return SecretSource(password_env=self.token_env, password_file=self.token_file)


class AgentSettings(_Strict):
    """Agents answer from their own mail clients; groups are what rules and #assign name."""

    groups: dict[str, list[str]] = {}
    reply_secret_env: str | None = None
    reply_secret_file: str | None = None
    # The id of the current reply secret, written into every signed address it makes.
    reply_key_id: str = Field(default="k1", pattern=KEY_ID.pattern)
    previous_reply_secrets: list[RetiredReplySecret] = []
    trusted_authserv_ids: list[str] = []
    reopen_days: float = Field(default=14.0, ge=0)

    @model_validator(mode="after")
    def _secret_with_groups(self) -> AgentSettings:
        sources = [s for s in (self.reply_secret_env, self.reply_secret_file) if s is not None]
        if self.groups and len(sources) != 1:
            raise ValueError("with groups, set exactly one of reply_secret_env or reply_secret_file")
        for name, members in self.groups.items():
            for member in members:
                if "@" not in member:
                    raise ValueError(f"groups.{name}: {member!r} is not an email address")
        ids = [self.reply_key_id, *(p.id for p in self.previous_reply_secrets)]
        if len(set(ids)) != len(ids):
            raise ValueError(f"reply key ids must differ: {', '.join(ids)}")
        return self

    def secret_source(self) -> SecretSource | None:
        if self.reply_secret_env is None and self.reply_secret_file is None:
            return None
        return SecretSource(password_env=self.reply_secret_env, password_file=self.reply_secret_file)


class LimitsSettings(_Strict):
    """What untrusted mail may cost us: answers per sender, the size we read at all, and the time
    and text one message may take from the parser and the rules' regexes."""

    acknowledgements_per_sender: int = Field(default=5, ge=0)
    acknowledgement_window: float = Field(default=3600.0, gt=0)
    max_message_size: int = Field(default=25 * 1024 * 1024, gt=0)
    # A parse in a worker that takes longer is abandoned for a degraded reading (parsepool).
    parse_time_limit: float = Field(default=5.0, gt=0)
    html_to_text_chars: int = Field(default=1024 * 1024, gt=0)
    regex_text_chars: int = Field(default=64 * 1024, gt=0)


class BusinessHoursSettings(_Strict):
    """A calendar SLA targets count in: wall-clock hours in a time zone, less holidays."""

    time_zone: str = "UTC"
    # ISO country code for the holidays library (NO, SE, DK, FI ...); "" for no public holidays.
    holidays: str = ""
    subdivision: str = ""
    # The library's categories: Sweden's Midsummer, Christmas and New Year's Eves are "de_facto".
    holiday_categories: list[str] = ["public"]
    closed: list[date] = []  # extra closed days
    # Each day: "08:00-16:00", several joined by commas, "00:00-24:00" all day, "" closed.
    monday: str = "08:00-16:00"
    tuesday: str = "08:00-16:00"
    wednesday: str = "08:00-16:00"
    thursday: str = "08:00-16:00"
    friday: str = "08:00-16:00"
    saturday: str = ""
    sunday: str = ""

    def calendar(self) -> BusinessHours:
        return hours_of(
            self.time_zone,
            [getattr(self, day) for day in WEEKDAYS],
            closed_days=frozenset(self.closed),
            country=self.holidays,
            subdivision=self.subdivision,
            categories=tuple(self.holiday_categories),
        )

    @model_validator(mode="after")
    def _valid(self) -> BusinessHoursSettings:
        try:
            self.calendar()
        except (ConfigError, ValueError, KeyError) as exc:  # zoneinfo raises KeyError subclasses
            raise ValueError(str(exc)) from None
        return self


class SlaPolicy(_Strict):
    """Answer and resolution targets, in business time, and what a breach does."""

    first_response: Age
    resolution: Age
    next_response: Age | None = None  # after each customer reply, until an agent answers
    warn_at: float = Field(default=0.8, gt=0, lt=1)  # share of a target at which to warn
    escalate_to: str = ""  # a group or an address told of a breach (else the case's people)
    raise_priority: bool = False  # a breach raises the priority one step
    reassign_to: str = ""  # a group or an address the case moves to on a breach


class FileConfig(_Strict):
    database_url: str = "sqlite:///var/mailrouter.db"
    rules: str = "rules"
    templates: str = "templates"
    daemon: DaemonSettings = DaemonSettings()
    limits: LimitsSettings = LimitsSettings()
    smtp: SmtpSettings
    agents: AgentSettings = AgentSettings()
    http: HttpSettings | None = None
    business_hours: dict[str, BusinessHoursSettings] = {}
    sla: dict[str, SlaPolicy] = {}
    sla_by_priority: dict[str, str] = {}  # priority (low, normal, high, urgent) -> [sla] policy
    mailboxes: dict[str, MailboxSettings]

    @model_validator(mode="after")
    def _consistent(self) -> FileConfig:
        if not self.mailboxes:
            raise ValueError("at least one [mailboxes.<department>] table is required")
        seen: dict[str, str] = {}
        for name, mailbox in self.mailboxes.items():
            for value in (mailbox.prefix, mailbox.address.lower()):
                if value in seen:
                    raise ValueError(f"mailboxes.{name} and mailboxes.{seen[value]} share {value!r}")
                seen[value] = name
            if mailbox.group and mailbox.group not in self.agents.groups:
                raise ValueError(f"mailboxes.{name}.group {mailbox.group!r} is not in agents.groups")
            if mailbox.business_hours and mailbox.business_hours not in self.business_hours:
                raise ValueError(
                    f"mailboxes.{name}.business_hours {mailbox.business_hours!r} "
                    "is not a [business_hours] table"
                )
            if mailbox.sla and mailbox.sla not in self.sla:
                raise ValueError(f"mailboxes.{name}.sla {mailbox.sla!r} is not an [sla] policy")
            longest = longest_signed_local_part(mailbox.address, f"{mailbox.prefix}-9999999", "xxx")
            if self.agents.groups and longest > LOCAL_PART_MAX:
                raise ValueError(
                    f"mailboxes.{name}.address: signed reply addresses would need a local part of "
                    f"{longest} characters (at most {LOCAL_PART_MAX}): use a shorter address or prefix"
                )
        self._consistent_sla()
        return self

    def _consistent_sla(self) -> None:
        for priority, policy in self.sla_by_priority.items():
            if priority not in ("low", "normal", "high", "urgent"):
                raise ValueError(f"sla_by_priority.{priority}: not a priority (low, normal, high, urgent)")
            if policy not in self.sla:
                raise ValueError(f"sla_by_priority.{priority} {policy!r} is not an [sla] policy")
        for name, policy in self.sla.items():
            for key in ("escalate_to", "reassign_to"):
                target = getattr(policy, key)
                if target and "@" not in target and target not in self.agents.groups:
                    raise ValueError(f"sla.{name}.{key} {target!r} is neither an address nor a group")


class Config:
    """The validated configuration with paths made absolute and secrets resolved."""

    def __init__(self, path: Path, data: FileConfig, secrets: dict[str, SecretStr]) -> None:
        self.path = path
        self.file = data
        self.base_dir = path.parent
        self._secrets = secrets
        self._calendars: dict[str, BusinessHours] = {}

    @property
    def mailboxes(self) -> dict[str, MailboxSettings]:
        return self.file.mailboxes

    @property
    def daemon(self) -> DaemonSettings:
        return self.file.daemon

    @property
    def limits(self) -> LimitsSettings:
        return self.file.limits

    @property
    def smtp(self) -> SmtpSettings:
        return self.file.smtp

    @property
    def rules_dir(self) -> Path:
        return self.base_dir / self.file.rules

    @property
    def templates_dir(self) -> Path:
        return self.base_dir / self.file.templates

    @property
    def database_url(self) -> str:
        """SQLite paths are taken relative to the config file, so the demo runs from anywhere."""
        url = self.file.database_url
        prefix = "sqlite:///"
        if url.startswith(prefix) and not url.startswith(prefix + "/") and url != prefix + ":memory:":
            return prefix + str(self.base_dir / url[len(prefix) :])
        return url

    def calendar(self, department: str) -> BusinessHours:
        """The department's business hours, built once (the holidays library computes its years)."""
        if department not in self._calendars:
            name = self.mailboxes[department].business_hours
            self._calendars[department] = self.file.business_hours[name].calendar() if name else always_open()
        return self._calendars[department]

    def secret(self, key: str) -> SecretStr | None:
        return self._secrets.get(key)

    def own_addresses(self) -> frozenset[str]:
        return frozenset(m.address.lower() for m in self.mailboxes.values())


def _describe(error: ValidationError, path: Path) -> str:
    lines = [f"{path}: invalid configuration"]
    for item in error.errors():
        key = ".".join(str(part) for part in item["loc"]) or "(top level)"
        message = "unknown key" if item["type"] == "extra_forbidden" else item["msg"]
        lines.append(f"  {key}: {message}")
    return "\n".join(lines)


def _reply_secret(source: SecretSource, where: str) -> SecretStr:
    """A reply secret short enough to guess would let anyone sign reply addresses."""
    secret = source.resolve(where)
    length = len(secret.get_secret_value().encode())
    if length < MIN_SECRET_BYTES:
        raise ConfigError(
            f"{where}: the reply secret is {length} bytes; at least {MIN_SECRET_BYTES} are needed"
        )
    return secret


def load_config(path: Path | str, *, resolve_secrets: bool = True) -> Config:
    path = Path(path).resolve()
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
    try:
        data = FileConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, path)) from None
    secrets: dict[str, SecretStr] = {}
    if resolve_secrets:
        for name, mailbox in data.mailboxes.items():
            secrets[f"imap.{name}"] = mailbox.imap.resolve(f"{path}: mailboxes.{name}.imap")
        agents = data.agents
        reply_secret = agents.secret_source()
        if reply_secret is not None:
            where = f"{path}: agents (reply key {agents.reply_key_id})"
            secrets["reply"] = _reply_secret(reply_secret, where)
            for retired in agents.previous_reply_secrets:
                source = SecretSource(password_env=retired.env, password_file=retired.file)
                where = f"{path}: agents.previous_reply_secrets (reply key {retired.id})"
                secrets[f"reply.{retired.id}"] = _reply_secret(source, where)
        token = data.http.token_source() if data.http is not None else None
        if token is not None:
            secrets["http"] = token.resolve(f"{path}: http")
        smtp_credentials = data.smtp.credentials()
        if smtp_credentials is not None:
            secrets["smtp"] = smtp_credentials.resolve(f"{path}: smtp")
    return Config(path, data, secrets)
