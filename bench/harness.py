"""The real `mailrouter run` process and the mail stack, driven the way ops and customers would."""

from __future__ import annotations

import imaplib
import os
import re
import secrets
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import Engine, create_engine, text

from tests.mailstack import DISCARD_DOMAIN, MailStack

ROOT = Path(__file__).resolve().parents[1]

CONFIG = """
database_url = "{database_url}"
rules = "{root}/rules"
templates = "{root}/templates"

[daemon]
idle = {idle}
poll_interval = {poll_interval}
send_interval = 1
shutdown_timeout = 10

[limits]
acknowledgements_per_sender = 100000  # the latency runs have one customer; the default (5) would stall them
acknowledgements_per_domain = 100000  # every bench customer is at one domain
acknowledgements_total = 100000
max_message_size = 67108864  # the memory run's 25 MB attachment is 26.9 MB on the wire: read it

[smtp]
host = "127.0.0.1"
port = {smtp_port}
security = "none"
retry_initial = 1
retry_max = 5
"""

MAILBOX = """
[mailboxes.{name}]
address = "{address}"
display_name = "{display_name}"
prefix = "{prefix}"
language = "{language}"{group}
start = "all"  # the bench appends its mail before the daemon starts
[mailboxes.{name}.imap]
host = "127.0.0.1"
port = {imap_port}
security = "none"
user = "{address}"
password_env = "{password_env}"
"""

# Rules route to all three departments, so all three must exist; only "it" receives bench mail.
DEPARTMENTS = {
    "it": ("IT Support", "IT", "en"),
    "hr": ("HR", "HR", "no"),
    "vaktmester": ("Vaktmester", "VM", "no"),
}
# With agents, one group of them has every department and every group the rules name, so each new
# case and each customer reply notifies them, as in production.
AGENT_GROUPS = ("desk", "it-access", "hr-payroll", "vaktmester-vakt")
AGENTS = """
[agents]
reply_secret_env = "BENCH_REPLY_SECRET"
[agents.groups]
"""


@dataclass
class Daemon:
    stack: MailStack
    directory: Path
    database_url: str
    accounts: dict[str, tuple[str, str]]
    env: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0

    @property
    def log_path(self) -> Path:
        return self.directory / "mailrouter.log"

    def start(self) -> None:
        self.log_path.write_bytes(b"")
        self.started_at = time.monotonic()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "mailrouter", "--config", str(self.directory / "config.toml"), "run"],
            stdout=self.log_path.open("ab"),
            stderr=subprocess.STDOUT,
            env=self.env,
            cwd=self.directory,
        )

    def wait_ready(self, timeout: float = 30) -> float:
        """Seconds from launch until every mailbox worker is watching its folder."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.log().count(" watching ") >= len(self.accounts):
                return time.monotonic() - self.started_at
            self._check_alive()
            time.sleep(0.02)
        raise RuntimeError(f"mailrouter did not start in {timeout}s:\n{self.log()[-3000:]}")

    def _check_alive(self) -> None:
        if self.process is not None and self.process.poll() is not None:
            raise RuntimeError(f"mailrouter exited {self.process.returncode}:\n{self.log()[-3000:]}")

    def peak_rss_mb(self) -> float:
        """VmHWM, the high-water mark of the resident set as the kernel counts it, of the daemon
        and its child processes (the parse workers) added up: an upper bound of their joint peak."""
        assert self.process is not None
        return sum(_peak_rss_kb(pid) for pid in _process_tree(self.process.pid)) / 1024

    def stop(self) -> None:
        if self.process is None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.process = None

    def cpu(self) -> dict[str, float]:
        assert self.process is not None
        return cpu_by_group(self.process.pid)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait_done(self, incoming: int, sent: int, timeout: float) -> float:
        """Seconds since launch until `incoming` messages are cases or follow-ups and `sent`
        acknowledgements have been accepted by the relay."""
        engine = create_engine(self.database_url)
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                registered, delivered = progress(engine)
                if registered >= incoming and delivered >= sent:
                    return time.monotonic() - self.started_at
                self._check_alive()
                time.sleep(0.05)
        finally:
            engine.dispose()
        registered, delivered = progress(create_engine(self.database_url))
        raise RuntimeError(
            f"timed out: {registered}/{incoming} registered, {delivered}/{sent} sent\n{self.log()[-3000:]}"
        )


def _process_tree(pid: int) -> list[int]:
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):  # gone meanwhile
                continue
            parents.setdefault(parent, []).append(int(entry.name))
    tree, todo = [], [pid]
    while todo:
        tree.append(todo.pop())
        todo += parents.get(tree[-1], [])
    return tree


def _peak_rss_kb(pid: int) -> int:
    match = re.search(r"VmHWM:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text())
    assert match is not None
    return int(match.group(1))


# Where each part of the machine's CPU time goes, by the executable of the process.
CPU_GROUPS = (
    ("Postfix", "/usr/lib/postfix/"),
    ("Postfix", "/usr/sbin/post"),
    ("Dovecot", "/usr/lib/dovecot/"),
    ("Dovecot", "/usr/sbin/dovecot"),
    ("PostgreSQL", "/usr/lib/postgresql/"),
)
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def machine_cpu() -> tuple[float, float]:
    """(busy, all) CPU seconds of the whole machine since boot, every core added up."""
    fields = [int(value) for value in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle, iowait
    return (sum(fields) - idle) / CLOCK_TICKS, sum(fields) / CLOCK_TICKS


class Span:
    """A stretch of work: its wall time and the busy CPU time of the whole machine meanwhile,
    which counts the servers' share of the work (Postfix, Dovecot) too."""

    wall = cpu = 0.0

    def __enter__(self) -> Span:
        self._started, self._busy = time.perf_counter(), machine_cpu()[0]
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.perf_counter() - self._started
        self.cpu = machine_cpu()[0] - self._busy


def cpu_by_group(daemon_pid: int) -> dict[str, float]:
    """CPU seconds so far of the daemon, its parse workers, Postfix, Dovecot and PostgreSQL (the
    server's processes on this machine: busy in the PostgreSQL run only). A process's own
    time and that of its children it has reaped: Postfix's and Dovecot's short-lived helpers
    end up in their masters', so what they used is kept when they exit."""
    workers = set(_process_tree(daemon_pid)) - {daemon_pid}
    groups = {"daemon": 0.0, "parse workers": 0.0, "Postfix": 0.0, "Dovecot": 0.0, "PostgreSQL": 0.0}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        try:
            if pid == daemon_pid:
                group = "daemon"
            elif pid in workers:
                group = "parse workers"
            else:
                executable = os.readlink(entry / "exe")
                group = next((name for name, prefix in CPU_GROUPS if executable.startswith(prefix)), "")
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split() if group else ()
        except OSError:  # gone meanwhile, or a kernel thread
            continue
        if fields:
            # the daemon without its reaped children: its parse workers are counted alive
            reaped = int(fields[13]) + int(fields[14]) if group != "daemon" else 0
            groups[group] += (int(fields[11]) + int(fields[12]) + reaped) / CLOCK_TICKS
    return groups


def progress(engine: Engine) -> tuple[int, int]:
    try:
        with engine.connect() as connection:
            registered = connection.execute(
                text("SELECT count(*) FROM message WHERE direction = 'in' AND case_id IS NOT NULL")
            ).scalar_one()
            delivered = connection.execute(
                text("SELECT count(*) FROM outboxmessage WHERE state = 'sent'")
            ).scalar_one()
            return registered, delivered
    except Exception:  # the daemon has not created the schema yet
        return 0, 0


def make_daemon(
    stack: MailStack,
    directory: Path,
    database_url: str,
    *,
    idle: bool = True,
    poll_interval: float = 30,
    agents: tuple[str, ...] = (),
) -> Daemon:
    """A configured daemon, not yet started; `agents`: addresses to notify of every case."""
    directory.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    prefixes = [f"bench-{name[:4]}" for name in DEPARTMENTS]
    accounts = dict(zip(DEPARTMENTS, stack.new_accounts(*prefixes), strict=True))
    parts = [
        CONFIG.format(
            database_url=database_url,
            root=ROOT,
            smtp_port=stack.smtp_port,
            idle=str(idle).lower(),
            poll_interval=poll_interval,
        )
    ]
    if agents:
        env["BENCH_REPLY_SECRET"] = secrets.token_hex(32)
        members = ", ".join(f'"{agent}"' for agent in agents)
        parts.append(AGENTS + "".join(f"{group} = [{members}]\n" for group in AGENT_GROUPS))
    for name, (display_name, prefix, language) in DEPARTMENTS.items():
        address, password = accounts[name]
        password_env = f"BENCH_{name.upper()}_PASSWORD"
        env[password_env] = password
        parts.append(
            MAILBOX.format(
                name=name,
                address=address,
                display_name=display_name,
                prefix=prefix,
                language=language,
                group=f'\ngroup = "{AGENT_GROUPS[0]}"' if agents else "",
                imap_port=stack.imap_port,
                password_env=password_env,
            )
        )
    (directory / "config.toml").write_text("".join(parts))
    return Daemon(stack, directory, database_url, accounts, env=env)


def append_all(stack: MailStack, address: str, password: str, messages: list[bytes]) -> float:
    """IMAP APPEND every message over one connection; returns the seconds it took."""
    started = time.perf_counter()
    with stack.imap(address, password) as conn:
        for raw in messages:
            typ, data = conn.append("INBOX", None, None, raw)
            if typ != "OK":
                raise RuntimeError(f"APPEND failed: {typ} {data!r}")
    return time.perf_counter() - started


def count_messages(stack: MailStack, address: str, password: str, folder: str = "INBOX") -> int:
    with stack.imap(address, password) as conn:
        typ, data = conn.status(folder, "(MESSAGES)")
        if typ != "OK":
            return 0
        return int(re.search(rb"MESSAGES (\d+)", data[0]).group(1))  # type: ignore[union-attr]


def passed_on(stack: MailStack, prefix: str) -> int:
    """How many messages to addresses starting with `prefix` at DISCARD_DOMAIN the relay has passed
    on to the outside world (scripts/mailstack drops them there), counted in Postfix's log."""
    log = (stack.dir / "log" / "postfix.log").read_text(errors="replace")
    return len(re.findall(rf"to=<{re.escape(prefix)}[^>]*@{re.escape(DISCARD_DOMAIN)}>.*status=sent", log))


def wait_for_count(stack: MailStack, address: str, password: str, count: int, timeout: float) -> float:
    """Seconds until the folder holds `count` messages (Postfix delivering what we handed it)."""
    started = time.perf_counter()
    while count_messages(stack, address, password) < count:
        if time.perf_counter() - started > timeout:
            raise RuntimeError(f"{address}: fewer than {count} messages after {timeout}s")
        time.sleep(0.2)
    return time.perf_counter() - started


def imap_login(stack: MailStack, address: str, password: str) -> imaplib.IMAP4:
    conn = imaplib.IMAP4(stack.host, stack.imap_port, timeout=stack.timeout)
    conn.login(address, password)
    return conn
