"""Two registrations of the same message racing each other (two instances, or a worker that lost
its mailbox lock): the database's unique constraints decide, and the loser ends as a duplicate."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator

import pytest
from sqlmodel import Session, select

from mailrouter import store
from mailrouter.config import load_config
from mailrouter.daemon import load
from mailrouter.db import open_database
from mailrouter.intake import Intake
from mailrouter.models import Case, Message, OutboxMessage
from mailrouter.plan import Origin, OutcomeKind
from mailrouter.vocabulary import OutboxKind
from tests.messages import make_mail
from tests.postgres import temporary_database


@pytest.fixture(params=["sqlite", "postgresql"])
def intake(request, config_file) -> Iterator[Intake]:
    if request.param == "sqlite":
        loaded = load(load_config(config_file))
        yield Intake(
            loaded.config, loaded.rules, loaded.templates, open_database(loaded.config), loaded.agents
        )
        return
    with temporary_database() as url:
        text = config_file.read_text()
        config_file.write_text(
            "\n".join(
                f'database_url = "{url}"' if line.startswith("database_url") else line
                for line in text.splitlines()
            )
        )
        loaded = load(load_config(config_file))
        engine = open_database(loaded.config)
        yield Intake(loaded.config, loaded.rules, loaded.templates, engine, loaded.agents)
        engine.dispose()


def count(intake: Intake, model) -> int:
    with Session(intake.engine) as session:
        return len(session.exec(select(model)).all())


def test_losing_the_check_then_insert_race_ends_as_a_duplicate(intake, monkeypatch):
    """The other instance commits between our 'already registered?' look and our insert."""
    raw = make_mail()
    assert intake.process(raw, Origin("it", 7, 1)).kind == OutcomeKind.NEW_CASE
    real = store.SqlFacts.identity
    calls = []

    def blind_first_time(facts, mailbox, inbound):
        calls.append(mailbox)
        return (None, None) if len(calls) == 1 else real(facts, mailbox, inbound)

    monkeypatch.setattr(store.SqlFacts, "identity", blind_first_time)
    outcome = intake.process(raw, Origin("it", 8, 1))  # another copy, e.g. after UIDVALIDITY changed
    assert outcome.kind == OutcomeKind.DUPLICATE
    assert len(calls) == 2  # the unique constraint refused the insert; the second look saw it
    # acknowledgement, one notification for each of the group's two agents
    assert (count(intake, Case), count(intake, OutboxMessage)) == (1, 3)


def test_concurrent_registrations_of_the_same_messages(intake):
    messages = [make_mail(message_id=f"<race-{n}@kunde.example>", subject=f"Race {n}") for n in range(15)]
    outcomes: list[OutcomeKind] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(2)

    def worker(uidvalidity: int) -> None:
        try:
            for n, raw in enumerate(messages, start=1):
                barrier.wait(timeout=30)
                outcomes.append(intake.process(raw, Origin("it", uidvalidity, n)).kind)
        except BaseException as exc:
            errors.append(exc)
            barrier.abort()

    threads = [threading.Thread(target=worker, args=(v,)) for v in (1, 2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    assert Counter(outcomes) == {OutcomeKind.NEW_CASE: 15, OutcomeKind.DUPLICATE: 15}
    # one notification per case and agent (acknowledgements to this one sender stop at the limit)
    with Session(intake.engine) as session:
        kinds = [o.kind for o in session.exec(select(OutboxMessage)).all()]
    assert count(intake, Case) == 15 and kinds.count(OutboxKind.NOTIFICATION) == 30
    with Session(intake.engine) as session:
        incoming = session.exec(select(Message).where(Message.direction == "in")).all()
    assert len(incoming) == 15
