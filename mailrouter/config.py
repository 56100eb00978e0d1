"""config.toml: parsed once, validated completely, every error names the file and the key.

Secrets never live in the file: each one names an environment variable or a file (for systemd
credentials, `${CREDENTIALS_DIRECTORY}/name`), read once at start-up. Paths (database_url,
state_dir, secret files) may name environment variables as `${NAME}` or `${NAME:-default}`: under
systemd the database lives in `${STATE_DIRECTORY}`, never beside a read-only config.
"""

from __future__ import annotations

import ipaddress
import json
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
    field_validator,
    model_validator,
)

from mailrouter.agents import KEY_ID, LOCAL_PART_MAX, MIN_SECRET_BYTES, longest_signed_local_part
from mailrouter.businesshours import WEEKDAYS, BusinessHours, always_open, hours_of
from mailrouter.errors import ConfigError
from mailrouter.slots import trigger
from mailrouter.vocabulary import PeriodName

# The relay's name beside the mailboxes among a credential's users (alerts, refresh-token files).
RELAY = "smtp"
_AGE = re.compile(r"^\s*(\d+)\s*([smhdw])\s*$")
_AGE_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


_VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def expand(value: str, where: str) -> str:
    """`${NAME}` and `${NAME:-default}` replaced from the environment. An unset variable without a
    default is an error naming the key: left in place, it would become a directory named `${...}`."""

    def variable(match: re.Match[str]) -> str:
        name, default = match[1], match[2]
        found = os.environ.get(name) or default
        if found is None:
            raise ConfigError(f"{where}: environment variable {name} is not set")
        return found

    return _VARIABLE.sub(variable, value)


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
            if not value:
                raise ConfigError(f"{where}: environment variable {self.password_env} is empty")
            return SecretStr(value)
        assert self.password_file is not None
        path = Path(expand(self.password_file, where))
        try:
            value = path.read_text(encoding="utf-8").rstrip("\r\n")
        except OSError as exc:
            raise ConfigError(f"{where}: cannot read password_file {path}: {exc.strerror}") from exc
        if not value:
            raise ConfigError(f"{where}: password_file {path} is empty")
        return SecretStr(value)


class ImapSettings(SecretSource):
    # "password" (LOGIN) or "oauth2": SASL XOAUTH2 with a token of the [oauth2.<name>] credential
    # named by `oauth2`, shared with every mailbox naming it.
    auth: Literal["password", "oauth2"] = "password"
    oauth2: str | None = None
    host: str
    port: int = Field(default=993, gt=0, lt=65536)
    # "tls": implicit TLS (993); "starttls": upgrade a plain connection (143); "none": loopback only.
    security: Literal["tls", "starttls", "none"] = "tls"
    ca_file: str | None = None
    # false turns certificate verification off (test servers only): logged as a WARNING at start.
    tls_verify: bool = True
    user: str
    timeout: float = Field(default=30.0, gt=0)

    @model_validator(mode="after")
    def _one_source(self) -> ImapSettings:
        """Overrides SecretSource's: a mailbox on OAuth2 has no password."""
        has_password = self.password_env is not None or self.password_file is not None
        if self.auth == "oauth2":
            if self.oauth2 is None:
                raise ValueError("auth = oauth2 needs oauth2 = the name of an [oauth2.<name>] section")
            if has_password:
                raise ValueError("auth = oauth2 takes no password_env or password_file")
            return self
        if self.oauth2 is not None:
            raise ValueError(f"oauth2 = {self.oauth2!r} is set but auth is password: set auth = oauth2")
        if not has_password or (self.password_env is not None and self.password_file is not None):
            raise ValueError("set exactly one of password_env or password_file")
        return self


class SmtpSettings(_Strict):
    host: str
    port: int = Field(default=587, gt=0, lt=65536)
    security: Literal["starttls", "tls", "none"] = "starttls"
    ca_file: str | None = None
    tls_verify: bool = True
    username: str | None = None
    password_env: str | None = None
    password_file: str | None = None
    # As for a mailbox: "oauth2" logs `username` in with SASL OAUTHBEARER (where the relay offers
    # it, else XOAUTH2) and a token of the named credential, the one its mailboxes share.
    auth: Literal["password", "oauth2"] = "password"
    oauth2: str | None = None
    timeout: float = Field(default=30.0, gt=0)
    retry_initial: float = Field(default=30.0, gt=0)
    retry_max: float = Field(default=900.0, gt=0)
    # A letter still refused for now this long after it was queued fails (seconds; 5 days).
    give_up_after: float = Field(default=5 * 86400.0, gt=0)
    # The letters the sender holds in memory at once, in bytes (always at least one letter).
    batch_bytes: int = Field(default=16 * 1024 * 1024, gt=0)

    @model_validator(mode="after")
    def _password_with_username(self) -> SmtpSettings:
        if self.auth == "oauth2":
            if self.oauth2 is None or self.username is None:
                raise ValueError("auth = oauth2 needs username and oauth2 = an [oauth2.<name>] section")
            if self.password_env is not None or self.password_file is not None:
                raise ValueError("auth = oauth2 takes no password_env or password_file")
            return self
        if self.oauth2 is not None:
            raise ValueError(f"oauth2 = {self.oauth2!r} is set but auth is password: set auth = oauth2")
        sources = [s for s in (self.password_env, self.password_file) if s is not None]
        if self.username is not None and len(sources) != 1:
            raise ValueError("with username, set exactly one of password_env or password_file")
        if self.username is None and sources:
            raise ValueError("a password source needs a username")
        return self

    def credentials(self) -> SecretSource | None:
        if self.username is None or self.auth == "oauth2":
            return None
        return SecretSource(password_env=self.password_env, password_file=self.password_file)


OAUTH2_FLOWS = {
    "microsoft": ("client_credentials", "delegated"),
    "google": ("service_account", "delegated"),
    "generic": ("client_credentials", "delegated"),
}


class OAuth2Settings(_Strict):
    """One identity-provider credential, `[oauth2.<name>]`. Its token serves every mailbox (and
    the relay) naming it; a delegated or service-account token is per mailbox user."""

    provider: Literal["microsoft", "google", "generic"]
    # client_credentials: app-only (Exchange Online); service_account: Google's domain-wide
    # delegation; delegated: a refresh token got once with `mailrouter oauth login <mailbox>`.
    flow: Literal["client_credentials", "service_account", "delegated"] | None = None
    tenant: str | None = None  # microsoft: the directory (tenant id or domain)
    client_id: str | None = None
    # Overrides of the provider's endpoints (sovereign clouds, tests): microsoft's authority
    # (https://login.microsoftonline.com), or any provider's token and device endpoints.
    authority: str | None = None
    token_endpoint: str | None = None
    device_authorization_endpoint: str | None = None
    scopes: list[str] | None = None
    client_secret_env: str | None = None
    client_secret_file: str | None = None
    # microsoft: app-only access with a certificate instead of a secret (PEM files).
    certificate_file: str | None = None
    private_key_file: str | None = None
    # google: the service account's JSON key.
    service_account_file: str | None = None
    # The CA bundle that verifies the identity provider's TLS (tests, private clouds).
    ca_file: str | None = None
    # When the client secret runs out, if known (a certificate's own expiry is read from it):
    # warned about 14 days ahead.
    secret_expires: date | None = None

    @property
    def grant(self) -> str:
        return self.flow or OAUTH2_FLOWS[self.provider][0]

    @field_validator("authority", "token_endpoint", "device_authorization_endpoint")
    @classmethod
    def _https(cls, url: str | None) -> str | None:
        """Tokens and secrets cross these: never in the clear (MSAL refuses anything else too)."""
        if url is not None and not url.startswith("https://"):
            raise ValueError(f"{url!r} is not an https:// URL")
        return url

    @field_validator("scopes")
    @classmethod
    def _some_scopes(cls, scopes: list[str] | None) -> list[str] | None:
        if scopes is not None and (not scopes or not all(s.strip() for s in scopes)):
            raise ValueError("give at least one scope, none of them empty (or leave scopes out)")
        return scopes

    @model_validator(mode="after")
    def _complete(self) -> OAuth2Settings:
        provider, flow = self.provider, self.grant
        if flow not in OAUTH2_FLOWS[provider]:
            raise ValueError(f"flow: {flow!r} is not offered for provider {provider!r}")
        missing = []
        if provider == "microsoft" and self.tenant is None:
            missing.append("tenant")
        if flow != "service_account" and self.client_id is None:
            missing.append("client_id")
        if provider == "generic" and self.token_endpoint is None:
            missing.append("token_endpoint")
        if provider == "generic" and self.scopes is None:
            missing.append("scopes")
        if missing:
            raise ValueError(f"provider {provider!r} needs {' and '.join(missing)}")
        secrets = [k for k in ("client_secret_env", "client_secret_file") if getattr(self, k) is not None]
        certificate = self.certificate_file is not None or self.private_key_file is not None
        if len(secrets) > 1:
            raise ValueError("set at most one of client_secret_env or client_secret_file")
        if certificate and provider != "microsoft":
            raise ValueError("certificate_file and private_key_file are for provider microsoft")
        if certificate and (self.certificate_file is None or self.private_key_file is None):
            raise ValueError("certificate_file and private_key_file go together")
        if flow == "client_credentials" and not secrets and not certificate:
            raise ValueError(
                "flow client_credentials needs client_secret_env or client_secret_file"
                + (" (or certificate_file and private_key_file)" if provider == "microsoft" else "")
            )
        if flow == "service_account" and self.service_account_file is None:
            raise ValueError("flow service_account needs service_account_file (the account's JSON key)")
        if flow != "service_account" and self.service_account_file is not None:
            raise ValueError("service_account_file is only read with flow = service_account")
        return self

    def secret_source(self) -> SecretSource | None:
        if self.client_secret_env is None and self.client_secret_file is None:
            return None
        return SecretSource(password_env=self.client_secret_env, password_file=self.client_secret_file)


class AlertSettings(_Strict):
    """Ops are told by mail, once per incident, when a mailbox's credential stops working."""

    to: list[str] = Field(min_length=1)
    sender: str | None = None  # the From address; the first mailbox's address when unset

    @model_validator(mode="after")
    def _addresses(self) -> AlertSettings:
        for address in [*self.to, *([self.sender] if self.sender else [])]:
            if not re.fullmatch(r"[^@\s]+@[^@\s]+", address):
                raise ValueError(f"{address!r} is not an email address")
        return self


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
    # "authenticated": acknowledge only senders whose From domain our border MTA authenticated
    # (aligned DKIM or DMARC pass); others get their case, and no answer.
    acknowledge_senders: Literal["all", "authenticated"] = "all"
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
    # The customer hears how it goes: a mail from the status_update template when an agent sets
    # the case pending (waiting for you) or resolved (with how to reopen).
    status_mail: bool = True
    # A case waiting on us whose customer has had no mail from us for this many business days
    # (the department's calendar) reminds its assignee or group, once per silence; with
    # quiet_status_mail the customer gets a status update too. 0: never.
    quiet_days: int = Field(default=0, ge=0)
    quiet_status_mail: bool = False
    # Pending this long with no answer from the customer: resolved, and the customer told.
    auto_resolve_after: Age | None = None
    # Resolved this long (and not reopened): closed.
    auto_close_after: Age | None = None
    # A resolved case's customer is asked one question: how satisfied, 1 to 5, by replying.
    satisfaction_survey: bool = False
    # Sensitive cases (health data: sick leave): every case of the department, or those of these
    # categories (a rule's then.sensitive decides first). Agents' mail carries the case number,
    # the category and an excerpt; `#show` or `mailrouter show` gives the rest.
    sensitive: bool = False
    sensitive_categories: list[str] = []
    # A case closed (and left alone) this many months loses its mail and personal data; what
    # the reports count stays. None: kept for ever.
    retain_months: int | None = Field(default=None, gt=0)
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
    # The dashboard's words (its pages and charts), from the reports' catalogue of this language:
    # one language for the whole endpoint, as its overview spans every department and its
    # readers are the desk's own people, whatever their customers write in.
    language: Literal["en", "sv", "no", "da", "fi"] = "en"

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
    # Forged senders rotate addresses: a budget per sender domain, and one for the whole desk,
    # for senders our border MTA did not authenticate (an internal desk's own staff, authenticated,
    # are never held back by them).
    acknowledgements_per_domain: int = Field(default=200, ge=0)
    acknowledgements_total: int = Field(default=1000, ge=0)
    acknowledgement_window: float = Field(default=3600.0, gt=0)
    # A sender's messages on one case that notify the agents within the window; more are recorded.
    follow_up_notifications_per_sender: int = Field(default=10, ge=0)
    # The files an agent attaches to an answer are sent on to the customer up to this many bytes.
    relay_attachment_bytes: int = Field(default=10 * 1024 * 1024, ge=0)
    max_message_size: int = Field(default=25 * 1024 * 1024, gt=0)
    # A parse in a worker that takes longer is abandoned for a degraded reading (parsepool).
    parse_time_limit: float = Field(default=5.0, gt=0)
    html_to_text_chars: int = Field(default=1024 * 1024, gt=0)
    regex_text_chars: int = Field(default=64 * 1024, gt=0)


class DatabaseSettings(_Strict):
    """Bounds on PostgreSQL, so that no database call holds a worker (or the event loop) without
    end: a server that accepts the connection and never answers, a lock held for ever."""

    connect_timeout: float = Field(default=10.0, gt=0)
    statement_timeout: float = Field(default=30.0, gt=0)


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


class ReportSettings(_Strict):
    """A report mailed on a schedule (`[[reports]]`): the figures of a period, with charts and
    the CSV, from the (first) department's address; once per slot however many instances run."""

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,39}$")  # names its slots in the database
    # "mon 07:00", "mon-fri 06:30", "daily 07:00", or a crontab line "0 7 * * mon".
    schedule: str
    time_zone: str = "UTC"
    recipients: list[str] = Field(min_length=1)
    departments: list[str] = []  # every department when empty
    period: PeriodName = PeriodName.LAST_WEEK
    language: Literal["en", "sv", "no", "da", "fi"] = "en"
    # A slot missed while no instance ran is sent at start if it is at most this old.
    grace: Age = timedelta(hours=6)

    @model_validator(mode="after")
    def _valid(self) -> ReportSettings:
        trigger(self.schedule, self.time_zone)
        for address in self.recipients:
            if not re.fullmatch(r"[^@\s]+@[^@\s]+", address):
                raise ValueError(f"recipients: {address!r} is not an email address")
        return self


class PrivacySettings(_Strict):
    """What personal data goes where (README, "Personal data")."""

    # How much of a sensitive case's mail its notification quotes.
    excerpt_chars: int = Field(default=120, ge=0, le=1000)
    # Retention, run daily (a case's own: [mailboxes.<department>] retain_months): mail that
    # screening kept out of any case, quarantined and refused mail's kept bytes, and the bodies
    # of sent letters are deleted this many days after they arrived or went.
    screened_days: int = Field(default=30, gt=0)
    quarantine_days: int = Field(default=90, gt=0)
    sent_body_days: int = Field(default=7, ge=0)
    # At most this many cases, messages or letters in one transaction of a retention run.
    retention_batch: int = Field(default=200, gt=0, le=10000)
    # The secret salt of the hash an erasure's audit event records instead of the address
    # (`mailrouter privacy erase`): an environment variable or a credential file, never here.
    erasure_salt_env: str | None = None
    erasure_salt_file: str | None = None

    @model_validator(mode="after")
    def _one_salt(self) -> PrivacySettings:
        if self.erasure_salt_env is not None and self.erasure_salt_file is not None:
            raise ValueError("set at most one of erasure_salt_env or erasure_salt_file")
        return self

    def salt_source(self) -> SecretSource | None:
        if self.erasure_salt_env is None and self.erasure_salt_file is None:
            return None
        return SecretSource(password_env=self.erasure_salt_env, password_file=self.erasure_salt_file)


class FileConfig(_Strict):
    database_url: str = "sqlite:///var/mailrouter.db"
    database: DatabaseSettings = DatabaseSettings()
    rules: str = "rules"
    templates: str = "templates"
    # mailrouter's own files (refresh tokens from `mailrouter oauth login`), relative to this file.
    state_dir: str = "var"
    daemon: DaemonSettings = DaemonSettings()
    limits: LimitsSettings = LimitsSettings()
    smtp: SmtpSettings
    agents: AgentSettings = AgentSettings()
    http: HttpSettings | None = None
    oauth2: dict[str, OAuth2Settings] = {}
    alerts: AlertSettings | None = None
    privacy: PrivacySettings = PrivacySettings()

    business_hours: dict[str, BusinessHoursSettings] = {}
    sla: dict[str, SlaPolicy] = {}
    sla_by_priority: dict[str, str] = {}  # priority (low, normal, high, urgent) -> [sla] policy
    mailboxes: dict[str, MailboxSettings]
    reports: list[ReportSettings] = []

    @model_validator(mode="after")
    def _consistent(self) -> FileConfig:
        if not self.mailboxes:
            raise ValueError("at least one [mailboxes.<department>] table is required")
        seen: dict[str, str] = {}
        named = [(f"mailboxes.{n}.imap", m.imap.oauth2) for n, m in self.mailboxes.items()]
        for where, credential in [*named, ("smtp", self.smtp.oauth2)]:
            if credential is not None and credential not in self.oauth2:
                known = ", ".join(sorted(self.oauth2)) or "none"
                raise ValueError(
                    f"{where}.oauth2: {credential!r} is not an [oauth2.<name>] section (there are: {known})"
                )
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
        self._consistent_reports()
        return self

    def _consistent_reports(self) -> None:
        names: set[str] = set()
        for index, report in enumerate(self.reports):
            if report.name in names:
                raise ValueError(f"reports.{index}.name {report.name!r}: another report has that name")
            names.add(report.name)
            for department in report.departments:
                if department not in self.mailboxes:
                    raise ValueError(
                        f"reports.{index}.departments: {department!r} is not a [mailboxes.<department>]"
                    )

    def _consistent_sla(self) -> None:
        for priority, policy in self.sla_by_priority.items():
            if priority not in ("low", "normal", "high", "urgent"):
                raise ValueError(f"sla_by_priority.{priority}: not a priority (low, normal, high, urgent)")
            if policy not in self.sla:
                raise ValueError(f"sla_by_priority.{priority} {policy!r} is not an [sla] policy")
        for name, settings in self.sla.items():
            for key in ("escalate_to", "reassign_to"):
                target = getattr(settings, key)
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
        self._database_url = expand(data.database_url, f"{path}: database_url")
        self._state_dir = expand(data.state_dir, f"{path}: state_dir")

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
    def state_dir(self) -> Path:
        return self.base_dir / self._state_dir

    @property
    def database_url(self) -> str:
        """SQLite paths are taken relative to the config file, so the demo runs from anywhere."""
        url = self._database_url
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
    """One line per problem, each naming the file and the key."""
    lines = []
    for item in error.errors():
        key = ".".join(str(part) for part in item["loc"]) or "(top level)"
        message = "unknown key" if item["type"] == "extra_forbidden" else item["msg"]
        lines.append(f"{path}: {key}: {message}")
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


def _read(path: Path, file: str, where: str) -> SecretStr:
    full = path.parent / expand(file, where)
    try:
        return SecretStr(full.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"{where}: cannot read {full}: {exc.strerror}") from exc


def _oauth2_secrets(name: str, credential: OAuth2Settings, path: Path) -> dict[str, SecretStr]:
    """The credential's secret, private key or service-account key, read once at start-up."""
    where = f"{path}: oauth2.{name}"
    found: dict[str, SecretStr] = {}
    source = credential.secret_source()
    if source is not None:
        found[f"oauth2.{name}"] = source.resolve(where)
    if credential.private_key_file is not None:
        found[f"oauth2.{name}.key"] = _read(path, credential.private_key_file, f"{where}.private_key_file")
    if credential.service_account_file is not None:
        key = _read(path, credential.service_account_file, f"{where}.service_account_file")
        try:
            account = json.loads(key.get_secret_value())
            missing = [k for k in ("client_email", "private_key") if k not in account]
        except (ValueError, TypeError):
            missing = ["(valid JSON)"]
        if missing:
            raise ConfigError(
                f"{where}.service_account_file: not a service account key: no {', '.join(missing)}"
            )
        found[f"oauth2.{name}"] = key
    return found


def _resolve_secrets(
    data: FileConfig, path: Path, *, reply_only: bool = False
) -> tuple[dict[str, SecretStr], list[str]]:
    """Every secret the file names (or only the reply secrets), each read once; the ones that
    cannot be read, one line each (`mailrouter check` names them all, not only the first)."""
    secrets: dict[str, SecretStr] = {}
    problems: list[str] = []

    def read(key: str, source: SecretSource, where: str, *, reply: bool = False) -> None:
        try:
            secrets[key] = _reply_secret(source, where) if reply else source.resolve(where)
        except ConfigError as exc:
            problems.append(str(exc))

    agents = data.agents
    reply_secret = agents.secret_source()
    if reply_secret is not None:
        read("reply", reply_secret, f"{path}: agents (reply key {agents.reply_key_id})", reply=True)
        for retired in agents.previous_reply_secrets:
            source = SecretSource(password_env=retired.env, password_file=retired.file)
            where = f"{path}: agents.previous_reply_secrets (reply key {retired.id})"
            read(f"reply.{retired.id}", source, where, reply=True)
    if reply_only:
        return secrets, problems
    for name, mailbox in data.mailboxes.items():
        if mailbox.imap.auth == "password":
            read(f"imap.{name}", mailbox.imap, f"{path}: mailboxes.{name}.imap")
    for name, credential in data.oauth2.items():
        try:
            secrets.update(_oauth2_secrets(name, credential, path))
        except ConfigError as exc:
            problems.append(str(exc))
    token = data.http.token_source() if data.http is not None else None
    if token is not None:
        read("http", token, f"{path}: http")
    smtp_credentials = data.smtp.credentials()
    if smtp_credentials is not None:
        read("smtp", smtp_credentials, f"{path}: smtp")
    salt = data.privacy.salt_source()
    if salt is not None:  # read only by `privacy erase`; named here so `check` finds it missing
        read("privacy.erasure_salt", salt, f"{path}: privacy")
    return secrets, problems


def load_config(path: Path | str, *, resolve_secrets: bool = True, reply_only: bool = False) -> Config:
    """`reply_only`: of the secrets, only the reply secrets (`deliver` signs agents' reply
    addresses with them; the MTA runs it as a user that may read no mailbox's or relay's password)."""
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
        secrets, problems = _resolve_secrets(data, path, reply_only=reply_only)
        if problems:
            raise ConfigError("\n".join(problems))
    return Config(path, data, secrets)
