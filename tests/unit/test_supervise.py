"""The supervisor: failed tasks restarted with capped backoff and recorded; too many end the run."""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import SimpleNamespace

import pytest
from sqlalchemy import Engine
from sqlmodel import Session, col, select

from mailrouter.db import create_schema, make_engine
from mailrouter.errors import DatabaseUnavailable, InjectedFault, TaskFailedTooOften
from mailrouter.faultinjection import FaultInjection
from mailrouter.health import TaskHealth
from mailrouter.models import Event
from mailrouter.schedule import Scheduler
from mailrouter.supervise import RestartPolicy, Supervisor, judge

FAST = RestartPolicy(initial=0.01, maximum=0.04, limit=3, window=60.0)


@pytest.fixture
def engine(tmp_path: Path) -> Engine:
    engine = make_engine(f"sqlite:///{tmp_path}/db.sqlite")
    create_schema(engine)
    return engine


def events(engine: Engine, kind: str) -> list[Event]:
    with Session(engine) as session:
        return list(session.exec(select(Event).where(Event.kind == kind).order_by(col(Event.id))).all())


def test_backoff_doubles_with_each_recent_failure_up_to_the_cap() -> None:
    policy = RestartPolicy(initial=1.0, maximum=5.0, limit=10, window=100.0)
    delays = [judge(policy, [0.0] * n, 1.0).delay for n in range(1, 6)]
    assert delays == [1.0, 2.0, 4.0, 5.0, 5.0]


def test_failures_outside_the_window_neither_count_nor_slow_the_restart() -> None:
    policy = RestartPolicy(initial=1.0, maximum=60.0, limit=3, window=10.0)
    verdict = judge(policy, [0.0, 1.0, 100.0], 100.0)
    assert (verdict.recent, verdict.give_up, verdict.delay) == (1, False, 1.0)


def test_the_limit_within_the_window_gives_up() -> None:
    policy = RestartPolicy(initial=1.0, maximum=60.0, limit=3, window=10.0)
    assert judge(policy, [95.0, 98.0, 100.0], 100.0).give_up


async def test_a_task_that_raises_twice_is_restarted_and_each_restart_recorded(engine: Engine) -> None:
    stop = asyncio.Event()
    runs = 0

    async def flaky() -> None:
        nonlocal runs
        runs += 1
        if runs <= 2:
            raise RuntimeError(f"boom {runs}")
        stop.set()  # the third run does its job until the daemon stops

    health = TaskHealth("mailbox-it")
    await Supervisor(engine, FAST, stop).run(flaky, health)
    assert runs == 3
    assert health.restarts == 2 and health.last_error == "RuntimeError: boom 2"
    recorded = events(engine, "task-restarted")
    assert [e.data["task"] for e in recorded] == ["mailbox-it", "mailbox-it"]
    assert "boom 1" in recorded[0].detail and "restarting it in" in recorded[0].detail


async def test_too_many_failures_in_the_window_raise_and_are_recorded(engine: Engine) -> None:
    async def broken() -> None:
        raise RuntimeError("always")

    with pytest.raises(TaskFailedTooOften, match="sender failed 3 times"):
        await Supervisor(engine, FAST, asyncio.Event()).run(broken, TaskHealth("sender"))
    assert len(events(engine, "task-restarted")) == 2
    assert len(events(engine, "task-failed-repeatedly")) == 1


async def test_a_task_that_returns_while_the_daemon_runs_counts_as_failed(engine: Engine) -> None:
    async def quits() -> None:
        return None

    with pytest.raises(TaskFailedTooOften, match="returned while the daemon was running"):
        await Supervisor(engine, FAST, asyncio.Event()).run(quits, TaskHealth("scheduler"))


async def test_a_failure_while_stopping_is_not_restarted(engine: Engine) -> None:
    stop = asyncio.Event()

    async def fails_on_stop() -> None:
        stop.set()
        raise RuntimeError("late")

    await Supervisor(engine, FAST, stop).run(fails_on_stop, TaskHealth("sender"))
    assert events(engine, "task-restarted") == []


async def test_an_unrecordable_restart_still_restarts(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path}/no-tables.sqlite")  # no schema: the insert fails
    stop = asyncio.Event()
    runs = 0

    async def once_broken() -> None:
        nonlocal runs
        runs += 1
        if runs == 1:
            raise RuntimeError("first")
        stop.set()

    await Supervisor(engine, FAST, stop).run(once_broken, TaskHealth("sender"))
    assert runs == 2


async def test_injected_faults_kill_the_named_task_only_as_often_as_asked(engine: Engine) -> None:
    faults = FaultInjection.parse("fail-task=mailbox-it:2:0.05")
    stop = asyncio.Event()
    runs = 0

    async def worker() -> None:
        nonlocal runs
        runs += 1
        if runs == 3:
            stop.set()
            return
        await asyncio.Event().wait()  # runs until killed

    health = TaskHealth("mailbox-it")
    await Supervisor(engine, FAST, stop, faults=faults.for_task).run(worker, health)
    assert runs == 3 and health.restarts == 2
    assert "killed after 0.05s" in health.last_error
    assert faults.for_task("sender") is None


async def test_an_injected_fault_at_start_is_an_injected_fault() -> None:
    wrap = FaultInjection.parse("fail-task=sender:1").for_task("sender")
    assert wrap is not None

    async def never() -> None:
        raise AssertionError("must not run")

    with pytest.raises(InjectedFault, match="failed as it started"):
        await wrap(never())


NO_CASEWORK = SimpleNamespace(config=None)


async def test_the_schedulers_run_ends_with_a_jobs_unexpected_error(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(engine: object, casework: object) -> int:
        raise RuntimeError("job bug")

    monkeypatch.setattr("mailrouter.schedule.send_due_reminders", broken)
    monkeypatch.setattr("mailrouter.schedule.warn_of_expiring_credentials", lambda *_: 0)
    monkeypatch.setattr("mailrouter.schedule.privacy.run_daily", lambda *_: None)
    # No engine or casework (retention reads the config off it): the monkeypatched jobs take neither.
    scheduler = Scheduler(None, NO_CASEWORK, 0.05, lambda: None)  # type: ignore[arg-type]
    with pytest.raises(RuntimeError, match="job bug"):
        await asyncio.wait_for(scheduler.run(asyncio.Event()), timeout=10)


async def test_the_scheduler_keeps_running_while_the_database_is_away(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    stop = asyncio.Event()
    calls = 0

    def away(engine: object, casework: object) -> int:
        nonlocal calls
        calls += 1
        if calls == 3:
            stop.set()
        raise DatabaseUnavailable("database is locked")

    monkeypatch.setattr("mailrouter.schedule.send_due_reminders", away)
    monkeypatch.setattr("mailrouter.schedule.check_sla", away)
    monkeypatch.setattr("mailrouter.schedule.follow_through", away)
    monkeypatch.setattr("mailrouter.schedule.warn_of_expiring_credentials", away)
    monkeypatch.setattr(
        "mailrouter.schedule.privacy.run_daily", lambda engine, config, _: away(engine, config)
    )
    jobless = Scheduler(None, NO_CASEWORK, 0.05, lambda: None)  # type: ignore[arg-type]  # as above
    await asyncio.wait_for(jobless.run(stop), timeout=10)
    assert calls >= 3
