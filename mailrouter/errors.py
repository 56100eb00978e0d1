"""One exception tree; each name says what failed, each message carries what a person needs."""


class MailrouterError(Exception):
    """Base of every error mailrouter raises on purpose."""


class ConfigError(MailrouterError):
    """config.toml (or a secret it names) is missing, malformed or inconsistent."""


class RuleError(ConfigError):
    """A routing rule file is malformed; the message names the file and the rule."""


class TemplateError(ConfigError):
    """A template is missing or does not render."""


class ParseError(MailrouterError):
    """The bytes are not an email message at all (not merely a defective one)."""


class DeliveryError(MailrouterError):
    """Handing a message to the SMTP relay failed."""


class TemporaryDeliveryError(DeliveryError):
    """The relay may accept it later (connection refused, timeout, 4xx)."""


class PermanentDeliveryError(DeliveryError):
    """The relay refused it for good (5xx)."""


class DatabaseUnavailable(MailrouterError):
    """The database cannot be reached or cannot take a write now: not the message's fault, so the
    worker waits and retries instead of counting a failure against the message. Decided once, in
    db.py, from the driver's error code and the connection's state."""


class SchemaMismatch(MailrouterError):
    """The database's schema is not this mailrouter's: older (run `mailrouter migrate`), newer
    (upgrade mailrouter) or absent. Only `run` and `migrate` change a schema."""

    def __init__(self, message: str, *, newer: bool = False) -> None:
        super().__init__(message)
        self.newer = newer  # `run` cannot upgrade it: this mailrouter is the older one


class ImapError(MailrouterError):
    """The IMAP server answered a command with NO or BAD, or lacks something we need."""


class TokenRefused(MailrouterError):
    """The identity provider refused to issue a token (invalid_grant, a disabled application, a
    wrong secret or tenant): waiting will not mend it, a person must."""

    def __init__(self, credential: str, error: str, description: str, advice: str) -> None:
        self.credential, self.error, self.description, self.advice = credential, error, description, advice
        super().__init__(
            f"the identity provider refused a token for credential {credential}: {error}"
            + (f" ({description})" if description else "")
            + f"; {advice}"
        )


class TokenUnavailable(MailrouterError, ConnectionError):
    """The identity provider could not be reached or answered nonsense: retried like a network error."""


class ConnectionLost(MailrouterError, ConnectionError):
    """The IMAP server closed the connection or the network dropped it."""


class AttemptsExhausted(MailrouterError):
    """Processing of a message began as often as allowed and never finished (the process died,
    was killed or hung each time): it is set aside without being tried again."""


class LockLost(MailrouterError):
    """The connection that held the mailbox's lock is gone: another instance may own it now."""


class AlreadyRunning(MailrouterError):
    """Another mailrouter process uses this SQLite database."""


class Unclaimed(MailrouterError):
    """Another instance took an outbox row over (our lease ran out): leave it to them."""


class ReviewError(MailrouterError):
    """A quarantine entry that does not exist, was already released, or has no kept bytes."""


class PrivacyError(MailrouterError):
    """An access or erasure request that cannot be carried out as asked (an open case, no salt)."""


class ReportError(MailrouterError):
    """A report asked for what cannot be reported: an unknown period, no departments."""


class OutboxError(MailrouterError):
    """An outgoing mail that does not exist, or is not in a state a person may retry."""


class TaskFailedTooOften(MailrouterError):
    """A supervised task failed restart_limit times within restart_window seconds."""


class TaskEnded(MailrouterError):
    """A supervised task returned while the daemon was still running: it stopped doing its job."""


class InjectedFault(MailrouterError):
    """Raised only by the test-only fault-injection hook (mailrouter.faultinjection)."""
