"""Send sample mail as customers would, run the daemon, and show the cases and acknowledgements."""

from __future__ import annotations

import argparse
import imaplib
import os
import secrets
import signal
import smtplib
import sqlite3
import subprocess
import sys
import time
import tomllib
from collections.abc import Callable
from email import message_from_bytes
from email.message import EmailMessage
from email.policy import default
from email.utils import make_msgid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MAILROUTER = [str(ROOT / ".venv/bin/mailrouter"), "--config", str(ROOT / "config.toml")]
SMTP_PORT = int(os.environ.get("MAILSTACK_SMTP_PORT", "2525"))
IMAP_PORT = int(os.environ.get("MAILSTACK_IMAP_PORT", "1143"))
# A customer of our own per run: the acknowledgement limit (5 per sender per hour) would
# otherwise leave a second run within the hour unanswered, exactly as it should in production.
CUSTOMER = (f"kari-{secrets.token_hex(3)}@example.test", secrets.token_hex(8))
AGENT = ("agent1@example.test", "agent-secret")

SAMPLES = [
    (
        "Kari Nordmann",
        "it-support@example.test",
        "Skrivaren på plan 3 fungerar inte",
        "Hej!\n\nSkrivaren på plan 3 skriver inte ut, och jag har ett möte om en timme.\n\nTack!\nKari",
    ),
    (
        "Ola Nordmann",
        "hr@example.test",
        "Spørsmål om lønn for november",
        "Hei,\n\njeg har ikke fått lønnsslippen for november. Kan dere sjekke?\n\nVennlig hilsen\nOla",
    ),
    (
        "Kari Nordmann",
        "vaktmester@example.test",
        "Vann på gulvet i kjelleren",
        "Hei!\n\nDet lekker fra et rør i kjelleren i bygg B, og det står vann på gulvet.\n\nHilsen Kari",
    ),
    (
        "Kari Nordmann",
        "it-support@example.test",
        "VPN password expired",
        "Hello,\n\nmy VPN password expired while I was travelling. Please help.\n\nThanks, Kari",
    ),
]


def inbox_count(account: tuple[str, str] = CUSTOMER) -> int:
    with imaplib.IMAP4("127.0.0.1", IMAP_PORT) as imap:
        imap.login(*account)
        _, data = imap.select("INBOX", readonly=True)
        return int(data[0])


def inbox_since(first: int, account: tuple[str, str] = CUSTOMER) -> list[EmailMessage]:
    with imaplib.IMAP4("127.0.0.1", IMAP_PORT) as imap:
        imap.login(*account)
        _, count = imap.select("INBOX", readonly=True)
        if int(count[0]) < first:
            return []
        _, data = imap.fetch(f"{first}:*", "(BODY.PEEK[])")
        return [message_from_bytes(part[1], policy=default) for part in data if isinstance(part, tuple)]


def send(
    name: str,
    to: str,
    subject: str,
    body: str,
    headers: dict[str, str] | None = None,
    sender: str = CUSTOMER[0],
) -> str:
    message = EmailMessage()
    message["From"] = f"{name} <{sender}>"
    message["To"] = to
    message["Subject"] = subject
    message["Message-ID"] = make_msgid(domain="example.test")
    for key, value in (headers or {}).items():
        message[key] = value
    message.set_content(body)
    with smtplib.SMTP("127.0.0.1", SMTP_PORT) as smtp:
        smtp.send_message(message)
    return message["Message-ID"]


def wait_until_watching(mailboxes: int = 3) -> None:
    """Until every mailbox has its checkpoint: mail sent before that counts as the mailbox's
    history, which a first start (start = "now") leaves alone."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            with sqlite3.connect(ROOT / "var" / "mailrouter.db") as db:
                if db.execute("SELECT count(*) FROM mailboxstate").fetchone()[0] >= mailboxes:
                    return
        except sqlite3.OperationalError:  # not created yet
            pass
        time.sleep(0.2)
    sys.exit("demo: the mailbox workers did not start watching within 60 s")


def wait_for(
    what: str,
    match: Callable[[EmailMessage], bool],
    count: int,
    first: int,
    account: tuple[str, str] = CUSTOMER,
) -> list[EmailMessage]:
    """The mails in the account's inbox (from position `first` on) that match, once `count` are there."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        found = [m for m in inbox_since(first, account) if match(m)]
        if len(found) >= count:
            return found
        time.sleep(0.5)
    sys.exit(f"demo: {what} did not reach {account[0]} within 60 s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--keep-running", action="store_true", help="leave the daemon running at the end")
    args = parser.parse_args()

    subprocess.run([str(ROOT / "scripts/mailstack"), "adduser", *CUSTOMER], check=True)
    subprocess.run([*MAILROUTER, "check"], check=True)
    first, agent_first = inbox_count() + 1, inbox_count(AGENT) + 1
    print("\n== Starting the daemon: mailrouter run")
    daemon = subprocess.Popen([*MAILROUTER, "run"])
    try:
        wait_until_watching()
        print(f"== Four customers' mails go in through SMTP (127.0.0.1:{SMTP_PORT})")
        sent = []
        for name, to, subject, body in SAMPLES:
            sent.append(send(name, to, subject, body))
            print(f"   {to:<26} {subject}")
        acks = wait_for("the acknowledgements", lambda m: m["In-Reply-To"] in sent, len(sent), first)
        print(f"\n== Acknowledgements in {CUSTOMER[0]}'s IMAP inbox")
        for ack in acks:
            print(f"   from {ack['From']!s:<38} {ack['Subject']}")

        print("\n== The customer answers the IT acknowledgement (Re:, In-Reply-To): it joins the case")
        it_ack = next(a for a in acks if a["In-Reply-To"] == sent[0])
        case_number = str(it_ack["Subject"]).split("]")[0].strip("[")
        send(
            "Kari Nordmann",
            "it-support@example.test",
            f"Re: {it_ack['Subject']}",
            "It is the printer by the window.",
            {"In-Reply-To": it_ack["Message-ID"]},
        )

        print(f"\n== agent1 was notified of {case_number}, and answers it from an ordinary mail client")
        [notification] = wait_for(
            "the notification",
            lambda m: str(m["Subject"]).startswith(f"[{case_number}] New case"),
            1,
            agent_first,
            AGENT,
        )
        print(f"   agent1's inbox: {notification['Subject']}\n   Reply-To: {notification['Reply-To']}")
        send(
            "Agent One",
            notification["Reply-To"].addresses[0].addr_spec,
            f"Re: {notification['Subject']}",
            "#priority high\nHei Kari, vi har sendt en tekniker til plan 3. Den er fikset innen en time.",
            {"In-Reply-To": notification["Message-ID"]},
            sender=AGENT[0],
        )
        [answer] = wait_for(
            "the agent's answer",
            lambda m: str(m["Subject"]).startswith(f"[{case_number}]") and m["Auto-Submitted"] is None,
            1,
            first,
        )
        print("\n== The customer gets the answer from the department; agent1's address is nowhere in it:")
        print(f"   From: {answer['From']}\n   Subject: {answer['Subject']}")
        print("   " + answer.get_body(("plain",)).get_content().strip().replace("\n", "\n   "))
        time.sleep(1)
    finally:
        if not args.keep_running:
            daemon.send_signal(signal.SIGTERM)
            daemon.wait(timeout=30)
    print("\n== mailrouter cases")
    subprocess.run([*MAILROUTER, "cases", "--limit", "10"], check=True)
    print(f"\n== mailrouter show {case_number}")
    subprocess.run([*MAILROUTER, "show", case_number], check=True)
    print("\n== mailrouter report --period today")
    subprocess.run([*MAILROUTER, "report", "--period", "today"], check=True)
    dashboard = f"http://{tomllib.loads((ROOT / 'config.toml').read_text())['http']['listen']}/dashboard"
    if args.keep_running:
        print(f"\nThe dashboard, live: {dashboard}")
        print(f"The daemon is still running (pid {daemon.pid}); stop it with: kill {daemon.pid}")
    else:
        print(f"\nThe dashboard is at {dashboard} while the daemon runs: scripts/demo --keep-running")


if __name__ == "__main__":
    main()
