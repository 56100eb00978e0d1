"""The processes that parse fetched mail ahead of its registration."""

import logging
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

from mailrouter import parsepool
from mailrouter.errors import ParseError
from mailrouter.parse import Inbound, parse
from mailrouter.parsepool import CHUNK, LARGEST_SENT_TO_WORKER, Parsed, ParsePool, Parsing, _Task
from tests.hangguard import HANG_GUARD
from tests.messages import make_mail


def test_the_parse_pool_gives_what_parsing_in_process_gives_and_survives_a_dead_worker():
    mail = make_mail(subject="Skrivaren på plan 3", body="Hej, skrivaren fungerar inte.")
    parsers = ParsePool(1)
    parsers.start()
    try:
        assert parse_one(parsers, mail) == parse(mail)
        refused = parse_one(parsers, b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1 an Outlook .msg")
        assert isinstance(refused, ParseError)  # a verdict on the message, handed back as data

        assert parsers._pool is not None
        [worker] = parsers._pool._processes.values()
        assert worker.pid is not None
        os.kill(worker.pid, signal.SIGKILL)
        worker.join(5)
        # A death heard of before the submit starts a new worker at once; one heard of after it
        # leaves that message to the intake to parse itself.
        assert parse_one(parsers, mail) in (None, parse(mail))
        assert parse_one(parsers, mail) == parse(mail)  # a new worker took over
    finally:
        parsers.shutdown()


def parse_one(parsers, raw):
    [parsing] = parsers.submit([raw])
    return parsers.result(parsing)


def test_a_batch_goes_to_the_workers_in_tasks_of_a_few_and_comes_back_in_order():
    """The first task carries one message, so the intake's first wait is for one parse."""
    mails = [make_mail(subject=f"Sak {n}", message_id=f"<m{n}@kunde.example>") for n in range(CHUNK * 2 + 3)]
    batch = [*mails[:5], None, *mails[5:], make_mail(body="x" * (LARGEST_SENT_TO_WORKER + 1))]
    parsers = ParsePool(1)
    try:
        parsings = parsers.submit(batch)
        results = [parsers.result(parsing) for parsing in parsings]
    finally:
        parsers.shutdown()
    assert results == [*map(parse, mails[:5]), None, *map(parse, mails[5:]), None]
    assert parsings[5] is None and parsings[-1] is None  # none to send; too big to send
    tasks = list({id(parsing.task): parsing.task for parsing in parsings if parsing}.values())
    assert [len(task.raws) for task in tasks] == [1, 2, 4, CHUNK, 19 - 7 - CHUNK]


def test_a_message_that_breaks_the_parser_is_handed_back_to_the_intake_alone():
    """The rest of its task is parsed; that one the intake parses again, and fails on itself."""
    mails = [make_mail(subject="boom"), make_mail(subject="fine")]
    assert parsepool._parse_all(mails, _fragile, 5.0, 1000, "") == [None, parse(mails[1])]


def _fragile(raw, html_chars):
    if b"boom" in raw:
        raise RuntimeError("a bug in the parser")
    return parse(raw, html_chars=html_chars)


def test_a_late_report_of_a_dead_pool_leaves_its_replacement_running():
    """Mailboxes share the pool: the first to hear of its death starts a new one, and another,
    hearing of the same death later, must not drop the new pool (its worker would linger)."""
    parsers = ParsePool(1)
    dead = ProcessPoolExecutor(1)  # the pool whose worker died
    late: Future[list[Parsed]] = Future()
    late.set_exception(BrokenProcessPool("a worker died"))
    parsers.start()  # the replacement, started by the mailbox that heard first
    replacement = parsers._pool
    try:
        assert parsers.result(Parsing(_Task([make_mail()], "", late, dead), 0)) is None  # parsed in process
        assert parsers._pool is replacement
        mail = make_mail()
        assert parse_one(parsers, mail) == parse(mail)
    finally:
        parsers.shutdown()
        dead.shutdown()


def _hangs(raw, html_chars):
    """A parser that takes for ever on one message, as html.parser did on unclosed tags. For ever
    is HANG_GUARD here: a pool that waited it out would hand back a full reading, failing the test."""
    if b"hang" in raw:
        time.sleep(HANG_GUARD)
    return parse(raw, html_chars=html_chars)


def _stuck(raw, html_chars):
    """A parser stuck where no signal reaches it, as in a C extension's loop (HANG_GUARD long)."""
    if b"stuck" in raw:
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})
        time.sleep(HANG_GUARD)
    return parse(raw, html_chars=html_chars)


def test_a_parse_past_its_time_limit_is_read_degraded_by_its_own_worker_with_the_rest_of_its_batch():
    """The worker interrupts the parse itself at the limit: no wait for the kill, nor for the parse."""
    before, after = make_mail(subject="Sak 1"), make_mail(subject="Sak 2", message_id="<m2@kunde.example>")
    slow = make_mail(subject="hang", body="Skrivaren er ødelagt.", message_id="<slow@kunde.example>")
    parsers = ParsePool(1, time_limit=1.0, parse=_hangs)
    parsers.start()
    try:
        assert parse_one(parsers, before) == parse(before)  # the worker is up
        assert parsers._pool is not None
        [worker] = parsers._pool._processes.values()
        results = [parsers.result(parsing) for parsing in parsers.submit([before, slow, after])]
        assert parsers._pool is not None and list(parsers._pool._processes.values()) == [worker]
        assert worker.pid is not None and _alive(worker.pid)  # neither killed nor replaced
    finally:
        parsers.shutdown()
    assert results[0] == parse(before) and results[2] == parse(after)
    degraded = results[1]
    assert isinstance(degraded, Inbound)
    assert degraded.degraded == "text parts only: parsing took longer than 1 s"
    assert degraded.message_id == "<slow@kunde.example>" and degraded.text == "Skrivaren er ødelagt."


def test_a_worker_stuck_past_its_time_limit_is_killed_in_its_batch_then_alone_and_read_degraded(caplog):
    """Which message hung is not known until its batch's task is killed; then each is tried alone,
    and the stuck one, killed again, is read degraded: two deadlines, never the parse itself."""
    normal = [make_mail(subject=f"Sak {n}", message_id=f"<m{n}@kunde.example>") for n in range(3)]
    stuck = make_mail(subject="stuck", body="Hjelp.", message_id="<stuck@kunde.example>")
    parsers = ParsePool(1, time_limit=0.5, parse=_stuck)
    parsers.start()
    assert parsers._pool is not None
    [worker] = parsers._pool._processes.values()
    assert worker.pid is not None
    try:
        with caplog.at_level(logging.WARNING, logger=parsepool.__name__):
            results = [parsers.result(parsing) for parsing in parsers.submit([normal[0], stuck, *normal[1:]])]
        assert not _alive(worker.pid)  # killed, and replaced:
        assert parse_one(parsers, normal[0]) == parse(normal[0])
    finally:
        parsers.shutdown()
    assert [results[0], *results[2:]] == [parse(mail) for mail in normal]
    degraded = results[1]
    assert isinstance(degraded, Inbound)
    assert degraded.degraded == "text parts only: parsing did not finish within 0.5 s; its worker was killed"
    assert degraded.text == "Hjelp."
    kills = [r.getMessage() for r in caplog.records if r.name == parsepool.__name__]
    assert kills == ["a parse took longer than 0.5 s and its worker was killed"] * 2


def test_a_message_whose_degraded_reading_hangs_too_is_handed_back_as_a_parse_error():
    parsers = ParsePool(1, time_limit=0.5)
    try:
        verdict = parsers.result(
            Parsing(_Task([make_mail()], "parsing did not finish", _never(), parsers._pool), 0)
        )
    finally:
        parsers.shutdown()
    assert isinstance(verdict, ParseError)
    assert str(verdict) == "parsing did not finish, and its degraded reading hung too"


def _never() -> Future[list[Parsed]]:
    """A task whose worker never answers."""
    future: Future[list[Parsed]] = Future()
    future.set_running_or_notify_cancel()
    return future


def test_without_parse_workers_the_intake_parses():
    parsers = ParsePool(0)
    parsers.start()
    assert parsers.submit([make_mail()]) == [None] and parsers.result(None) is None


def test_a_worker_ends_when_the_daemon_is_killed(tmp_path):
    script = (
        "import sys, time\n"
        "from mailrouter.parsepool import ParsePool\n"
        "pool = ParsePool(1)\n"
        "pool.start()\n"
        "[parsing] = pool.submit([b'From: a@b.example\\r\\n\\r\\nx'])\n"
        "print(pool.result(parsing).sender.address, flush=True)\n"
        "[worker] = pool._pool._processes.values()\n"
        "print(worker.pid, flush=True)\n"
        "time.sleep(60)\n"
    )
    daemon = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, cwd=tmp_path)
    try:
        assert daemon.stdout is not None
        assert daemon.stdout.readline().strip() == "a@b.example"
        worker = int(daemon.stdout.readline())
        assert Path(f"/proc/{worker}").exists()
        daemon.kill()
        daemon.wait()
        deadline = time.monotonic() + 10
        while _alive(worker) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _alive(worker)
    finally:
        daemon.kill()


def _alive(pid: int) -> bool:
    """Running, as opposed to gone or a zombie waiting for its new parent to reap it."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def test_big_mail_is_parsed_in_process():
    parsers = ParsePool(1)
    try:
        assert parsers.submit([make_mail(body="x" * (LARGEST_SENT_TO_WORKER + 1))]) == [None]
    finally:
        parsers.shutdown()


def test_a_batch_queued_behind_a_stuck_one_is_parsed_after_the_kill_not_lost():
    """Killing the stuck worker shuts its pool down, which cancels what still waited in it."""
    stuck = make_mail(subject="stuck", body="Hjelp.", message_id="<stuck@kunde.example>")
    waiting = make_mail(subject="Sak", message_id="<waiting@kunde.example>")
    parsers = ParsePool(1, time_limit=0.5, parse=_stuck)
    parsers.start()
    try:
        [first] = parsers.submit([stuck])
        queued = [parsers.submit([waiting])[0] for _ in range(4)]  # beyond what the pool pre-feeds
        degraded = parsers.result(first)
        assert isinstance(degraded, Inbound) and degraded.degraded.startswith("text parts only")
        assert [parsers.result(q) for q in queued] == [parse(waiting)] * 4
    finally:
        parsers.shutdown()
