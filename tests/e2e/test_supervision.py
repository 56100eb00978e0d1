"""Supervision of the real daemon: a mailbox worker killed by an injected fault is restarted, the
restart recorded, and mail still registered; a task that keeps failing ends the process non-zero.

The faults come from the TEST-ONLY hook MAILROUTER_FAULT_INJECTION (mailrouter.faultinjection):
the workers survive every outside fault we can cause (servers away, the database locked), which
is the point, so a crash has to be made on purpose."""

from __future__ import annotations

import pytest

from mailrouter.faultinjection import ENV as FAULTS
from tests.e2e.conftest import send_mail as send

pytestmark = pytest.mark.e2e


def test_a_killed_mailbox_worker_is_restarted_recorded_and_keeps_registering(
    installation, customer, mailstack
):
    daemon = installation(daemon={"restart_initial": 0.2, "restart_max": 1})
    daemon.env[FAULTS] = "fail-task=mailbox-it:2:1"  # killed one second into each of its first two runs
    daemon.start()
    daemon.wait_until(lambda: len(daemon.events("task-restarted")) == 2, "two restarts of mailbox-it")
    send(mailstack, f"Kari <{customer.address}>", daemon.mailboxes["it"].address, "After restarts", "Hi")
    daemon.wait_until(lambda: len(daemon.cases()) == 1, "the mail to become a case")

    restarts = daemon.events("task-restarted")
    assert {e.data["task"] for e in restarts} == {"mailbox-it"}
    assert "InjectedFault: fault injection: mailbox-it killed after 1s" in restarts[0].detail
    assert "Traceback" in daemon.log() and "mailbox-it failed" in daemon.log()
    assert daemon.stop() == 0


def test_a_task_failing_too_often_ends_the_process_with_a_non_zero_exit(installation):
    daemon = installation(daemon={"restart_initial": 0.1, "restart_limit": 3, "restart_window": 60})
    daemon.env[FAULTS] = "fail-task=sender:100"
    daemon.start()
    assert daemon.process is not None
    code = daemon.process.wait(timeout=60)
    daemon.process = None

    assert code != 0
    assert "sender failed 3 times within 60s" in daemon.log()
    assert len(daemon.events("task-restarted")) == 2
    [gave_up] = daemon.events("task-failed-repeatedly")
    assert gave_up.data["task"] == "sender"
