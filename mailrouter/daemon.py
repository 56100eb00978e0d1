"""Wiring: one fetch worker per mailbox, one outbox sender and the scheduler, each under the
supervisor, until SIGTERM or SIGINT (or until a task fails too often: then a non-zero exit).

On a signal every worker finishes the message (or SMTP transaction) in hand and stops; anything
still running after the shutdown timeout is cancelled, which the transactions make safe.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import os
import signal
import socket
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial

from pydantic import SecretStr

from mailrouter import language
from mailrouter.agents import AgentDirectory, directory_from, reply_keys
from mailrouter.alerts import TokenAlerts
from mailrouter.config import RELAY, Config
from mailrouter.db import keep_checkpointing, open_database, sqlite_path
from mailrouter.facts import queued_mail
from mailrouter.faultinjection import ENV as FAULTS_ENV
from mailrouter.faultinjection import FaultInjection
from mailrouter.fetch import MailboxWorker
from mailrouter.health import Health
from mailrouter.http import Endpoint
from mailrouter.intake import Intake
from mailrouter.lease import InstanceLock
from mailrouter.notify import Notifier, announce, keep_alive, watchdog_interval
from mailrouter.oauth import Tokens, TokenSource
from mailrouter.parsepool import ParsePool
from mailrouter.reportmail import Reports
from mailrouter.route import Rule, load_rules
from mailrouter.schedule import Scheduler
from mailrouter.send import RelayLogin, Sender, warn_about_refused_agents
from mailrouter.supervise import RestartPolicy, Supervisor
from mailrouter.templates import Templates

log = logging.getLogger(__name__)

M_MMAP_THRESHOLD = -3  # mallopt(3)
BIG_BUFFER = 1024 * 1024


@dataclass(frozen=True)
class Loaded:
    """Everything read from disk at start-up, validated."""

    config: Config
    rules: tuple[Rule, ...]
    templates: Templates
    agents: AgentDirectory


def load(config: Config) -> Loaded:
    rules = load_rules(config.rules_dir, frozenset(config.mailboxes), frozenset(config.file.sla))
    settings = config.file.agents
    agents = directory_from(
        settings.groups,
        reply_keys(config),
        settings.trusted_authserv_ids,
        config.own_addresses(),
    )
    return Loaded(config, rules, Templates(config.templates_dir), agents)


def warn_about_insecure_tls(config: Config) -> None:
    for name, mailbox in config.mailboxes.items():
        if mailbox.imap.security != "none" and not mailbox.imap.tls_verify:
            log.warning(
                "mailboxes.%s.imap.tls_verify = false: the IMAP server's certificate is NOT "
                "verified; anyone on the path can read the password and the mail. Test servers only.",
                name,
            )
    if config.smtp.security != "none" and not config.smtp.tls_verify:
        log.warning("smtp.tls_verify = false: the relay's certificate is NOT verified. Test servers only.")


def return_big_buffers_to_the_system() -> None:
    """Every buffer of BIG_BUFFER or more in a mapping of its own, unmapped when it is freed.

    glibc raises its mmap threshold to the size of each big block freed (up to 32 MiB), so after
    the first big mail the next ones' copies are carved from the heap, whose freed space the
    process keeps: a batch of big mails then costs their sum again for every round of copies.
    """
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except AttributeError:  # not glibc: its allocator has its own policy
        return
    mallopt(M_MMAP_THRESHOLD, BIG_BUFFER)


def run(loaded: Loaded) -> None:
    """`mailrouter run`: one process per SQLite database, as many as wanted on PostgreSQL."""
    return_big_buffers_to_the_system()
    path = sqlite_path(loaded.config.database_url)
    instance_lock = InstanceLock(path) if path is not None else None
    if instance_lock is not None:
        instance_lock.acquire()
    try:
        asyncio.run(serve(loaded))
    finally:
        if instance_lock is not None:
            instance_lock.release()


async def serve(loaded: Loaded) -> None:
    config = loaded.config
    warn_about_insecure_tls(config)
    faults = FaultInjection.from_env(os.environ)
    if faults is not None:
        log.warning("%s is set: TEST-ONLY faults will be injected; never use it in production", FAULTS_ENV)
    on_sqlite = sqlite_path(config.database_url) is not None
    engine = open_database(config, checkpoints_apart=on_sqlite)
    # Before any mailbox is read: a try that took the models' load along was easily cut short by
    # a restart, and three such counted as a message that kills the process.
    await asyncio.to_thread(language.prepare)
    intake = Intake(config, loaded.rules, loaded.templates, engine, loaded.agents)
    instance = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
    wake_sender = asyncio.Event()  # set when mail is queued: the sender looks at once
    tokens = Tokens(config, TokenAlerts(config, engine, wake_sender.set))
    relay = relay_login(config, tokens)
    sender = Sender(
        engine,
        config.smtp,
        relay,
        instance=instance,
        lease=config.daemon.outbox_lease,
        exclusive=on_sqlite,
        wake=wake_sender,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)

    limits = config.limits
    parsers = ParsePool(
        config.daemon.parse_workers, time_limit=limits.parse_time_limit, html_chars=limits.html_to_text_chars
    )
    workers = [
        MailboxWorker(
            name,
            mailbox,
            _login(config, tokens, name),
            intake,
            config.daemon,
            sender.wake.set,
            parsers=parsers,
        )
        for name, mailbox in config.mailboxes.items()
    ]
    health = Health({w.name: w.health for w in workers})

    def scheduler() -> Scheduler:  # a new one for each (re)start
        return Scheduler(
            engine,
            intake.casework,
            config.daemon.schedule_interval,
            sender.wake.set,
            Reports(engine, config, loaded.templates, instance),
            instance,
        )

    starts: dict[str, Callable[[], Awaitable[None]]] = {
        "sender": lambda: sender.run(stop, config.daemon.send_interval),
        "scheduler": lambda: scheduler().run(stop),
    }
    if on_sqlite:  # commits leave the write-ahead log to this task (db.make_engine)
        starts["checkpoints"] = lambda: keep_checkpointing(engine, stop)
    for worker in workers:
        starts[f"mailbox-{worker.name}"] = partial(worker.run, stop)
    supervisor = Supervisor(
        engine,
        RestartPolicy.from_settings(config.daemon),
        stop,
        faults=faults.for_task if faults is not None else None,
    )
    endpoint = None
    if config.file.http is not None:
        endpoint = Endpoint(
            config.file.http,
            config.secret("http"),
            health,
            engine,
            config.daemon.idle_timeout,
            config,
            loaded.templates,
        )
        await endpoint.start()
    parsers.start()
    tasks = [
        asyncio.create_task(supervisor.run(start, health.task(name)), name=name)
        for name, start in starts.items()
    ]
    notifier = Notifier.from_env(os.environ)
    on_ready = None if faults is None else lambda: loop.call_soon(faults.stall)
    # Not supervised: they only report, and each would end with the loop it reports on.
    reporters = [
        asyncio.create_task(announce(notifier, health, partial(queued_mail, engine), stop, on_ready=on_ready))
    ]
    if (interval := watchdog_interval(os.environ)) is not None:
        reporters.append(asyncio.create_task(keep_alive(notifier, interval, stop)))
    # Asks the relay about each agent once; it may hang with the relay, so shutdown cancels it.
    agent_check = asyncio.create_task(warn_about_refused_agents(config, relay, loaded.agents.agents))
    log.info(
        "mailrouter running as %s: %s mailbox(es), database %s",
        instance,
        len(workers),
        engine.url.render_as_string(hide_password=True),
    )

    stopping = asyncio.ensure_future(stop.wait())
    await asyncio.wait([stopping, *tasks], return_when=asyncio.FIRST_COMPLETED)
    failure = next((t.exception() for t in tasks if t.done() and not t.cancelled() and t.exception()), None)
    stop.set()
    notifier.send("STOPPING=1")
    log.info("stopping: finishing the work in hand (at most %.0fs)", config.daemon.shutdown_timeout)
    _, pending = await asyncio.wait(tasks, timeout=config.daemon.shutdown_timeout)
    for task in pending:
        log.warning("stopping: %s did not finish in time, cancelling it", task.get_name())
        task.cancel()
    agent_check.cancel()
    await asyncio.gather(*pending, *reporters, agent_check, return_exceptions=True)
    if endpoint is not None:
        await endpoint.close()
    notifier.close()
    parsers.shutdown()
    engine.dispose()
    if failure is not None:
        log.critical("stopped after a failure: %s", failure)
        raise failure
    log.info("stopped")


def relay_login(config: Config, tokens: Tokens) -> RelayLogin:
    """The relay's password, or its token source: the one the mailboxes of the same app-only
    credential use (one token, renewed once for all)."""
    smtp = config.smtp
    if smtp.oauth2 is not None:
        assert smtp.username is not None, "validated: auth = oauth2 needs username"
        return tokens.source(smtp.oauth2, smtp.username, RELAY)
    return config.secret("smtp")


def _login(config: Config, tokens: Tokens, mailbox: str) -> SecretStr | TokenSource:
    imap = config.mailboxes[mailbox].imap
    if imap.oauth2 is not None:
        return tokens.source(imap.oauth2, imap.user, mailbox)
    return _required(config, f"imap.{mailbox}")


def _required(config: Config, key: str) -> SecretStr:
    secret = config.secret(key)
    assert secret is not None, f"secret {key} was resolved at load time"
    return secret
