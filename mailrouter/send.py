"""send: deliver what registration queued. Renders nothing; reuses one SMTP connection.

Temporary failures (no connection, timeout, 4xx) are retried with capped exponential backoff and
jitter; permanent ones (5xx) are recorded on the case with the server's answer. The rows are
outbox.py's work; this module is the SMTP loop and transaction.

Never twice: a row is claimed (with a lease, `FOR UPDATE SKIP LOCKED` on PostgreSQL) before it is
sent, so two instances never take the same one. The SMTP transaction is driven by hand so that
the row becomes `sending` in the database *after* the whole message is on the wire but *before*
the final "." that makes the relay accept it: a crash before that commit leaves the relay with
an incomplete transaction it discards (the row is sent again later); a crash after it leaves a
`sending` row that is recorded as delivered-but-unconfirmed and never sent again. Between the
commit and the "." there is no await; still, the window in which a crash loses a message is the
commit's round trip (durable on the server before we hear back) plus one write to the socket.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import random
from collections.abc import Iterable
from dataclasses import replace
from datetime import timedelta

import aiosmtplib
from aiosmtplib.status import SMTPStatus
from pydantic import SecretStr
from sqlalchemy import Engine

from mailrouter import outbox
from mailrouter.compose import with_crlf
from mailrouter.config import Config, SmtpSettings
from mailrouter.db import write_turns
from mailrouter.errors import (
    DatabaseUnavailable,
    PermanentDeliveryError,
    TemporaryDeliveryError,
    TokenRefused,
    Unclaimed,
)
from mailrouter.imap import tls_context
from mailrouter.models import utcnow
from mailrouter.oauth import TokenSource, sasl_bearer
from mailrouter.outbox import Letter, Refusal

log = logging.getLogger(__name__)

IDLE_DISCONNECT_SECONDS = 60.0


def backoff(attempts: int, initial: float, maximum: float) -> float:
    """Seconds before the next try: doubling from `initial`, capped, with full jitter in the top half."""
    ceiling = min(maximum, initial * 2 ** max(attempts - 1, 0))
    return random.uniform(ceiling / 2, ceiling)


def classify(exc: Exception) -> TemporaryDeliveryError | PermanentDeliveryError:
    if isinstance(exc, aiosmtplib.SMTPRecipientsRefused):
        codes = [r.code for r in exc.recipients]
        detail = "; ".join(f"{r.recipient}: {r.code} {r.message}" for r in exc.recipients)
        if all(code >= 500 for code in codes):
            return PermanentDeliveryError(detail)
        return TemporaryDeliveryError(detail)
    if isinstance(exc, aiosmtplib.SMTPResponseException) and not isinstance(
        exc, aiosmtplib.SMTPServerDisconnected
    ):
        detail = f"{exc.code} {exc.message}"
        return PermanentDeliveryError(detail) if exc.code >= 500 else TemporaryDeliveryError(detail)
    return TemporaryDeliveryError(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)


def _for_a_person(age: timedelta) -> str:
    """A time span in its largest whole unit: "5 days", "3 hours", "1 minute"."""
    seconds = int(age.total_seconds())
    for unit, length in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= length:
            n = seconds // length
            return f"{n} {unit}{'s' if n != 1 else ''}"
    return f"{seconds} seconds"


def dot_stuffed(data: bytes) -> bytes:
    """The DATA payload without its final ".": CRLF line endings, leading dots doubled. With
    bytes.replace, not regular expressions: those took 0.24 ms for a 16 KB letter, on the
    event loop (a notification carries the customer's mail)."""
    data = with_crlf(data).replace(b"\r\n.", b"\r\n..")
    if data.startswith(b"."):
        data = b"." + data
    return data if data.endswith(b"\r\n") else data + b"\r\n"


# How the sender logs in to the relay: a password, a token of an [oauth2] credential, or not at all.
RelayLogin = SecretStr | TokenSource | None


async def connect(settings: SmtpSettings, login: RelayLogin) -> aiosmtplib.SMTP:
    """A session with the relay as configured: TLS (implicit or STARTTLS) and login (AUTH with
    the password, or SASL OAUTHBEARER/XOAUTH2 with the credential's current token)."""
    context = tls_context(settings.ca_file, settings.tls_verify) if settings.security != "none" else None
    smtp = aiosmtplib.SMTP(
        hostname=settings.host,
        port=settings.port,
        timeout=settings.timeout,
        use_tls=settings.security == "tls",
        start_tls=settings.security == "starttls",
        tls_context=context,
    )
    await smtp.connect()
    if settings.username is not None and login is not None:
        try:
            if isinstance(login, TokenSource):
                await _bearer_login(smtp, settings.username, login)
            else:
                await smtp.login(settings.username, login.get_secret_value())
        except BaseException:
            smtp.close()
            raise
    return smtp


async def _bearer_login(smtp: aiosmtplib.SMTP, user: str, tokens: TokenSource) -> None:
    """OAUTHBEARER (RFC 7628) where the relay offers it, else XOAUTH2. A token the relay refuses
    that should still be good (revoked early, clocks apart) is renewed once; a second refusal is
    a login failure like a wrong password's."""
    if smtp.is_ehlo_or_helo_needed:
        await smtp.ehlo()  # after STARTTLS the AUTH mechanisms are only known from a new EHLO
    mechanism = "OAUTHBEARER" if "oauthbearer" in smtp.server_auth_methods else "XOAUTH2"
    token = await tokens.token()
    try:
        await _authenticate(smtp, mechanism, user, token)
    except aiosmtplib.SMTPAuthenticationError as exc:
        log.warning(
            "relay user %s: the relay refused the token of %s (%s %s); renewing it once",
            user,
            tokens.label,
            exc.code,
            exc.message,
        )
        await _authenticate(smtp, mechanism, user, await tokens.renewed(token))


async def _authenticate(smtp: aiosmtplib.SMTP, mechanism: str, user: str, token: SecretStr) -> None:
    """AUTH with the initial response. A refusal comes first as a 334 challenge carrying the
    error (RFC 7628 3.2.2), which the client answers (OAUTHBEARER: %x01) to hear the 5xx."""
    if mechanism == "XOAUTH2":
        await smtp.auth_xoauth2(user, token.get_secret_value())  # aiosmtplib answers the challenge
        return
    sasl = base64.b64encode(sasl_bearer(mechanism, user, token))
    response = await smtp.execute_command(b"AUTH", mechanism.encode(), sasl)
    if response.code == SMTPStatus.auth_continue:
        response = await smtp.execute_command(base64.b64encode(b"\1"))
    if response.code != SMTPStatus.auth_successful:
        raise aiosmtplib.SMTPAuthenticationError(response.code, response.message)


async def refused_recipients(
    settings: SmtpSettings, login: RelayLogin, mail_from: str, recipients: Iterable[str]
) -> list[Refusal]:
    """The recipients the relay refuses at RCPT TO; no DATA, so nothing is sent."""
    smtp = await connect(settings, login)
    refused: list[Refusal] = []
    try:
        await smtp.mail(mail_from)
        for recipient in recipients:
            try:
                await smtp.rcpt(recipient)
            except aiosmtplib.SMTPRecipientRefused as exc:
                refused.append(Refusal(recipient, exc.code, exc.message))
        await smtp.rset()
        await smtp.quit()
    finally:
        smtp.close()
    return refused


async def warn_about_refused_agents(config: Config, login: RelayLogin, agents: Iterable[str]) -> None:
    """At start: name the agents whose address the relay refuses (one who left, a typo), before
    a case needs them. Their notifications still reach the others of their group."""
    if not agents or not config.mailboxes:
        return
    mail_from = next(iter(config.mailboxes.values())).address
    try:
        refused = await refused_recipients(config.smtp, login, mail_from, sorted(agents))
    except (aiosmtplib.SMTPException, OSError, TimeoutError, TokenRefused) as exc:
        reason = exc if isinstance(exc, TokenRefused) else classify(exc)
        log.warning("could not ask the relay about the agents' addresses: %s", reason)
        return
    if refused:
        log.warning(
            "the relay refuses %s agent address(es) of [agents.groups]: their notifications will not "
            "reach them (`mailrouter check --connect` names them)",
            len(refused),
        )


class Sender:
    def __init__(
        self,
        engine: Engine,
        settings: SmtpSettings,
        login: RelayLogin,
        *,
        instance: str = "mailrouter",
        lease: float = 300.0,
        exclusive: bool = True,
        wake: asyncio.Event | None = None,
    ) -> None:
        self.engine = engine
        self.settings = settings
        self.login = login
        self.instance = instance
        self.lease = lease
        # SQLite: the only instance (flock), so claims left by a dead predecessor are void at start.
        self.exclusive = exclusive
        self.wake = wake or asyncio.Event()
        self._smtp: aiosmtplib.SMTP | None = None
        self._last_used = 0.0
        self._recovered_at = -lease
        self._dot_sent = False
        self._in_hand: Letter | None = None  # the letter as the transaction sends it (its recipients)

    async def run(self, stop: asyncio.Event, poll_interval: float) -> None:
        while not stop.is_set():
            self.wake.clear()  # before looking: a wake-up while we send must not be lost
            try:
                more = await self._round(stop)
            except DatabaseUnavailable as exc:
                # The database is away: nothing can be claimed or recorded. Rows keep their state
                # (a 'sending' one is resolved by _recover later), so waiting loses nothing.
                log.error("sender: database problem, retrying in %.1fs: %s", poll_interval, exc)
                more = False
            if more and self._smtp is not None:
                continue
            await self._disconnect_if_idle()
            waiters = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(self.wake.wait())]
            await asyncio.wait(waiters, timeout=poll_interval, return_when=asyncio.FIRST_COMPLETED)
            for waiter in waiters:
                waiter.cancel()
        await self._disconnect()

    async def _round(self, stop: asyncio.Event) -> int:
        """Claim a batch and send it; returns whether more rows were due than it took."""
        # What _recover finds has waited for a lease to run out, or was left before we started:
        # looking again before every batch found nothing new, at the cost of a transaction.
        now = asyncio.get_running_loop().time()
        if now - self._recovered_at >= self.lease / 2:
            await asyncio.to_thread(outbox.recover, self.engine, self.instance, exclusive=self.exclusive)
            self._recovered_at = now
        batch = await asyncio.to_thread(
            outbox.claim, self.engine, self.instance, self.lease, self.settings.batch_bytes
        )
        letters = batch.letters
        accepted: list[tuple[Letter, str]] = []
        handled = 0
        try:
            for letter in letters:
                if stop.is_set() or not await self._deliver(letter, accepted):
                    break
                handled += 1
        finally:
            # One commit for the batch: until it, an accepted row is `sending`, which a restart
            # already counts as sent (never sent again), so the delay risks no duplicate.
            if accepted:
                await asyncio.to_thread(outbox.mark_sent, self.engine, accepted)
        if handled < len(letters):
            # the relay is away (or we are stopping): hand back the rest of the batch at once
            await asyncio.to_thread(outbox.unclaim, self.engine, self.instance)
        return batch.more

    def _mark_sending(self, letter: Letter, refused: tuple[Refusal, ...] = ()) -> None:
        if refused:
            attempts = letter.attempts + 1
            retry_at = utcnow() + timedelta(seconds=self._backoff(attempts))
            ours = outbox.mark_sending_to_some(
                self.engine, letter, self.instance, self.lease, refused, retry_at
            )
        else:
            ours = outbox.mark_sending(self.engine, letter.id, self.instance, self.lease)
        if not ours:
            raise Unclaimed(f"outbox={letter.id} was taken over by another instance")

    def _backoff(self, attempts: int) -> float:
        return backoff(attempts, self.settings.retry_initial, self.settings.retry_max)

    # --- SMTP ------------------------------------------------------------------------------------

    async def _connect(self) -> aiosmtplib.SMTP:
        if self._smtp is None or not self._smtp.is_connected:
            self._smtp = await connect(self.settings, self.login)
        return self._smtp

    async def _disconnect_if_idle(self) -> None:
        # A relay drops idle sessions after a few minutes; close ours rather than find out later.
        if asyncio.get_running_loop().time() - self._last_used > IDLE_DISCONNECT_SECONDS:
            await self._disconnect()

    async def _disconnect(self) -> None:
        if self._smtp is not None and self._smtp.is_connected:
            try:
                await self._smtp.quit()
            except (aiosmtplib.SMTPException, OSError):
                self._smtp.close()
        self._smtp = None

    async def _transaction(self, smtp: aiosmtplib.SMTP, letter: Letter) -> str:
        """MAIL, RCPT, DATA and the message; then `sending` in the database; then the final dot."""
        options = [] if letter.data.isascii() else ["BODY=8BITMIME"]
        if not "".join((letter.mail_from, *letter.rcpt_to)).isascii():
            options.append("SMTPUTF8")  # internationalised addresses (RFC 6531)
        await smtp.mail(letter.mail_from, options=options)
        refused: list[aiosmtplib.SMTPRecipientRefused] = []
        for recipient in letter.rcpt_to:
            try:
                await smtp.rcpt(recipient)
            except aiosmtplib.SMTPRecipientRefused as exc:
                refused.append(exc)
        if len(refused) == len(letter.rcpt_to):
            await smtp.rset()
            raise aiosmtplib.SMTPRecipientsRefused(refused)
        # One departed agent must not silence a group: the others get it, the refusals are recorded.
        refusals = tuple(Refusal(exc.recipient, exc.code, exc.message) for exc in refused)
        start = await smtp.execute_command(b"DATA")
        if start.code != 354:
            raise aiosmtplib.SMTPDataError(start.code, start.message)
        protocol = smtp.protocol
        assert protocol is not None
        protocol.write(dot_stuffed(letter.data))
        turns = write_turns(self.engine)
        try:
            if turns is not None:
                await turns.reserve()  # SQLite: the intake's commit is awaited here, not below
            # Deliberately synchronous: no await may come between this commit and the dot.
            self._mark_sending(letter, refusals)
        except BaseException:
            smtp.close()  # without its final dot the relay discards the transaction
            raise
        finally:
            if turns is not None:
                turns.forgo()
        if refusals:
            refused_to = {refusal.recipient for refusal in refusals}
            self._in_hand = replace(letter, rcpt_to=tuple(r for r in letter.rcpt_to if r not in refused_to))
        protocol.write(b".\r\n")
        self._dot_sent = True
        reply = await protocol.read_response(timeout=self.settings.timeout)
        if reply.code != 250:
            raise aiosmtplib.SMTPDataError(reply.code, reply.message)
        return f"{reply.code} {reply.message}"

    async def _deliver(self, letter: Letter, accepted: list[tuple[Letter, str]]) -> bool:
        """Hand one letter to the relay, adding it and the relay's answer to `accepted`; False
        when the connection is gone and the batch should wait."""
        self._dot_sent = False
        self._in_hand = letter
        try:
            smtp = await self._connect()
        except (aiosmtplib.SMTPException, OSError, TimeoutError, TokenRefused) as exc:
            # No session, or our login refused (or no token for it): not the letter's fault,
            # whatever the reply code (a wrong password must not fail every letter for good).
            # It waits, and is retried; a refused token is also an incident of its credential.
            s = self.settings
            reason = exc if isinstance(exc, TokenRefused) else classify(exc)
            failure: TemporaryDeliveryError | PermanentDeliveryError = TemporaryDeliveryError(
                f"relay {s.host}:{s.port}: {reason}"
            )
            await asyncio.to_thread(self._failed, letter, failure)
            return False
        try:
            reply = await self._transaction(smtp, letter)
        except Unclaimed as exc:
            log.info("%s; skipping it", exc)
            return False
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            failure = classify(exc)
            connection_lost = self._smtp is None or not self._smtp.is_connected
            if isinstance(failure, TemporaryDeliveryError) and self._smtp is not None:
                self._smtp.close()
                self._smtp = None
            # The relay had the whole message but we never heard its answer: it may have taken it.
            unanswered = self._dot_sent and not isinstance(exc, aiosmtplib.SMTPResponseException)
            await asyncio.to_thread(self._failed, self._in_hand, failure, unanswered)
            return not connection_lost
        self._last_used = asyncio.get_running_loop().time()
        accepted.append((self._in_hand, reply))
        log.info("sent outbox=%s to %s recipient(s)", letter.id, len(self._in_hand.rcpt_to))
        return True

    def _failed(
        self,
        letter: Letter,
        failure: TemporaryDeliveryError | PermanentDeliveryError,
        unanswered: bool = False,
    ) -> None:
        error = str(failure)
        if unanswered:
            if outbox.unconfirmed(self.engine, letter, self.instance, error):
                log.warning("delivery unconfirmed outbox=%s: %s", letter.id, failure)
        elif isinstance(failure, PermanentDeliveryError):
            if outbox.failed(self.engine, letter, self.instance, error):
                log.error("delivery failed outbox=%s: %s", letter.id, failure)
        elif (age := utcnow() - letter.created_at) >= timedelta(seconds=self.settings.give_up_after):
            if outbox.gave_up(self.engine, letter, self.instance, error, _for_a_person(age)):
                log.error("delivery given up outbox=%s after %s: %s", letter.id, _for_a_person(age), failure)
        else:
            attempts = letter.attempts + 1
            delay = self._backoff(attempts)
            retry_at = utcnow() + timedelta(seconds=delay)
            if outbox.deferred(self.engine, letter, self.instance, error, retry_at):
                log.warning(
                    "delivery deferred outbox=%s attempt=%s retry_in=%.1fs: %s",
                    letter.id,
                    attempts,
                    delay,
                    failure,
                )
