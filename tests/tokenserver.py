"""A real, small OAuth2 authorization server for the tests: Dovecot asks it about tokens, and
mailrouter gets its tokens from it the way it would from Entra ID, Google or any other provider.

aiohttp serves it; PyJWT signs and verifies the access tokens (HS256 with a per-server key): no
token is parsed by hand. It speaks what mailrouter and Dovecot need:
- the token endpoint with the client-credentials, refresh-token, device-code and JWT-bearer
  (RFC 7523, Google's service accounts) grants, Entra-style at /<tenant>/oauth2/v2.0/token,
  with the OpenID discovery document MSAL reads first;
- device authorization (RFC 8628) at /<tenant>/oauth2/v2.0/devicecode, and the page the person
  approves the code on at /device (a form POST with user_code and user, as if signed in);
- introspection at /introspect, the token as a bearer (Dovecot's introspection_mode
  auth), answered as RFC 7662 does.
Tokens live `lifetime` seconds. A test can disable a client (every token of it is refused at
once, and so is every new grant: invalid_client) and enable it again, revoke the tokens a client
holds (new ones are issued), approve a device code, and read counters of what was issued and asked.
"""

from __future__ import annotations

import asyncio
import base64
import secrets
import ssl
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import jwt
from aiohttp import web

DEVICE_CODE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
JWT_BEARER_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"


@dataclass
class Client:
    secret: str
    mailboxes: frozenset[str]  # what its app-only tokens may open (Exchange's mailbox permissions)
    enabled: bool = True
    public_key: str | None = None  # a service account's key: it signs its own assertions


@dataclass
class Device:
    client_id: str
    user_code: str
    user: str | None = None  # set when the person approved it


@dataclass
class TokenServer:
    lifetime: int = 5
    clients: dict[str, Client] = field(default_factory=dict)
    issued: Counter[str] = field(default_factory=Counter)  # access tokens, by client
    refused: Counter[str] = field(default_factory=Counter)  # grants refused, by client
    introspected: Counter[str] = field(default_factory=Counter)  # "active"/"inactive"
    _key: str = field(default_factory=lambda: secrets.token_hex(32))
    _refresh: dict[str, tuple[str, str]] = field(default_factory=dict)  # token -> (client, user)
    _devices: dict[str, Device] = field(default_factory=dict)  # device code -> Device
    _jtis: dict[str, set[str]] = field(default_factory=dict)  # the access tokens issued, by client
    _revoked: set[str] = field(default_factory=set)  # jti of tokens revoked before their expiry
    expires: dict[str, float] = field(default_factory=dict)  # the latest token's expiry, by client
    _runners: list[web.AppRunner] = field(default_factory=list)
    base_url: str = ""

    # --- what a test does ---------------------------------------------------------------------

    def add_client(
        self, client_id: str, secret: str, mailboxes: set[str], public_key: str | None = None
    ) -> None:
        self.clients[client_id] = Client(secret, frozenset(mailboxes), public_key=public_key)

    def disable(self, client_id: str) -> None:
        self.clients[client_id].enabled = False

    def enable(self, client_id: str) -> None:
        self.clients[client_id].enabled = True

    def revoke_tokens(self, client_id: str) -> None:
        """The client's access tokens issued so far are refused from now on (as after a
        password reset); new ones are issued as before."""
        self._revoked |= self._jtis.get(client_id, set())

    def approve(self, user_code: str, user: str) -> None:
        device = next(d for d in self._devices.values() if d.user_code == user_code)
        device.user = user

    def refresh_token_for(self, client_id: str, user: str) -> str:
        token = secrets.token_urlsafe(32)
        self._refresh[token] = (client_id, user)
        return token

    async def start(self, introspection_port: int, tls: ssl.SSLContext | None = None) -> None:
        """Introspection on the stack's fixed port (plain HTTP, as Dovecot is configured); the
        token endpoints on a free port with TLS, as MSAL insists on https."""
        app = web.Application()
        app.router.add_get("/{tenant}/v2.0/.well-known/openid-configuration", self._discovery)
        app.router.add_post("/{tenant}/oauth2/v2.0/token", self._token)
        app.router.add_post("/{tenant}/oauth2/v2.0/devicecode", self._devicecode)
        app.router.add_get("/introspect", self._introspect)
        app.router.add_get("/device", self._device_page)
        app.router.add_post("/device", self._device_approval)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        self._runners.append(runner)
        await web.TCPSite(runner, "127.0.0.1", introspection_port).start()
        site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=tls)
        await site.start()
        assert isinstance(site._server, asyncio.Server)  # started: listening
        port = site._server.sockets[0].getsockname()[1]
        self.base_url = f"{'https' if tls else 'http'}://127.0.0.1:{port}"

    async def close(self) -> None:
        for runner in self._runners:
            await runner.cleanup()

    # --- endpoints ----------------------------------------------------------------------------

    async def _discovery(self, request: web.Request) -> web.Response:
        base = f"{self.base_url}/{request.match_info['tenant']}"
        return web.json_response(
            {
                "issuer": f"{base}/v2.0",
                "authorization_endpoint": f"{base}/oauth2/v2.0/authorize",
                "token_endpoint": f"{base}/oauth2/v2.0/token",
                "device_authorization_endpoint": f"{base}/oauth2/v2.0/devicecode",
            }
        )

    def _client(self, form: dict[str, str], request: web.Request) -> tuple[str, Client] | None:
        """The client by its secret (in the form or HTTP Basic) or by a certificate-signed
        assertion (RFC 7521, as MSAL sends it); a public client (device code) by its id alone.
        None when unknown or wrong."""
        client_id, secret = form.get("client_id", ""), form.get("client_secret")
        if request.headers.get("Authorization", "").startswith("Basic "):
            decoded = base64.b64decode(request.headers["Authorization"][6:]).decode()
            client_id, _, secret = decoded.partition(":")
        client = self.clients.get(client_id)
        if client is None:
            return None
        if "client_assertion" in form:
            if client.public_key is None:
                return None  # no key to check its assertion with
            try:
                jwt.decode(
                    form["client_assertion"],
                    client.public_key,
                    algorithms=["RS256", "PS256"],
                    options={"verify_aud": False},
                )
            except jwt.PyJWTError:
                return None
        elif secret is None:
            if form.get("grant_type") == "client_credentials":
                return None  # a confidential grant without a credential
        elif not secrets.compare_digest(secret, client.secret):
            return None
        return client_id, client

    def _issue(self, client_id: str, user: str | None, refresh: bool) -> web.Response:
        now = int(time.time())
        claims = {"iss": self.base_url, "sub": user or client_id, "azp": client_id, "iat": now}
        expires = now + self.lifetime
        claims |= {"exp": expires, "jti": secrets.token_hex(8)}
        if user is not None:
            claims["upn"] = user
        self.issued[client_id] += 1
        self._jtis.setdefault(client_id, set()).add(str(claims["jti"]))
        self.expires[client_id] = float(expires)
        body: dict[str, object] = {
            "token_type": "Bearer",
            "access_token": jwt.encode(claims, self._key, algorithm="HS256"),
            "expires_in": self.lifetime,
        }
        if refresh and user is not None:
            body["refresh_token"] = self.refresh_token_for(client_id, user)
        return web.json_response(body)

    def _error(self, client_id: str, error: str, description: str, status: int = 400) -> web.Response:
        self.refused[client_id] += 1
        return web.json_response({"error": error, "error_description": description}, status=status)

    async def _token(self, request: web.Request) -> web.Response:
        form = {k: str(v) for k, v in (await request.post()).items()}
        grant = form.get("grant_type", "")
        if grant == JWT_BEARER_GRANT:
            return self._jwt_bearer(form, request)
        found = self._client(form, request)
        client_id = form.get("client_id", "?")
        if found is None:
            return self._error(client_id, "invalid_client", "AADSTS7000215: Invalid client secret.", 401)
        client_id, client = found
        if not client.enabled:
            return self._error(
                client_id, "unauthorized_client", "AADSTS7000112: Application is disabled.", 400
            )
        if grant == "client_credentials":
            return self._issue(client_id, None, refresh=False)
        if grant == "refresh_token":
            owner = self._refresh.get(form.get("refresh_token", ""))
            if owner is None or owner[0] != client_id:
                return self._error(client_id, "invalid_grant", "AADSTS70000: refresh token not valid")
            return self._issue(client_id, owner[1], refresh=True)
        if grant == DEVICE_CODE_GRANT:
            device = self._devices.get(form.get("device_code", ""))
            if device is None or device.client_id != client_id:
                return self._error(client_id, "expired_token", "the device code is unknown or expired")
            if device.user is None:
                return web.json_response({"error": "authorization_pending"}, status=400)
            del self._devices[form["device_code"]]
            return self._issue(client_id, device.user, refresh=True)
        return self._error(client_id, "unsupported_grant_type", f"grant {grant!r} is not offered")

    def _jwt_bearer(self, form: dict[str, str], request: web.Request) -> web.Response:
        """Google's service-account grant (RFC 7523): an assertion signed with the account's
        private key, for this token endpoint (aud), naming the account (iss) and the user it acts
        for (sub), who must be one the domain-wide delegation covers (the client's mailboxes)."""
        assertion = form.get("assertion", "")
        try:
            unverified = jwt.decode(assertion, options={"verify_signature": False})
            client_id = str(unverified["iss"])
            client = self.clients[client_id]
            assert client.public_key is not None
            audience = str(request.url)
            claims = jwt.decode(assertion, client.public_key, algorithms=["RS256"], audience=audience)
        except (jwt.PyJWTError, KeyError, AssertionError) as exc:
            return self._error("?", "invalid_grant", f"Invalid JWT: {exc}")
        if not client.enabled:
            return self._error(client_id, "invalid_grant", "Invalid grant: account not found")
        if not form.get("scope"):
            return self._error(
                client_id, "invalid_scope", "Invalid OAuth scope or ID token audience provided."
            )
        if claims.get("sub") not in client.mailboxes:
            return self._error(
                client_id,
                "unauthorized_client",
                "Client is unauthorized to retrieve access tokens using this method, or client not "
                "authorized for any of the scopes requested.",
            )
        return self._issue(client_id, str(claims["sub"]), refresh=False)

    async def _devicecode(self, request: web.Request) -> web.Response:
        form = await request.post()
        client_id = str(form.get("client_id", ""))
        if client_id not in self.clients:
            return self._error(client_id, "invalid_client", "unknown client")
        device_code, user_code = secrets.token_urlsafe(24), secrets.token_hex(4).upper()
        self._devices[device_code] = Device(client_id, user_code)
        return web.json_response(
            {
                "device_code": device_code,
                "user_code": user_code,
                "verification_uri": f"{self.base_url}/device",
                "expires_in": 300,
                "interval": 1,
                "message": f"To sign in, open {self.base_url}/device and enter the code {user_code}.",
            }
        )

    async def _device_page(self, request: web.Request) -> web.Response:
        """Where the person goes: a form for the code (and, as if signed in, who they are)."""
        return web.Response(
            content_type="text/html",
            text='<form method="post"><input name="user_code"><input name="user"><button>Go</button></form>',
        )

    async def _device_approval(self, request: web.Request) -> web.Response:
        """The form sent: the code is approved for that user, as by a person in the browser."""
        form = await request.post()
        code, user = str(form.get("user_code", "")), str(form.get("user", ""))
        if not any(d.user_code == code for d in self._devices.values()) or not user:
            return web.Response(status=400, text="unknown or expired code")
        self.approve(code, user)
        return web.Response(text=f"signed in as {user}: you may close this window")

    async def _introspect(self, request: web.Request) -> web.Response:
        """Active when the signature and expiry hold and the client is enabled. The username is
        the user of a delegated token, or an app-only token's first mailbox: Dovecot compares
        only its domain (see scripts/mailstack)."""
        token = request.headers.get("Authorization", "").removeprefix("Bearer ")
        try:
            claims = jwt.decode(token, self._key, algorithms=["HS256"])
        except jwt.PyJWTError:
            claims = {}
        client = self.clients.get(str(claims.get("azp", "")))
        if client is None or not client.enabled or claims.get("jti") in self._revoked:
            self.introspected["inactive"] += 1
            return web.json_response({"active": False})
        self.introspected["active"] += 1
        username = claims.get("upn") or min(client.mailboxes)
        return web.json_response({"active": True, "username": username, "client_id": claims["azp"]})


@contextmanager
def running(
    server: TokenServer, introspection_port: int, tls: ssl.SSLContext | None
) -> Iterator[TokenServer]:
    """The server on its own event loop in a thread, for synchronous tests driving a daemon process."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="tokenserver", daemon=True)
    thread.start()
    try:
        asyncio.run_coroutine_threadsafe(server.start(introspection_port, tls), loop).result(10)
        yield server
    finally:
        asyncio.run_coroutine_threadsafe(server.close(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()
