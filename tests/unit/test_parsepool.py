"""The processes that parse fetched mail ahead of its registration."""

import os
import signal
import subprocess
import sys
import time
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

from mailrouter.errors import ParseError
from mailrouter.parse import parse
from mailrouter.parsepool import LARGEST_SENT_TO_WORKER, ParsePool
from tests.messages import make_mail


def test_the_parse_pool_gives_what_parsing_in_process_gives_and_survives_a_dead_worker():
    mail = make_mail(subject="Skrivaren på plan 3", body="Hej, skrivaren fungerar inte.")
    parsers = ParsePool(1)
    parsers.start()
    try:
        assert parsers.result(parsers.submit(mail)) == parse(mail)
        refused = parsers.result(parsers.submit(b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1 an Outlook .msg"))
        assert isinstance(refused, ParseError)  # a verdict on the message, handed back as data

        [worker] = parsers._pool._processes.values()  # type: ignore[union-attr]
        os.kill(worker.pid, signal.SIGKILL)
        worker.join(5)
        assert parsers.result(parsers.submit(mail)) is None  # the intake parses this one itself
        assert parsers.result(parsers.submit(mail)) == parse(mail)  # a new worker took over
    finally:
        parsers.shutdown()


def test_a_late_report_of_a_dead_pool_leaves_its_replacement_running():
    """Mailboxes share the pool: the first to hear of its death starts a new one, and another,
    hearing of the same death later, must not drop the new pool (its worker would linger)."""
    parsers = ParsePool(1)
    dead = ProcessPoolExecutor(1)  # the pool whose worker died
    late = Future()
    late.set_exception(BrokenProcessPool("a worker died"))
    parsers._pool_of[late] = dead
    parsers.start()  # the replacement, started by the mailbox that heard first
    replacement = parsers._pool
    try:
        assert parsers.result(late) is None  # this message is parsed in process
        assert parsers._pool is replacement
        mail = make_mail()
        assert parsers.result(parsers.submit(mail)) == parse(mail)
    finally:
        parsers.shutdown()
        dead.shutdown()


def test_without_parse_workers_the_intake_parses():
    parsers = ParsePool(0)
    parsers.start()
    assert parsers.submit(make_mail()) is None and parsers.result(None) is None


def test_a_worker_ends_when_the_daemon_is_killed(tmp_path):
    script = (
        "import sys, time\n"
        "from mailrouter.parsepool import ParsePool\n"
        "pool = ParsePool(1)\n"
        "pool.start()\n"
        "print(pool.submit(b'From: a@b.example\\r\\n\\r\\nx').result().sender.address, flush=True)\n"
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
        assert parsers.submit(make_mail(body="x" * (LARGEST_SENT_TO_WORKER + 1))) is None
    finally:
        parsers.shutdown()
