"""oauth: access tokens for the IMAP and SMTP logins, one per credential, renewed ahead of expiry.

Microsoft's own MSAL gets Exchange Online's app-only tokens (it knows Entra's authorities, the
certificate assertion and the error codes); authlib's OAuth2 client does the rest: the
client-credentials grant of a generic provider, Google's service-account JWT grant (RFC 7523),
and the refresh-token grant of delegated access. No token is parsed here: the libraries do it.

Both libraries are synchronous (requests), so a renewal runs in a thread, under the token's lock,
about once per token lifetime: at 80 % of it, and once more when a server refuses a token that
should still be good. A mailbox never asks the identity provider on every connection.

When the identity provider refuses (invalid_grant, a disabled app, a wrong secret or tenant), the
`TokenRefused` it raises says what the provider answered and what to do; the first refusal of an
incident, and the recovery after it, are reported to `Incidents` (the daemon records an event and
mails ops once).
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any, Protocol

import msal
import requests
from authlib.common.errors import AuthlibBaseError
from authlib.integrations.requests_client import AssertionSession, OAuth2Session
from pydantic import SecretStr

from mailrouter.config import Config, OAuth2Settings
from mailrouter.errors import ConfigError, TokenRefused, TokenUnavailable

log = logging.getLogger(__name__)

RENEW_AT = 0.8  # of a token's lifetime
JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
DEVICE_CODE = "urn:ietf:params:oauth:grant-type:device_code"
EXPIRY_WARNING_DAYS = 14

MICROSOFT_AUTHORITY = "https://login.microsoftonline.com"
GOOGLE_TOKEN_ENDPOINT = "https://oauth2.googleapis.com/token"
GOOGLE_DEVICE_ENDPOINT = "https://oauth2.googleapis.com/device/code"
SCOPES = {
    ("microsoft", "client_credentials"): ["https://outlook.office365.com/.default"],
    ("microsoft", "delegated"): [
        "https://outlook.office365.com/IMAP.AccessAsUser.All",
        "https://outlook.office365.com/SMTP.Send",
        "offline_access",
    ],
    ("google", "service_account"): ["https://mail.google.com/"],
    ("google", "delegated"): ["https://mail.google.com/"],
}


@dataclass(frozen=True)
class Token:
    value: SecretStr
    obtained: float  # time.time()
    expires: float

    def due(self, now: float) -> bool:
        """Renew at 80 % of the lifetime: early enough for a slow provider, rare enough to be cheap."""
        return now >= self.obtained + RENEW_AT * (self.expires - self.obtained)


def advice(error: str, description: str, flow: str) -> str:
    """What a person should do about the provider's answer."""
    text = f"{error} {description}".lower()
    if "tenant" in text or "aadsts90002" in text:
        return "the tenant is wrong or unknown: check tenant (or authority) in the [oauth2] section"
    if error == "unauthorized_client" and flow == "service_account":
        return (
            "the service account may not act for this user: in the Google Admin console (Security, "
            "API controls, Domain-wide delegation) authorize its client id for the scopes"
        )
    if "disabled" in text or error == "unauthorized_client":
        return "the application is disabled or not allowed this grant: re-enable it in the provider's console"
    if error == "invalid_client":
        return (
            "the client secret or certificate is wrong or expired: issue a new one and update the credential"
        )
    if error == "invalid_scope":
        return "the scopes are not granted to the application: check scopes and the admin consent"
    if error == "invalid_grant" and flow == "delegated":
        return "the refresh token was revoked or expired: run `mailrouter oauth login <mailbox>` again"
    if error == "invalid_grant":
        return "the grant was refused (consent revoked, account deleted): check the application's permissions"
    return "check the credential in the identity provider's console"


class Grant(Protocol):
    """One way of getting a token; synchronous (the libraries are), run in a thread."""

    def fetch(self) -> Token: ...


def sasl_bearer(mechanism: str, user: str, token: SecretStr) -> bytes:
    """The initial response of SASL OAUTHBEARER (RFC 7628) or XOAUTH2, for IMAP and SMTP alike."""
    if mechanism.upper() == "OAUTHBEARER":
        return f"n,a={user},\1auth=Bearer {token.get_secret_value()}\1\1".encode()
    return f"user={user}\1auth=Bearer {token.get_secret_value()}\1\1".encode()


def _token(value: object, expires_in: object, now: float) -> Token:
    return Token(SecretStr(str(value)), now, now + float(str(expires_in or 3600)))


@dataclass
class MicrosoftAppOnly:
    """Exchange Online app-only access (client credentials) through MSAL. After a refusal the
    next try uses a new MSAL application: MSAL repeats an identical HTTP 400 from memory for 60 s,
    which would hide a re-enabled application for a minute; our backoff spaces the tries."""

    make_app: Callable[[], msal.ConfidentialClientApplication]
    scopes: list[str]
    name: str
    app: msal.ConfidentialClientApplication | None = None

    def fetch(self) -> Token:
        now = time.time()
        try:
            if self.app is None:
                self.app = self.make_app()  # reads the tenant's discovery document
            self.app.remove_tokens_for_client()  # our cache decides when to renew, not MSAL's
            result = self.app.acquire_token_for_client(scopes=self.scopes)
        except (requests.RequestException, ValueError) as exc:
            self.app = None
            raise TokenUnavailable(
                f"credential {self.name}: the identity provider is unreachable or refused the "
                f"authority: {exc}"
            ) from exc
        if "access_token" not in result:
            self.app = None
            raise refused(
                self.name, "client_credentials", result.get("error"), result.get("error_description")
            )
        return _token(result["access_token"], result.get("expires_in"), now)


@dataclass
class AuthlibGrant:
    """The grants authlib's requests client does: client credentials, a refresh token (written
    back when the provider rotates it), or a service account's signed assertion."""

    session: OAuth2Session | AssertionSession
    endpoint: str
    flow: str
    name: str
    refresh_file: Path | None = None

    def fetch(self) -> Token:
        now = time.time()
        try:
            if self.refresh_file is not None:
                stored = read_refresh_token(self.refresh_file, self.name)
                result = self.session.refresh_token(self.endpoint, refresh_token=stored)
                if result.get("refresh_token") and result["refresh_token"] != stored:
                    store_refresh_token(self.refresh_file, str(result["refresh_token"]))
            elif isinstance(self.session, AssertionSession):
                result = self.session.refresh_token()  # a new assertion, signed now
            else:
                result = self.session.fetch_token(self.endpoint, grant_type="client_credentials")
        except AuthlibBaseError as exc:  # the provider's error answer (OAuthError, OAuth2Error)
            raise refused(self.name, self.flow, exc.error, exc.description) from None
        except requests.RequestException as exc:
            raise TokenUnavailable(
                f"credential {self.name}: the identity provider is unreachable: {exc}"
            ) from exc
        return _token(result["access_token"], result.get("expires_in"), now)


def refused(name: str, flow: str, error: object, description: object) -> TokenRefused:
    error, description = str(error or "error"), str(description or "").strip()
    return TokenRefused(name, error, description, advice(error, description, flow))


# --- refresh tokens on disk (never in the database or the log) -----------------------------------


def refresh_token_path(config: Config, mailbox: str) -> Path:
    return config.state_dir / "oauth" / f"{mailbox}.refresh-token"


def store_refresh_token(path: Path, token: str) -> None:
    """Written 0600 from the start (never readable by others for a moment) and replaced atomically."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    partial = path.with_name(path.name + ".new")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as file:
        json.dump({"refresh_token": token}, file)
    os.replace(partial, path)


def read_refresh_token(path: Path, name: str) -> str:
    try:
        return str(json.loads(path.read_text(encoding="utf-8"))["refresh_token"])
    except (OSError, ValueError, KeyError) as exc:
        raise TokenRefused(
            name,
            "no_refresh_token",
            f"{path} is missing or unreadable ({exc})",
            "run `mailrouter oauth login <mailbox>` to sign in once",
        ) from None


# --- building grants from the configuration -----------------------------------------------------


def endpoints(settings: OAuth2Settings) -> tuple[str, str | None]:
    """The token endpoint and the device-authorization endpoint of a credential."""
    if settings.provider == "microsoft":
        base = f"{(settings.authority or MICROSOFT_AUTHORITY).rstrip('/')}/{settings.tenant}/oauth2/v2.0"
        return settings.token_endpoint or f"{base}/token", (
            settings.device_authorization_endpoint or f"{base}/devicecode"
        )
    if settings.provider == "google":
        return settings.token_endpoint or GOOGLE_TOKEN_ENDPOINT, (
            settings.device_authorization_endpoint or GOOGLE_DEVICE_ENDPOINT
        )
    assert settings.token_endpoint is not None
    return settings.token_endpoint, settings.device_authorization_endpoint


def scopes(settings: OAuth2Settings) -> list[str]:
    if settings.scopes is not None:
        return settings.scopes
    return SCOPES[(settings.provider, settings.grant)]


def _verified(session: requests.Session, settings: OAuth2Settings, config: Config) -> requests.Session:
    """The session with the configured CA bundle on every request: requests lets REQUESTS_CA_BUNDLE
    override a session's `verify` (psf/requests#3829), but not a request's."""
    if settings.ca_file:
        session.request = functools.partial(  # type: ignore[method-assign]
            session.request, verify=str(config.base_dir / settings.ca_file)
        )
    return session


def msal_options(config: Config, name: str) -> dict[str, Any]:
    """MSAL's application settings for credential `name`, confidential or public alike."""
    settings = config.file.oauth2[name]
    authority = (settings.authority or MICROSOFT_AUTHORITY).rstrip("/")
    return {
        "client_id": settings.client_id,
        "authority": f"{authority}/{settings.tenant}",
        # Entra's instance discovery knows only Microsoft's own hosts: a configured authority
        # (a sovereign cloud, a test server) is trusted as written.
        "instance_discovery": settings.authority is None,
        "validate_authority": settings.authority is None,
        "http_client": _verified(requests.Session(), settings, config),
        "token_cache": msal.TokenCache(),
    }


def oauth2_session(config: Config, name: str) -> OAuth2Session:
    """authlib's client for credential `name`: a confidential client with its secret, a public
    one (a device-code sign-in without a secret) by its id alone."""
    settings = config.file.oauth2[name]
    secret = config.secret(f"oauth2.{name}")
    session = OAuth2Session(
        settings.client_id,
        secret.get_secret_value() if secret is not None else None,
        scope=" ".join(scopes(settings)),
        token_endpoint_auth_method="client_secret_post" if secret is not None else "none",
    )
    _verified(session, settings, config)
    return session


def build_grant(config: Config, name: str, subject: str | None, mailbox: str | None) -> Grant:
    """The grant of credential `name`; `subject` is the mailbox user a service account acts for,
    `mailbox` the one whose refresh token a delegated credential reads."""
    settings = config.file.oauth2[name]
    secret = config.secret(f"oauth2.{name}")
    token_endpoint, _ = endpoints(settings)
    if settings.grant == "client_credentials" and settings.provider == "microsoft":
        credential: Any
        if settings.certificate_file is not None:
            key = config.secret(f"oauth2.{name}.key")
            assert key is not None
            credential = {
                "private_key": key.get_secret_value(),
                "public_certificate": (config.base_dir / settings.certificate_file).read_text(),
            }
        else:
            assert secret is not None
            credential = secret.get_secret_value()
        app = functools.partial(
            msal.ConfidentialClientApplication, client_credential=credential, **msal_options(config, name)
        )
        return MicrosoftAppOnly(app, scopes(settings), name)
    if settings.grant == "service_account":
        assert secret is not None and subject is not None
        account = json.loads(secret.get_secret_value())
        endpoint = settings.token_endpoint or account.get("token_uri") or GOOGLE_TOKEN_ENDPOINT
        session = AssertionSession(
            endpoint,
            issuer=account["client_email"],
            subject=subject,
            audience=endpoint,
            grant_type=JWT_BEARER,
            scope=" ".join(scopes(settings)),
            key=account["private_key"],
            header={"alg": "RS256", "kid": account.get("private_key_id", "")},
        )
        _verified(session, settings, config)
        return AuthlibGrant(session, endpoint, "service_account", name)
    session = oauth2_session(config, name)
    if settings.grant == "delegated":
        if mailbox is None:
            raise ConfigError(f"oauth2.{name}: a delegated credential serves one mailbox user at a time")
        path = refresh_token_path(config, mailbox)
        return AuthlibGrant(session, token_endpoint, "delegated", name, refresh_file=path)
    return AuthlibGrant(session, token_endpoint, "client_credentials", name)


# --- the tokens the daemon holds ------------------------------------------------------------------


class Incidents(Protocol):
    """Told of the first refusal of an incident and of the recovery after it (not of each retry)."""

    async def refused(self, source: TokenSource, error: TokenRefused) -> None: ...
    async def recovered(self, source: TokenSource) -> None: ...


class TokenSource:
    """One token (a credential, and for a service account or delegated access its user), shared
    by every mailbox using it; async-safe: concurrent callers wait for one renewal."""

    def __init__(self, credential: str, grant: Grant, user: str | None, incidents: Incidents | None) -> None:
        self.credential = credential
        self.user = user
        self.grant = grant
        self.incidents = incidents
        self.renewals = 0
        self.refusal: TokenRefused | None = None  # the current incident, if any
        self._token: Token | None = None
        self._lock = asyncio.Lock()

    @property
    def label(self) -> str:
        return self.credential + (f" ({self.user})" if self.user else "")

    def due_in(self) -> float:
        """Seconds until the token should be renewed (0 when there is none)."""
        if self._token is None:
            return 0.0
        token = self._token
        return token.obtained + RENEW_AT * (token.expires - token.obtained) - time.time()

    async def token(self) -> SecretStr:
        """The current token, renewed first when 80 % of its lifetime has passed."""
        async with self._lock:
            if self._token is not None and not self._token.due(time.time()):
                return self._token.value
            return await self._renew()

    async def renewed(self, rejected: SecretStr) -> SecretStr:
        """A new token after a server refused `rejected`; the one another caller already got
        in the meantime, if any (one renewal per refusal, however many mailboxes saw it)."""
        async with self._lock:
            if self._token is not None and self._token.value != rejected:
                return self._token.value
            return await self._renew()

    async def _renew(self) -> SecretStr:
        try:
            token = await asyncio.to_thread(self.grant.fetch)
        except TokenRefused as exc:
            self._token = None
            first = self.refusal is None
            self.refusal = exc
            if first:
                log.error("credential %s: %s", self.label, exc)
                if self.incidents is not None:
                    await self.incidents.refused(self, exc)
            raise
        self.renewals += 1
        self._token = token
        if self.refusal is not None:
            self.refusal = None
            log.warning("credential %s works again: the identity provider issued a token", self.label)
            if self.incidents is not None:
                await self.incidents.recovered(self)
        log.debug("credential %s: token renewed, valid %.0fs", self.label, token.expires - token.obtained)
        return token.value


class Tokens:
    """The daemon's token sources, keyed so that one token serves every mailbox it can."""

    def __init__(self, config: Config, incidents: Incidents | None = None) -> None:
        self.config = config
        self.incidents = incidents
        self.sources: dict[tuple[str, str | None], TokenSource] = {}

    def source(self, credential: str, user: str, mailbox: str | None) -> TokenSource:
        """App-only tokens open every mailbox the application may; a service account's or a
        delegated token is one user's."""
        grant = self.config.file.oauth2[credential].grant
        key = (credential, None if grant == "client_credentials" else (mailbox or user))
        if key not in self.sources:
            subject = user if grant == "service_account" else None
            built = build_grant(self.config, credential, subject, mailbox)
            self.sources[key] = TokenSource(credential, built, key[1], self.incidents)
        return self.sources[key]


@dataclass(frozen=True)
class Expiry:
    """A client secret or certificate that runs out within 14 days (or has)."""

    credential: str
    what: str  # "client secret (secret_expires)" or "certificate <file>"
    expires: date
    days_left: int

    def __str__(self) -> str:
        when = (
            f"expired on {self.expires}"
            if self.days_left < 0
            else f"expires on {self.expires} ({self.days_left} days)"
        )
        return f"oauth2.{self.credential}: the {self.what} {when}: issue a new one before mail stops flowing"


def certificate_expiry(pem: bytes) -> date:
    """When a PEM certificate stops being valid (cryptography parses it; ValueError if it cannot)."""
    from cryptography import x509

    return x509.load_pem_x509_certificate(pem).not_valid_after_utc.date()


def expiry_warnings(config: Config, today: date) -> list[Expiry]:
    """Client secrets and certificates that run out within 14 days (or have), by credential."""
    warnings = []
    for name, settings in config.file.oauth2.items():
        expires: date | None = settings.secret_expires
        what = "client secret (secret_expires)"
        if settings.certificate_file is not None:
            expires = certificate_expiry((config.base_dir / settings.certificate_file).read_bytes())
            what = f"certificate {settings.certificate_file}"
        if expires is not None and (expires - today).days <= EXPIRY_WARNING_DAYS:
            warnings.append(Expiry(name, what, expires, (expires - today).days))
    return warnings
