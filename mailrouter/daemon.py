"""Wiring: one fetch worker per mailbox and one outbox sender, until SIGTERM or SIGINT.

On a signal every worker finishes the message (or SMTP transaction) in hand and stops; anything
still running after the shutdown timeout is cancelled, which the transactions make safe.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import uuid
from dataclasses import dataclass
from pathlib import Path

from pydantic import SecretStr
from sqlalchemy import Engine

from mailrouter.agents import AgentDirectory, directory_from
from mailrouter.config import Config
from mailrouter.db import create_schema, ensure_counters, make_engine
from mailrouter.fetch import MailboxWorker
from mailrouter.lease import InstanceLock
from mailrouter.parsepool import ParsePool
from mailrouter.pipeline import Intake
from mailrouter.route import Rule, load_rules
from mailrouter.schedule import Scheduler
from mailrouter.send import Sender, warn_about_refused_agents
from mailrouter.templates import Templates

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Loaded:
    """Everything read from disk at start-up, validated."""

    config: Config
    rules: tuple[Rule, ...]
    templates: Templates
    agents: AgentDirectory


def load(config: Config) -> Loaded:
    rules = load_rules(config.rules_dir, frozenset(config.mailboxes))
    settings = config.file.agents
    secret = config.secret("reply")
    agents = directory_from(
        settings.groups,
        secret.get_secret_value().encode() if secret else None,
        settings.trusted_authserv_ids,
        config.own_addresses(),
    )
    return Loaded(config, rules, Templates(config.templates_dir), agents)


def open_database(config: Config) -> Engine:
    engine = make_engine(config.database_url)
    create_schema(engine)
    ensure_counters(engine, [m.prefix for m in config.mailboxes.values()], config.daemon.case_number_start)
    return engine


def sqlite_path(database_url: str) -> Path | None:
    """The database file of a SQLite URL; None for PostgreSQL or an in-memory database."""
    prefix = "sqlite:///"
    if not database_url.startswith(prefix) or database_url == prefix + ":memory:":
        return None
    return Path(database_url[len(prefix) :])


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


def run(loaded: Loaded) -> None:
    """`mailrouter run`: one process per SQLite database, as many as wanted on PostgreSQL."""
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
    engine = open_database(config)
    intake = Intake(config, loaded.rules, loaded.templates, engine, loaded.agents)
    instance = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
    sender = Sender(
        engine,
        config.smtp,
        config.secret("smtp"),
        instance=instance,
        lease=config.daemon.outbox_lease,
        exclusive=sqlite_path(config.database_url) is not None,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)

    parsers = ParsePool(config.daemon.parse_workers)
    parsers.start()
    workers = [
        MailboxWorker(
            name,
            mailbox,
            _required(config, f"imap.{name}"),
            intake,
            config.daemon,
            sender.wake.set,
            parsers=parsers,
        )
        for name, mailbox in config.mailboxes.items()
    ]
    scheduler = Scheduler(engine, intake.casework, config.daemon.schedule_interval, sender.wake.set)
    scheduler.start()
    tasks = [asyncio.create_task(sender.run(stop, config.daemon.send_interval), name="sender")]
    tasks += [asyncio.create_task(w.run(stop), name=f"mailbox-{w.name}") for w in workers]
    tasks.append(asyncio.create_task(warn_about_refused_agents(config, loaded.agents.agents), name="agents"))
    log.info(
        "mailrouter running as %s: %s mailbox(es), database %s",
        instance,
        len(workers),
        engine.url.render_as_string(hide_password=True),
    )

    await stop.wait()
    log.info("stopping: finishing the work in hand (at most %.0fs)", config.daemon.shutdown_timeout)
    scheduler.stop()
    done, pending = await asyncio.wait(tasks, timeout=config.daemon.shutdown_timeout)
    for task in pending:
        log.warning("stopping: %s did not finish in time, cancelling it", task.get_name())
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    for task in done:
        if not task.cancelled() and task.exception() is not None:
            log.error("worker %s had failed", task.get_name(), exc_info=task.exception())
    parsers.shutdown()
    engine.dispose()
    log.info("stopped")


def _required(config: Config, key: str) -> SecretStr:
    secret = config.secret(key)
    assert secret is not None, f"secret {key} was resolved at load time"
    return secret
