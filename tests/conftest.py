"""Fixtures shared by the whole suite."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.mailstack import MailStack, stack_from_env, worker_environment


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "e2e: talks to the real Postfix + Dovecot started by scripts/mailstack"
    )
    worker = getattr(config, "workerinput", {}).get("workerid")
    if worker is not None:  # a pytest-xdist worker: its own stack, set before any test reads it
        os.environ.update(worker_environment(stack_from_env(), worker))


@pytest.fixture(scope="session")
def mailstack() -> Iterator[MailStack]:
    """The loopback mail stack named by MAILSTACK_* (default: .mailstack/, ports 2525/1143/1993;
    each pytest-xdist worker has one of its own). One this session starts, it stops at the end;
    one already running is left running."""
    stack = stack_from_env()
    started = not stack.running()
    stack.start()
    yield stack
    if started:
        stack.stop()
