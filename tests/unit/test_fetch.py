"""The fetch worker's decisions, without a server."""

import asyncio
import threading

from sqlmodel import Session

from mailrouter import store
from mailrouter.config import DaemonSettings
from mailrouter.errors import DatabaseUnavailable
from mailrouter.fetch import MAX_ATTEMPTS, Arrival, MailboxWorker, take_batch
from mailrouter.plan import Origin, OutcomeKind
from tests.messages import make_mail

MiB = 1024 * 1024


def test_a_batch_is_cut_by_bytes_and_holds_at_least_one_message():
    sizes: dict[int, int | None] = {1: 10 * MiB, 2: 10 * MiB, 3: 10 * MiB, 4: 1}
    assert take_batch([1, 2, 3, 4], sizes, 25 * MiB, 25 * MiB) == [1, 2]
    assert take_batch([3, 4], {3: 40 * MiB, 4: 1}, 32 * MiB, 64 * MiB) == [3]  # bigger than the budget: alone
    assert take_batch([1, 2], {1: 100, 2: 200}, 250, 25 * MiB) == [1]


def test_a_message_of_unknown_size_is_fetched_alone_and_not_taken_for_empty():
    sizes = {1: 100, 2: None, 3: 100}
    assert take_batch([1, 2, 3], sizes, 32 * MiB, 25 * MiB) == [1]
    assert take_batch([2, 3], sizes, 32 * MiB, 25 * MiB) == [2]


def test_a_message_the_server_did_not_describe_stays_in_the_batch_to_be_looked_up():
    assert take_batch([1, 2, 3], {1: 100, 3: 100}, 32 * MiB, 25 * MiB) == [1, 2, 3]


def test_an_oversized_message_costs_only_its_header():
    sizes: dict[int, int | None] = {1: 30 * MiB, 2: 20 * MiB}
    assert take_batch([1, 2], sizes, 21 * MiB, 25 * MiB) == [1, 2]


def worker_for(intake):
    from pydantic import SecretStr

    return MailboxWorker(
        "it", intake.config.mailboxes["it"], SecretStr("x"), intake, DaemonSettings(), lambda: None
    )


def register(worker, *arrivals):
    loop = asyncio.new_event_loop()
    try:
        return worker._register_all(list(arrivals), asyncio.Event(), threading.Event(), loop)
    finally:
        loop.close()


def attempts(intake, uid):
    with Session(intake.engine) as session:
        return store.attempts_of(session, "it", 7, [uid]).get(uid, 0)


def test_the_attempt_is_on_disk_before_processing_begins(intake, monkeypatch):
    seen = []
    process = intake.process

    def watched(raw, origin, parsed=None):
        seen.append(attempts(intake, origin.uid))  # what a crash right now would leave behind
        return process(raw, origin, parsed)

    monkeypatch.setattr(intake, "process", watched)
    registered, failure = register(worker_for(intake), Arrival(Origin("it", 7, 1), make_mail()))
    assert failure is None and registered[0][1].kind == OutcomeKind.NEW_CASE
    assert seen == [1]


def test_a_message_an_earlier_run_tried_to_the_limit_is_quarantined_without_being_parsed(intake, monkeypatch):
    origin = Origin("it", 7, 4)
    with intake.engine.begin() as connection:
        for _ in range(MAX_ATTEMPTS):
            store.count_attempt(connection, origin)

    def never(*args):
        raise AssertionError("processed again")

    monkeypatch.setattr(intake, "process", never)
    monkeypatch.setattr("mailrouter.intake.parse", never)
    registered, failure = register(worker_for(intake), Arrival(origin, make_mail()))
    assert failure is None
    [(_, outcome)] = registered
    assert outcome.kind == OutcomeKind.QUARANTINED
    assert f"processing began {MAX_ATTEMPTS} times and never finished" in outcome.summary


def test_a_try_that_met_a_database_outage_does_not_count_against_the_message(intake, monkeypatch):
    def outage(*args):
        raise DatabaseUnavailable("the database went away")

    worker = worker_for(intake)
    monkeypatch.setattr(intake, "process", outage)
    for _ in range(MAX_ATTEMPTS + 1):
        _, failure = register(worker, Arrival(Origin("it", 7, 5), make_mail()))
        assert isinstance(failure.error, DatabaseUnavailable)
    assert attempts(intake, 5) == 1
