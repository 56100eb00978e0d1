"""mailrouter: every email to a department mailbox becomes a case, is acknowledged and threaded."""

__version__ = "0.1.0"
