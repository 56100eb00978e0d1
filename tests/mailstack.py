"""Drive the development mail stack (scripts/mailstack) from tests: stdlib only.

A `MailStack` names one stack (state directory and ports); its methods run the script with the
matching environment, send mail over SMTP and read mailboxes over IMAP like a mail client would.
"""

from __future__ import annotations

import email
import email.policy
import imaplib
import json
import os
import smtplib
import ssl
import subprocess
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import datetime
from email.message import EmailMessage
from pathlib import Path
from typing import Any, Literal

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "mailstack"
DOMAIN = "example.test"
DISCARD_DOMAIN = "discard.test"  # accepted, queued and dropped (scripts/mailstack)
DEFER_DOMAIN = "defer.test"  # every recipient refused for now at RCPT, 450 (scripts/mailstack)
PIPE_DOMAIN = "pipe.test"  # NAME.pipe.test is piped to pipe/NAME.pipe.test/deliver (scripts/mailstack)
PIPE_USER = "mail"  # who pipe(8) runs that program as (scripts/mailstack)

Tls = Literal["none", "starttls", "implicit"]


class MailStackError(RuntimeError):
    """scripts/mailstack failed; the message carries its output."""


@dataclass(frozen=True)
class MailStack:
    dir: Path
    smtp_port: int = 2525
    imap_port: int = 1143
    imaps_port: int = 1993
    lmtp_port: int = 2424
    submission_port: int = 2587  # STARTTLS and AUTH required
    smtps_port: int = 2465  # implicit TLS, AUTH required
    host: str = "127.0.0.1"
    timeout: float = 30.0  # per SMTP/IMAP socket operation

    @property
    def ca_file(self) -> Path:
        """The stack's self-signed certificate (SAN 127.0.0.1 and localhost): trust it for TLS."""
        return self.dir / "tls" / "cert.pem"

    @property
    def oauth_port(self) -> int:
        """Where Dovecot's oauth2 passdb asks the tests' token server (scripts/mailstack's default)."""
        return int(os.environ.get("MAILSTACK_OAUTH_PORT") or self.imaps_port + 1)

    @property
    def pipe_dir(self) -> Path:
        """Where the programs live that Postfix pipes NAME.pipe.test mail to: pipe/<domain>/deliver."""
        return self.dir / "pipe"

    def ssl_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca_file))

    def env(self) -> dict[str, str]:
        """The variables scripts/mailstack reads; also what a daemon under test needs."""
        return {
            "MAILSTACK_DIR": str(self.dir),
            "MAILSTACK_SMTP_PORT": str(self.smtp_port),
            "MAILSTACK_IMAP_PORT": str(self.imap_port),
            "MAILSTACK_IMAPS_PORT": str(self.imaps_port),
            "MAILSTACK_LMTP_PORT": str(self.lmtp_port),
            "MAILSTACK_SUBMISSION_PORT": str(self.submission_port),
            "MAILSTACK_SMTPS_PORT": str(self.smtps_port),
        }

    # --- the script -----------------------------------------------------------------------------

    def _run(self, *args: str) -> str:
        # Generous timeout: the first start on a fresh machine installs Debian packages.
        proc = subprocess.run(
            [str(SCRIPT), *args],
            env={**os.environ, **self.env()},
            capture_output=True,
            text=True,
            timeout=600,
        )
        if proc.returncode != 0:
            raise MailStackError(
                f"scripts/mailstack {' '.join(args)} exited {proc.returncode}\n{proc.stdout}{proc.stderr}"
            )
        return proc.stdout

    def start(self) -> None:
        self._run("start")

    def running(self) -> bool:
        """Whether Postfix and Dovecot of this stack are up (`scripts/mailstack status`)."""
        return (
            subprocess.run(
                [str(SCRIPT), "status"], env={**os.environ, **self.env()}, capture_output=True
            ).returncode
            == 0
        )

    def stop(self) -> None:
        self._run("stop")

    def start_smtp(self) -> None:
        self._run("start-smtp")

    def stop_smtp(self) -> None:
        self._run("stop-smtp")

    def start_imap(self) -> None:
        self._run("start-imap")

    def stop_imap(self) -> None:
        """Stops Dovecot (IMAP and LMTP): Postfix keeps mail for it queued until start_imap()."""
        self._run("stop-imap")

    def add_user(self, address: str, password: str) -> None:
        """Add or replace an account; returns once Dovecot serves it (up to about a second)."""
        self._run("adduser", address, password)

    def new_account(self, prefix: str) -> tuple[str, str]:
        """A fresh account such as it-7f3a09c1@example.test, for one test's isolation."""
        return self.new_accounts(prefix)[0]

    def new_accounts(self, *prefixes: str) -> list[tuple[str, str]]:
        """Several fresh accounts for the price of one adduser wait."""
        accounts = [
            (f"{prefix}-{uuid.uuid4().hex[:8]}@{DOMAIN}", f"pw-{uuid.uuid4().hex[:12]}")
            for prefix in prefixes
        ]
        self._run("adduser", *(field for account in accounts for field in account))
        return accounts

    # --- SMTP -----------------------------------------------------------------------------------

    def send(
        self,
        msg: EmailMessage | bytes,
        sender: str,
        recipients: str | Sequence[str],
    ) -> dict[str, tuple[int, bytes]]:
        """Submit over SMTP; returns the recipients the server refused (smtplib's convention)."""
        to = [recipients] if isinstance(recipients, str) else list(recipients)
        with smtplib.SMTP(self.host, self.smtp_port, timeout=self.timeout) as smtp:
            if isinstance(msg, bytes):
                # 8-bit headers (raw UTF-8) are only legal under SMTPUTF8.
                options = ["SMTPUTF8", "BODY=8BITMIME"] if not msg.isascii() else []
                return smtp.sendmail(sender, to, msg, mail_options=options)
            return smtp.send_message(msg, from_addr=sender, to_addrs=to)

    def submit(self, raw: bytes, sender: str, recipient: str) -> str:
        """Submit one message over SMTP; returns the queue id Postfix gave it."""
        with smtplib.SMTP(self.host, self.smtp_port, timeout=self.timeout) as smtp:
            smtp.ehlo()
            smtp.mail(sender)
            code, answer = smtp.rcpt(recipient)
            assert code == 250, f"RCPT {recipient}: {code} {answer!r}"
            code, answer = smtp.data(raw)
        assert code == 250, f"DATA: {code} {answer!r}"
        return answer.decode().rpartition("queued as ")[2].strip()

    def delivery_attempts(self, queue_id: str) -> list[str]:
        """What Postfix's log says of each attempt to deliver the queued message: status=... (why)."""
        log = (self.dir / "log" / "postfix.log").read_text(errors="replace")
        return [
            line.partition(", status=")[2]
            for line in log.splitlines()
            if f" {queue_id}: to=<" in line and ", status=" in line
        ]

    def queued(self) -> set[str]:
        """The queue ids of the messages Postfix holds (deferred or about to be tried)."""
        out = subprocess.run(
            ["postqueue", "-c", str(self.dir / "postfix" / "etc"), "-j"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        return {json.loads(line)["queue_id"] for line in out.splitlines() if line.strip()}

    def deliver_now(self, queue_id: str) -> None:
        """Try a deferred message again now, instead of after Postfix's backoff."""
        conf = str(self.dir / "postfix" / "etc")
        subprocess.run(["postqueue", "-c", conf, "-i", queue_id], check=True, capture_output=True)

    # --- IMAP -----------------------------------------------------------------------------------

    @contextmanager
    def imap(self, address: str, password: str, tls: Tls = "none") -> Iterator[imaplib.IMAP4]:
        """A logged-in IMAP connection; logged out at the end."""
        conn: imaplib.IMAP4
        if tls == "implicit":
            conn = imaplib.IMAP4_SSL(
                self.host, self.imaps_port, ssl_context=self.ssl_context(), timeout=self.timeout
            )
        else:
            conn = imaplib.IMAP4(self.host, self.imap_port, timeout=self.timeout)
            if tls == "starttls":
                conn.starttls(ssl_context=self.ssl_context())
        try:
            conn.login(address, password)
            yield conn
        finally:
            with suppress(imaplib.IMAP4.error, OSError):
                conn.logout()

    def raw_messages(self, address: str, password: str, folder: str = "INBOX") -> list[bytes]:
        """Every message in the folder, oldest first, without setting \\Seen."""
        with self.imap(address, password) as conn:
            return _fetch_all(conn, folder)

    def messages(self, address: str, password: str, folder: str = "INBOX") -> list[EmailMessage]:
        return [_parse(raw) for raw in self.raw_messages(address, password, folder)]

    def unmarked(self, address: str, password: str, folder: str = "INBOX") -> list[int]:
        """UIDs of the folder's messages mailrouter has not marked registered or quarantined."""
        with self.imap(address, password) as conn:
            _ok(conn.select(_quote(folder), readonly=True), f"SELECT {folder}")
            [found] = _ok(
                conn.uid("SEARCH", "UNKEYWORD", "$Registered", "UNKEYWORD", "$Quarantined"), "SEARCH"
            )
            return [int(uid) for uid in found.split()]

    def highest_uid(self, address: str, password: str, folder: str = "INBOX") -> int:
        """The UID the folder's newest message has or had (UIDNEXT - 1)."""
        with self.imap(address, password) as conn:
            [status] = _ok(conn.status(_quote(folder), "(UIDNEXT)"), f"STATUS {folder}")
            return int(status.decode().rsplit("UIDNEXT", 1)[1].strip(" )")) - 1

    def relay_queue(self) -> list[Path]:
        """The mails Postfix holds: accepted and not yet delivered, bounced or dropped."""
        spool = self.dir / "postfix" / "spool"
        queues = ("maildrop", "incoming", "active", "deferred", "hold")
        return [path for queue in queues for path in (spool / queue).rglob("*") if path.is_file()]

    def wait_for_messages(
        self,
        address: str,
        password: str,
        count: int,
        folder: str = "INBOX",
        timeout: float = 60.0,
    ) -> list[EmailMessage]:
        """Poll until the folder holds at least `count` messages (it may not exist yet). The
        timeout is a ceiling for a machine busy with other test workers: mail that comes returns
        at once."""
        deadline = time.monotonic() + timeout
        seen: list[bytes] = []
        problem = ""
        with self.imap(address, password) as conn:
            while True:
                try:
                    seen = _fetch_all(conn, folder)
                    problem = ""
                except _FolderMissing as exc:
                    problem = f" ({exc})"
                if len(seen) >= count:
                    return [_parse(raw) for raw in seen]
                if time.monotonic() >= deadline:
                    subjects = [_parse(raw)["Subject"] for raw in seen]
                    raise AssertionError(
                        f"{address} {folder}: expected at least {count} message(s) within "
                        f"{timeout}s, saw {len(seen)}{problem}; subjects: {subjects}"
                    )
                time.sleep(0.1)

    def append(
        self,
        address: str,
        password: str,
        raw: bytes,
        folder: str = "INBOX",
        flags: str | None = None,
        arrived: datetime | None = None,
    ) -> None:
        """Put a message straight into a mailbox (IMAP APPEND), creating the folder if needed;
        `arrived` (timezone-aware) is its INTERNALDATE, now by default."""
        mailbox = _quote(folder)
        with self.imap(address, password) as conn:
            typ, data = conn.append(mailbox, flags, arrived, raw)
            if typ != "OK" and b"TRYCREATE" in b" ".join(d for d in data if isinstance(d, bytes)):
                _ok(conn.create(mailbox), f"CREATE {folder}")
                typ, data = conn.append(mailbox, flags, arrived, raw)
            _ok((typ, data), f"APPEND to {folder}")


def stack_from_env() -> MailStack:
    """The stack scripts/mailstack would use with the current environment (same defaults)."""
    env = os.environ
    smtp_port = int(env.get("MAILSTACK_SMTP_PORT", "2525"))
    return MailStack(
        dir=Path(env.get("MAILSTACK_DIR") or REPO / ".mailstack").resolve(),
        smtp_port=smtp_port,
        imap_port=int(env.get("MAILSTACK_IMAP_PORT", "1143")),
        imaps_port=int(env.get("MAILSTACK_IMAPS_PORT", "1993")),
        lmtp_port=int(env.get("MAILSTACK_LMTP_PORT", "2424")),
        submission_port=int(env.get("MAILSTACK_SUBMISSION_PORT", smtp_port + 62)),
        smtps_port=int(env.get("MAILSTACK_SMTPS_PORT", smtp_port - 60)),
    )


# A pytest-xdist worker's stack: worker N listens on 20000 + 100 N + these (below the kernel's
# ephemeral ports, where the tests' own servers bind port 0), its state beside the default one.
_WORKER_PORT_OFFSETS = {
    "MAILSTACK_LMTP_PORT": 24,
    "MAILSTACK_SMTP_PORT": 25,
    "MAILSTACK_IMAP_PORT": 43,
    "MAILSTACK_SMTPS_PORT": 65,
    "MAILSTACK_SUBMISSION_PORT": 87,
    "MAILSTACK_IMAPS_PORT": 93,
    "MAILSTACK_OAUTH_PORT": 94,
}


def worker_environment(base: MailStack, worker: str) -> dict[str, str]:
    """The MAILSTACK_* variables of pytest-xdist worker `worker` ("gw0", "gw1" …): a stack of
    its own, so that a test stopping Dovecot or Postfix never takes another worker's mail away."""
    number = int(worker.removeprefix("gw"))
    ports = {name: str(20000 + 100 * number + offset) for name, offset in _WORKER_PORT_OFFSETS.items()}
    return {"MAILSTACK_DIR": f"{base.dir}-{worker}", **ports}


class _FolderMissing(Exception):
    pass


def _quote(folder: str) -> str:
    # imaplib sends mailbox names verbatim; IMAP needs a quoted string for spaces and specials.
    if not folder.isascii():
        raise ValueError(f"non-ASCII folder names need modified UTF-7, not supported: {folder!r}")
    return '"' + folder.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _ok(response: tuple[str, list[Any]], what: str) -> list[Any]:
    typ, data = response
    if typ != "OK":
        raise AssertionError(f"IMAP {what} failed: {typ} {data!r}")
    return data


def _fetch_all(conn: imaplib.IMAP4, folder: str) -> list[bytes]:
    typ, data = conn.select(_quote(folder), readonly=True)
    if typ != "OK":
        raise _FolderMissing(f"cannot select {folder}: {data!r}")
    uids = _ok(conn.uid("SEARCH", "ALL"), "UID SEARCH")[0]
    assert isinstance(uids, bytes)
    if not uids.strip():
        return []
    fetched = _ok(conn.uid("FETCH", "1:*", "(BODY.PEEK[])"), "UID FETCH")
    # imaplib yields (b'1 (UID 7 BODY[] {123}', b'<message>') pairs with b')' between them.
    return [part[1] for part in fetched if isinstance(part, tuple)]


def _parse(raw: bytes) -> EmailMessage:
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(msg, EmailMessage)
    return msg
