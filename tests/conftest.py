"""Fixtures shared by the whole suite."""

from __future__ import annotations

import pytest

from tests.mailstack import MailStack, stack_from_env


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "e2e: talks to the real Postfix + Dovecot started by scripts/mailstack"
    )


@pytest.fixture(scope="session")
def mailstack() -> MailStack:
    """The loopback mail stack named by MAILSTACK_* (default: .mailstack/, ports 2525/1143/1993).

    Started once and left running: a warm start is a no-op, and with pytest-xdist another worker
    may still be using it when this session ends. `scripts/mailstack stop` stops it.
    """
    stack = stack_from_env()
    stack.start()
    return stack
