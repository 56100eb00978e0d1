"""SQLite writers of one process take turns: none starves while another commits back to back."""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
import time

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from mailrouter.db import WriteTurns, checkpoint, keep_checkpointing, make_engine, write_turns
from mailrouter.errors import DatabaseUnavailable
from tests.postgres import temporary_database
from tests.sqlite_file import rows_in_database_file


def _table(engine) -> None:
    with engine.begin() as connection:
        connection.execute(text("CREATE TABLE IF NOT EXISTS t (writer TEXT)"))


def test_a_writer_gets_the_next_turn_while_another_commits_back_to_back(tmp_path):
    """The intake commits message after message; the sender's one write must not wait them out.
    SQLite's busy handler alone (sleep, retry) lost that race for seconds at a time."""
    engine = make_engine(f"sqlite:///{tmp_path / 'db.sqlite'}")
    _table(engine)
    stop = threading.Event()
    commits: list[float] = []

    def busy_writer() -> None:
        while not stop.is_set():
            with engine.begin() as connection:
                connection.execute(text("INSERT INTO t VALUES ('busy')"))
                time.sleep(0.005)  # the work of one message, inside its transaction
            commits.append(time.monotonic())

    thread = threading.Thread(target=busy_writer)
    thread.start()
    try:
        while len(commits) < 3:
            time.sleep(0.001)
        asked = time.monotonic()
        with engine.begin() as connection:
            connection.execute(text("INSERT INTO t VALUES ('other')"))
        waited_through = sum(1 for at in commits if at > asked)
    finally:
        stop.set()
        thread.join()
    assert waited_through <= 2, f"the other writer waited through {waited_through} commits"
    engine.dispose()


def test_turns_go_in_the_order_they_were_asked_for():
    turns = WriteTurns()
    assert turns.take(1)
    order: list[int] = []

    def writer(number: int) -> None:
        assert turns.take(5)
        order.append(number)
        turns.give()

    threads = []
    for number in range(4):
        threads.append(threading.Thread(target=writer, args=(number,)))
        threads[-1].start()
        while len(turns._queue) <= number:  # queued before the next one asks
            time.sleep(0.001)
    turns.give()
    for thread in threads:
        thread.join()
    assert order == [0, 1, 2, 3]


def test_a_wait_that_runs_out_leaves_the_queue():
    turns = WriteTurns()
    assert turns.take(1)
    assert not turns.take(0.05)
    turns.give()
    assert turns.take(0)  # free again: the one who gave up is not handed a turn it no longer wants


def test_a_turn_reserved_off_the_event_loop_is_used_by_the_next_transaction_of_that_thread(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path / 'db.sqlite'}")
    _table(engine)
    turns = write_turns(engine)
    assert turns is not None

    async def reserve_then_write() -> None:
        await turns.reserve()
        with engine.begin() as connection:  # begins without waiting: the turn is ours
            connection.execute(text("INSERT INTO t VALUES ('sender')"))
        turns.forgo()  # used already: nothing to give back

    asyncio.run(reserve_then_write())
    assert turns.take(0)  # given back by the commit
    turns.give()

    async def reserve_and_forgo() -> None:
        await turns.reserve()
        turns.forgo()

    asyncio.run(reserve_and_forgo())
    assert turns.take(0)  # a reservation never used is given back by forgo
    turns.give()
    engine.dispose()


def test_postgresql_has_no_turns():
    engine = make_engine("postgresql+psycopg://nobody@127.0.0.1:1/none")
    assert write_turns(engine) is None


def test_a_reservation_cancelled_while_waiting_does_not_keep_the_turn():
    """The sender cancelled at shutdown while waiting for its turn: the turn it gets later is
    given back, or every writer of the process would wait forever."""
    turns = WriteTurns()
    assert turns.take(1)

    async def cancel_while_waiting() -> None:
        waiting = asyncio.create_task(turns.reserve())
        while not turns._queue:
            await asyncio.sleep(0.001)
        waiting.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await waiting
        turns.give()  # the holder commits: the turn goes to the cancelled waiter's thread ...
        for _ in range(500):
            await asyncio.sleep(0.002)
            if not turns._taken:
                return  # ... which gives it straight back

    asyncio.run(cancel_while_waiting())
    assert turns.take(0)


def test_a_lock_held_too_long_is_a_database_error_the_workers_recognise(tmp_path, monkeypatch):
    """The fetch worker and the sender wait and retry on DatabaseUnavailable; any other error
    would be blamed on the message in hand (and quarantine it) or end the sender."""
    from mailrouter import db

    monkeypatch.setattr(db, "BUSY_TIMEOUT_SECONDS", 0.2)
    path = tmp_path / "db.sqlite"
    this, other = make_engine(f"sqlite:///{path}"), make_engine(f"sqlite:///{path}")
    _table(this)
    with other.begin() as holding:  # another process's writer: SQLite's lock, not our turns
        holding.execute(text("INSERT INTO t VALUES ('other')"))
        with pytest.raises(DatabaseUnavailable, match="database is locked"), this.begin() as connection:
            connection.execute(text("INSERT INTO t VALUES ('this')"))

    turns = write_turns(this)
    assert turns is not None and turns.take(1)  # another writer of this process, for too long
    try:
        locked = pytest.raises(DatabaseUnavailable, match="this process's other writer")
        with locked, this.begin() as connection:
            connection.execute(text("INSERT INTO t VALUES ('this')"))
        with pytest.raises(DatabaseUnavailable, match="this process's other writer"):
            asyncio.run(turns.reserve())
    finally:
        turns.give()
    with this.begin() as connection:  # neither failure kept a turn
        connection.execute(text("INSERT INTO t VALUES ('this')"))


def test_a_statement_the_database_refuses_is_not_an_outage(tmp_path):
    """SQLite says "too many SQL variables" with the same driver class as "database is locked":
    the message's fault (it counts towards quarantine), not a reason to wait for ever."""
    engine = make_engine(f"sqlite:///{tmp_path}/db.sqlite")
    _table(engine)
    values = ", ".join(f"(:v{i})" for i in range(250_001))
    with pytest.raises(DBAPIError) as caught, engine.begin() as connection:
        connection.execute(text(f"INSERT INTO t VALUES {values}"), {f"v{i}": "x" for i in range(250_001)})
    assert not isinstance(caught.value, DatabaseUnavailable)
    assert "too many SQL variables" in str(caught.value)


def test_a_postgresql_connection_killed_by_the_server_is_an_outage_and_an_overlong_key_is_not():
    with temporary_database() as url:
        engine = make_engine(url)
        with engine.begin() as connection:
            connection.execute(text("CREATE TABLE t (v text PRIMARY KEY)"))
        with pytest.raises(DBAPIError) as too_long, engine.begin() as connection:
            connection.execute(text("INSERT INTO t VALUES (:v)"), {"v": os.urandom(6000).hex()})
        assert not isinstance(too_long.value, DatabaseUnavailable)
        with engine.connect() as victim, engine.connect() as killer:
            pid = victim.execute(text("SELECT pg_backend_pid()")).scalar_one()
            killer.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
            with pytest.raises(DatabaseUnavailable):
                victim.execute(text("SELECT 1"))
        engine.dispose()


def _commit_pages(engine, commits: int) -> None:
    for n in range(commits):
        with engine.begin() as connection:
            connection.execute(text("INSERT INTO t (writer) VALUES (:page)"), {"page": f"{n}" * 4000})


def test_with_checkpoints_apart_commits_leave_the_log_to_checkpoint(tmp_path):
    """The daemon's intake commits without stopping for a checkpoint's fsyncs: 1200 commits of a
    page each pass SQLite's 1000-page mark, where a commit runs the checkpoint itself (usual)."""
    usual, apart = tmp_path / "usual.sqlite", tmp_path / "apart.sqlite"
    engines = {}
    for path in (usual, apart):
        engines[path] = make_engine(f"sqlite:///{path}", checkpoints_apart=path == apart)
        _table(engines[path])
        _commit_pages(engines[path], 1200)
    assert rows_in_database_file(usual, "t") > 0
    assert rows_in_database_file(apart, "t") == 0
    checkpoint(engines[apart])
    assert rows_in_database_file(apart, "t") == 1200


def test_the_checkpoint_task_checkpoints_until_stopped(tmp_path):
    path = tmp_path / "db.sqlite"
    engine = make_engine(f"sqlite:///{path}", checkpoints_apart=True)
    _table(engine)
    _commit_pages(engine, 3)

    async def copied() -> None:
        while await asyncio.to_thread(rows_in_database_file, path, "t") < 3:
            await asyncio.sleep(0.05)

    async def run() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(keep_checkpointing(engine, stop))
        await asyncio.wait_for(copied(), 30)
        stop.set()
        await asyncio.wait_for(task, 30)

    asyncio.run(run())
