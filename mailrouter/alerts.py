"""alerts: a credential that stops working is recorded on every mailbox it serves and, when
[alerts] is configured, mailed to ops once per incident through the outbox (not once per retry:
the token source reports only the first refusal, and the recovery that ends the incident).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import formatdate, make_msgid
from typing import Any

from sqlalchemy import Engine
from sqlmodel import Session

from mailrouter import store
from mailrouter.config import RELAY, Config
from mailrouter.errors import TokenRefused
from mailrouter.oauth import TokenSource
from mailrouter.vocabulary import EventKind, OutboxKind


def users_of(config: Config, source: TokenSource) -> list[str]:
    """The mailboxes (and "smtp", the relay) that log in with the source's token: its one user's
    (a service account's or delegated token), or every one of an app-only credential."""
    if source.user is not None:
        return [source.user]
    return credential_users(config, source.credential)


def credential_users(config: Config, credential: str) -> list[str]:
    """The mailboxes (and "smtp", the relay) that log in with the credential."""
    names = [n for n, m in config.mailboxes.items() if m.imap.oauth2 == credential]
    return names + ([RELAY] if config.smtp.oauth2 == credential else [])


def alert_mail(config: Config, subject: str, text: str) -> tuple[str, list[str], str, bytes] | None:
    """(From, To, Message-ID, bytes) of a letter to ops; None without [alerts]."""
    alerts = config.file.alerts
    if alerts is None:
        return None
    sender = alerts.sender or next(iter(config.mailboxes.values())).address
    message = EmailMessage(policy=SMTP)
    message["From"] = sender
    message["To"] = ", ".join(alerts.to)
    message["Subject"] = subject
    message["Date"] = formatdate(localtime=True)
    message["Message-ID"] = message_id = make_msgid("alert", sender.rpartition("@")[2])
    message["Auto-Submitted"] = "auto-generated"  # RFC 3834: nobody should answer it
    message.set_content(text)
    return sender, list(alerts.to), message_id, message.as_bytes()


class TokenAlerts:
    """oauth.Incidents for the daemon: events on the mailboxes and one mail to ops."""

    def __init__(self, config: Config, engine: Engine, wake: Callable[[], None]) -> None:
        self.config = config
        self.engine = engine
        self.wake = wake

    async def refused(self, source: TokenSource, error: TokenRefused) -> None:
        users = users_of(self.config, source)
        detail = f"{error}. Mailboxes stopped until it is mended: {', '.join(users)}"
        subject = f"mailrouter: credential {source.label} refused, {', '.join(users)} stopped"
        text = (
            f"The identity provider refused to issue a token for credential {source.label}.\n\n"
            f"It answered: {error.error}" + (f" ({error.description})" if error.description else "") + "\n"
            f"What to do: {error.advice}\n\n"
            f"These stop until then: {', '.join(users)}. mailrouter keeps retrying with backoff and "
            "resumes by itself once a token is issued; you will get no further mail about this incident.\n"
        )
        await asyncio.to_thread(self._write, EventKind.TOKEN_REFUSED, users, detail, subject, text, error)

    async def recovered(self, source: TokenSource) -> None:
        users = users_of(self.config, source)
        detail = f"credential {source.label} works again: {', '.join(users)} resume"
        await asyncio.to_thread(self._write, EventKind.TOKEN_RECOVERED, users, detail, None, None, None)

    def _write(
        self,
        kind: EventKind,
        users: list[str],
        detail: str,
        subject: str | None,
        text: str | None,
        error: TokenRefused | None,
    ) -> None:
        data: dict[str, Any] = (
            {"error": error.error, "description": error.description} if error is not None else {}
        )
        mail = alert_mail(self.config, subject, text) if subject and text else None
        with Session(self.engine) as session:
            for user in users:
                store.record(session, kind, detail, mailbox=user if user != RELAY else "", **data)
            if mail is not None:
                store.queue_letter(session, OutboxKind.ALERT, *mail)
            session.commit()
        if mail is not None:
            self.wake()
