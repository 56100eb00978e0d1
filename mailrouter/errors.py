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
