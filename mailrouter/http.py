"""http: the daemon's HTTP endpoint on aiohttp: /metrics (Prometheus), /healthz, /readyz and the
dashboard (/dashboard, /dashboard/<department> and its charts), behind the one token check.

It runs on the daemon's own event loop, so /healthz answering is itself the proof that the loop
is alive. The database is read, and pages and charts are drawn, in a thread, never on the loop.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import asdict, dataclass
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Middleware
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from pydantic import SecretStr
from sqlalchemy import Engine

from mailrouter import dashboard
from mailrouter.config import Config, HttpSettings
from mailrouter.errors import ConfigError
from mailrouter.facts import DatabaseFacts, read_facts
from mailrouter.health import LATENCY_BUCKETS, Health, MailboxHealth
from mailrouter.models import utcnow
from mailrouter.pictures import Chart
from mailrouter.plan import OutcomeKind
from mailrouter.templates import Templates

log = logging.getLogger(__name__)

DATABASE_TIMEOUT = 5.0  # /readyz answers within this even when the database hangs


@dataclass(frozen=True)
class Thresholds:
    max_poll_age: float
    idle_timeout: float
    max_outbox_age: float


@dataclass(frozen=True)
class Readiness:
    ready: bool
    causes: list[str]  # why not ready, each naming the mailbox, task or store
    mailboxes: dict[str, dict[str, object]]
    tasks: dict[str, dict[str, object]]
    oldest_queued_age: float | None


def _mailbox_cause(mailbox: MailboxHealth, now: float, limits: Thresholds) -> str | None:
    error = f" (last error: {mailbox.last_error})" if mailbox.last_error else ""
    if mailbox.login_failed:
        return f"mailbox {mailbox.name}: cannot log in{error}"
    allowed = limits.max_poll_age + (limits.idle_timeout if mailbox.idle else 0.0)
    age = mailbox.poll_age(now)
    if age > allowed:
        return f"mailbox {mailbox.name}: no successful poll for {age:.0f}s{error}"
    return None


def judge(health: Health, facts: DatabaseFacts | str, now: float, limits: Thresholds) -> Readiness:
    """Ready or not, and why; `facts` is the database's error text when it could not be read."""
    causes = [cause for m in health.mailboxes.values() if (cause := _mailbox_cause(m, now, limits))]
    causes += [
        f"task {t.name}: restarting after a failure ({t.last_error})"
        for t in health.tasks.values()
        if not t.running
    ]
    oldest = None
    if isinstance(facts, str):
        causes.append(f"database unreachable: {facts}")
    else:
        oldest = facts.oldest_queued_age
        if oldest is not None and oldest > limits.max_outbox_age:
            causes.append(f"outbox: the oldest queued mail has waited {oldest:.0f}s")
    mailboxes: dict[str, dict[str, object]] = {
        m.name: {
            "connected": m.connected,
            "idle": m.idle,
            "seconds_since_poll": round(m.poll_age(now), 1),
            "login_failed": m.login_failed,
            "last_error": m.last_error,
        }
        for m in health.mailboxes.values()
    }
    tasks: dict[str, dict[str, object]] = {
        t.name: {"running": t.running, "restarts": t.restarts, "last_error": t.last_error}
        for t in health.tasks.values()
    }
    return Readiness(not causes, causes, mailboxes, tasks, oldest)


class DaemonCollector(Collector):
    """Every metric, read at scrape time from the health registry and (in the scraping thread)
    the database."""

    def __init__(self, health: Health, engine: Engine) -> None:
        self.health = health
        self.engine = engine

    def collect(self) -> Iterator[Metric]:
        yield from self._mailboxes(time.monotonic())
        tasks = self.health.tasks.values()
        restarts = CounterMetricFamily(
            "mailrouter_task_restarts", "Supervisor restarts per task", labels=["task"]
        )
        running = GaugeMetricFamily("mailrouter_task_running", "1 while the task runs", labels=["task"])
        for task in tasks:
            restarts.add_metric([task.name], task.restarts)
            running.add_metric([task.name], int(task.running))
        yield restarts
        yield running
        yield from self._database()

    def _mailboxes(self, now: float) -> Iterator[Metric]:
        mailboxes = list(self.health.mailboxes.values())
        fetched = CounterMetricFamily("mailrouter_messages_fetched", "Messages fetched", labels=["mailbox"])
        outcomes = CounterMetricFamily(
            "mailrouter_messages",
            "Messages handled, by outcome (new-case, follow-up, screened, quarantined, refused, ...)",
            labels=["mailbox", "outcome"],
        )
        lag = GaugeMetricFamily(
            "mailrouter_fetch_lag", "Newest UID on the server minus the checkpoint", labels=["mailbox"]
        )
        poll_age = GaugeMetricFamily(
            "mailrouter_seconds_since_poll", "Seconds since the last successful poll", labels=["mailbox"]
        )
        connected = GaugeMetricFamily("mailrouter_mailbox_connected", "1 while logged in", labels=["mailbox"])
        idle = GaugeMetricFamily("mailrouter_mailbox_idle", "1 while waiting in IDLE", labels=["mailbox"])
        latency = HistogramMetricFamily(
            "mailrouter_intake_latency_seconds", "From fetched to committed, per message", labels=["mailbox"]
        )
        for m in mailboxes:
            fetched.add_metric([m.name], m.fetched)
            for kind in OutcomeKind:
                outcomes.add_metric([m.name, kind.value], m.outcomes.get(kind.value, 0))
            lag.add_metric([m.name], m.lag)
            poll_age.add_metric([m.name], m.poll_age(now))
            connected.add_metric([m.name], int(m.connected))
            idle.add_metric([m.name], int(m.idle))
            counts, cumulative = list(m.latency.counts), 0
            buckets = []
            for bound, count in zip([*map(str, LATENCY_BUCKETS), "+Inf"], counts, strict=True):
                cumulative += count
                buckets.append((bound, cumulative))
            latency.add_metric([m.name], buckets, m.latency.total)
        yield from (fetched, outcomes, lag, poll_age, connected, idle, latency)

    def _database(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("mailrouter_database_up", "1 when the database answered this scrape")
        try:
            facts = read_facts(self.engine)
        except Exception as exc:
            log.warning("metrics: cannot read the database: %s", exc)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        depth = GaugeMetricFamily("mailrouter_outbox_rows", "Outgoing mail by state", labels=["state"])
        for state, rows in facts.outbox.items():
            depth.add_metric([state], rows)
        yield depth
        yield GaugeMetricFamily(
            "mailrouter_outbox_oldest_queued_seconds",
            "Age of the oldest queued outgoing mail (0 when none is queued)",
            value=facts.oldest_queued_age or 0.0,
        )
        deliveries = CounterMetricFamily(
            "mailrouter_deliveries", "Outgoing mail by result (sent, failed, unconfirmed)", labels=["result"]
        )
        for result, count in facts.deliveries.items():
            deliveries.add_metric([result], count)
        yield deliveries


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


# A browser on a wall screen or a phone cannot send a header: it opens a dashboard page once
# with ?token=<token> and gets a cookie in its place. The cookie holds an HMAC of the token, not
# the token (a new token ends every such login), is sent to the dashboard's pages and charts only,
# and the token is taken out of the address at once by a redirect, into no history or bookmark.
DASHBOARD_COOKIE = "mailrouter_dashboard"
_DASHBOARD_LOGIN_DAYS = 365


def _token_check(token: SecretStr | None) -> Middleware:
    secret = token.get_secret_value().encode() if token is not None else b""
    bearer = b"Bearer " + secret
    remembered = hmac.new(secret, b"mailrouter dashboard login", "sha256").hexdigest().encode()

    @web.middleware
    async def check(request: web.Request, handler: Handler) -> web.StreamResponse:
        if token is None or hmac.compare_digest(request.headers.get("Authorization", "").encode(), bearer):
            return await handler(request)
        if request.path == "/dashboard" or request.path.startswith("/dashboard/"):
            if hmac.compare_digest(request.cookies.get(DASHBOARD_COOKIE, "").encode(), remembered):
                return await handler(request)
            if hmac.compare_digest(request.query.get("token", "").encode(), secret):
                rest = {key: value for key, value in request.query.items() if key != "token"}
                login = web.HTTPSeeOther(location=str(request.rel_url.with_query(rest)))
                login.set_cookie(
                    DASHBOARD_COOKIE,
                    remembered.decode(),
                    max_age=_DASHBOARD_LOGIN_DAYS * 86400,
                    path="/dashboard",
                    httponly=True,
                    samesite="Strict",
                    secure=request.secure,
                )
                return login
        return web.json_response({"error": "a valid bearer token is required"}, status=401)

    return check


class Endpoint:
    def __init__(
        self,
        settings: HttpSettings,
        token: SecretStr | None,
        health: Health,
        engine: Engine,
        idle_timeout: float,
        config: Config | None = None,
        templates: Templates | None = None,
    ) -> None:
        """`config`: the departments the dashboard shows; none, no dashboard. `templates`: where
        its words are (in `settings.language`)."""
        self.settings = settings
        self.health = health
        self.engine = engine
        self.config = config
        self.words: dict[str, Any] = {}
        if config is not None:
            assert templates is not None, "the dashboard speaks the reports' words"
            self.words = templates.words(settings.language)
        self.limits = Thresholds(settings.ready_max_poll_age, idle_timeout, settings.ready_max_outbox_age)
        self.registry = CollectorRegistry()  # our own: nothing of the process-wide default registry
        self.registry.register(DaemonCollector(health, engine))
        self.app = web.Application(middlewares=[_token_check(token)])
        self.app.router.add_get("/metrics", self.metrics)
        self.app.router.add_get("/healthz", self.healthz)
        self.app.router.add_get("/readyz", self.readyz)
        if config is not None:
            self.app.router.add_get("/dashboard", self.overview)
            self.app.router.add_get("/dashboard/{department}", self.board)
            self.app.router.add_get("/dashboard/{department}/{chart}.png", self.chart)
        self._runner = web.AppRunner(self.app, access_log=None)

    async def start(self) -> None:
        await self._runner.setup()
        try:
            await web.TCPSite(self._runner, self.settings.host, self.settings.port).start()
        except OSError as exc:
            await self._runner.cleanup()
            raise ConfigError(f"http.listen {self.settings.listen}: cannot listen: {exc.strerror}") from exc
        dashboard = " and /dashboard" if self.config is not None else ""
        log.info("http: serving /metrics, /healthz, /readyz%s on %s", dashboard, self.settings.listen)

    async def close(self) -> None:
        await self._runner.cleanup()

    async def metrics(self, request: web.Request) -> web.Response:
        body = await asyncio.to_thread(generate_latest, self.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"alive": True})

    async def readyz(self, request: web.Request) -> web.Response:
        facts: DatabaseFacts | str
        try:
            facts = await asyncio.wait_for(asyncio.to_thread(read_facts, self.engine), DATABASE_TIMEOUT)
        except TimeoutError:
            facts = f"no answer within {DATABASE_TIMEOUT:g}s"
        except Exception as exc:
            facts = f"{type(exc).__name__}: {getattr(exc, 'orig', None) or exc}"
        readiness = judge(self.health, facts, time.monotonic(), self.limits)
        return web.json_response(asdict(readiness), status=200 if readiness.ready else 503)

    def _department(self, request: web.Request) -> str:
        assert self.config is not None
        department = request.match_info["department"]
        if department not in self.config.mailboxes:
            raise web.HTTPNotFound(text=f"no department {department!r}")
        return department

    async def overview(self, request: web.Request) -> web.Response:
        assert self.config is not None
        page = await asyncio.to_thread(
            dashboard.overview_page, self.engine, self.config, self.words, utcnow()
        )
        return web.Response(text=page, content_type="text/html", headers=_FRESH)

    async def board(self, request: web.Request) -> web.Response:
        assert self.config is not None
        department = self._department(request)
        page = await asyncio.to_thread(
            dashboard.board_page, self.engine, self.config, self.words, department, utcnow()
        )
        return web.Response(text=page, content_type="text/html", headers=_FRESH)

    async def chart(self, request: web.Request) -> web.Response:
        assert self.config is not None
        department = self._department(request)
        try:
            chart = Chart(request.match_info["chart"])
        except ValueError:
            raise web.HTTPNotFound(text=f"no chart {request.match_info['chart']!r}") from None
        png = await asyncio.to_thread(
            dashboard.chart, self.engine, self.config, self.words, department, chart, utcnow()
        )
        return web.Response(body=png, content_type="image/png", headers=_FRESH)


_FRESH = {"Cache-Control": "no-store"}  # the page reloads itself to show what is new
