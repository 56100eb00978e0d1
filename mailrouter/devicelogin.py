"""devicelogin: `mailrouter oauth login <mailbox>`, the one sign-in a delegated credential needs.

The device-code flow (RFC 8628) suits a daemon on a server without a browser: it prints a URL
and a code, the mailbox's user signs in on any device, and the flow's polling gets a refresh
token. That token is stored 0600 under the state directory (oauth.store_refresh_token), never in
the database or the log, and the daemon's delegated grant renews access tokens with it.

Microsoft's sign-in goes through MSAL's own device flow (it knows Entra's authorities and error
codes, as for app-only access); the others through authlib's OAuth2 client, which sends the
device-code grant and turns the provider's error answers into OAuthError.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msal
import requests
from authlib.integrations.base_client.errors import OAuthError

from mailrouter.config import RELAY, Config
from mailrouter.errors import ConfigError, TokenRefused, TokenUnavailable
from mailrouter.oauth import (
    DEVICE_CODE,
    endpoints,
    msal_options,
    oauth2_session,
    refresh_token_path,
    refused,
    scopes,
    store_refresh_token,
)

# MSAL asks for these itself and refuses them in a caller's scopes.
MSAL_RESERVED_SCOPES = frozenset({"openid", "profile", "offline_access"})


@dataclass(frozen=True)
class Prompt:
    """What the person is told: where to go and which code to enter there."""

    user: str
    url: str
    code: str
    expires_in: int

    def __str__(self) -> str:
        minutes = max(1, self.expires_in // 60)
        return (
            f"To sign in {self.user} for mailrouter, open {self.url} and enter the code {self.code} "
            f"(within {minutes} minute{'s' if minutes != 1 else ''})."
        )


def credential_for(config: Config, name: str) -> tuple[str, str]:
    """(credential, user) that mailbox `name` (or "smtp", the relay) signs in with; a
    ConfigError naming the key when it has no delegated credential."""
    user: str | None
    if name in config.mailboxes:
        imap = config.mailboxes[name].imap
        credential, user, where = imap.oauth2, imap.user, f"mailboxes.{name}.imap"
    elif name == RELAY:
        credential, user, where = config.smtp.oauth2, config.smtp.username, RELAY
    else:
        known = ", ".join([*config.mailboxes, RELAY])
        raise ConfigError(f"{config.path}: no mailbox {name!r} (there are: {known})")
    if credential is None or user is None:
        raise ConfigError(f"{config.path}: {where}: auth is not oauth2: there is nothing to sign in to")
    flow = config.file.oauth2[credential].grant
    if flow != "delegated":
        raise ConfigError(
            f"{config.path}: oauth2.{credential}: flow is {flow}, which needs no sign-in "
            "(only flow = delegated keeps a refresh token)"
        )
    return credential, user


def login(config: Config, name: str, tell: Callable[[Prompt], None]) -> Path:
    """Sign mailbox `name` in: `tell` the person the URL and code, wait for them, store the
    refresh token; returns its file."""
    credential, user = credential_for(config, name)
    settings = config.file.oauth2[credential]
    try:
        if settings.provider == "microsoft":
            token = _msal(config, credential, user, tell)
        else:
            token = _authlib(config, credential, user, tell)
    except requests.RequestException as exc:
        raise TokenUnavailable(
            f"credential {credential}: the identity provider is unreachable: {exc}"
        ) from exc
    if not token.get("refresh_token"):
        raise refused(credential, "delegated", "no_refresh_token", "the provider issued no refresh token")
    path = refresh_token_path(config, name)
    store_refresh_token(path, str(token["refresh_token"]))
    return path


def _msal(config: Config, credential: str, user: str, tell: Callable[[Prompt], None]) -> dict[str, Any]:
    app = msal.PublicClientApplication(**msal_options(config, credential))
    wanted = [s for s in scopes(config.file.oauth2[credential]) if s not in MSAL_RESERVED_SCOPES]
    flow = app.initiate_device_flow(scopes=wanted)
    if "user_code" not in flow:
        raise refused(credential, "delegated", flow.get("error"), flow.get("error_description"))
    tell(Prompt(user, flow["verification_uri"], flow["user_code"], int(flow.get("expires_in", 900))))
    result: dict[str, Any] = app.acquire_token_by_device_flow(flow)  # polls as the provider asks
    if "access_token" not in result:
        raise refused(credential, "delegated", result.get("error"), result.get("error_description"))
    return result


def _authlib(config: Config, credential: str, user: str, tell: Callable[[Prompt], None]) -> dict[str, Any]:
    settings = config.file.oauth2[credential]
    token_endpoint, device_endpoint = endpoints(settings)
    if device_endpoint is None:
        raise ConfigError(
            f"{config.path}: oauth2.{credential}: device_authorization_endpoint is needed to sign in"
        )
    session = oauth2_session(config, credential)
    form = {"client_id": settings.client_id or "", "scope": " ".join(scopes(settings))}
    answer = session.post(device_endpoint, data=form, withhold_token=True)
    started = answer.json()
    if "device_code" not in started:
        raise refused(credential, "delegated", started.get("error"), started.get("error_description"))
    url = started.get("verification_uri") or started.get("verification_url")  # Google's older name
    expires_in = int(started.get("expires_in", 900))
    tell(Prompt(user, str(url), str(started["user_code"]), expires_in))
    interval, deadline = float(started.get("interval", 5)), time.monotonic() + expires_in
    while time.monotonic() < deadline:
        time.sleep(interval)
        try:
            token: dict[str, Any] = session.fetch_token(
                token_endpoint, grant_type=DEVICE_CODE, device_code=started["device_code"]
            )
            return token
        except OAuthError as exc:
            if exc.error == "authorization_pending":
                continue
            if exc.error == "slow_down":  # RFC 8628 3.5: five seconds more from now on
                interval += 5
                continue
            raise refused(credential, "delegated", exc.error, exc.description) from None
    raise TokenRefused(credential, "expired_token", "nobody signed in in time", "run the sign-in again")
