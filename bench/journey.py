"""One message's journey through the intake: the mailrouter modules it enters, in order.

Runs the real Intake on a fresh SQLite database (no IMAP, no SMTP) over a new customer mail and
then a reply to it, tracing every call from one mailrouter module into another (sys.setprofile;
the data modules' constructors and enums left out). Prints each journey as the modules entered in
order, how many stops it makes and how many of them go back into a module it had already left,
then the size of every module.
Usage: .venv/bin/python -m bench.journey
"""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Callable
from itertools import pairwise
from pathlib import Path
from types import FrameType
from typing import Any

from mailrouter.config import load_config
from mailrouter.daemon import load
from mailrouter.db import open_database
from mailrouter.intake import Intake
from mailrouter.plan import Origin
from tests.messages import make_mail, new_message_id
from tests.unit.conftest import CONFIG

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "mailrouter"


def _module(frame: FrameType) -> str | None:
    path = Path(frame.f_code.co_filename)
    return path.stem if path.parent == PACKAGE else None


# Types and vocabulary, not stops: their constructors and enum lookups run everywhere.
DATA_MODULES = {"vocabulary", "models", "config", "plan", "errors"}


def trace(run: Callable[[], Any]) -> list[str]:
    """The mailrouter modules run() enters: a stop for each call from one module into another,
    data modules left out, a module calling itself or its own callees back not counted twice."""
    stops: list[str] = []
    stack: list[str | None] = []

    def profile(frame: FrameType, event: str, _: object) -> None:
        if event == "call":
            module = _module(frame)
            if module in DATA_MODULES:
                module = None
            caller = next((m for m in reversed(stack) if m is not None), None)
            stack.append(module)
            if module is not None and module != caller and (not stops or stops[-1] != module):
                stops.append(module)
        elif event == "return" and stack:
            stack.pop()

    sys.setprofile(profile)
    try:
        run()
    finally:
        sys.setprofile(None)
    return stops


def describe(name: str, stops: list[str]) -> str:
    left: set[str] = set()
    returns = 0
    for previous, module in pairwise(stops):
        left.add(previous)
        returns += module in left
    return (
        f"{name}: {len(stops)} stops in {len(set(stops))} modules, {returns} back in a module it had left\n"
        f"  {' > '.join(stops)}"
    )


def main() -> None:
    with tempfile.TemporaryDirectory() as directory:
        base = Path(directory)
        (base / "rules").mkdir()
        secret = base / "hr-secret"
        secret.write_text("hr-password\n")
        os.environ.setdefault("TEST_IT_PASSWORD", "it-password")
        os.environ.setdefault("TEST_REPLY_SECRET", "bench-journey-reply-secret-of-32-bytes-or-more")
        config = base / "config.toml"
        config.write_text(CONFIG.format(db=base / "db.sqlite", templates=ROOT / "templates", secret=secret))
        loaded = load(load_config(config))
        intake = Intake(
            loaded.config, loaded.rules, loaded.templates, open_database(loaded.config), loaded.agents
        )
        first_id = new_message_id()
        first = make_mail(
            sender="Kari Nordmann <kari@example.org>",
            to="it-support@example.test",
            subject="Skrivaren skriver inte",
            body="Hej, skrivaren på plan 3 skriver inte ut något sedan i morse.",
            message_id=first_id,
        )
        intake.process(make_mail(subject="warm-up", message_id=new_message_id()), Origin("it", 1, 1))
        new_case = trace(lambda: intake.process(first, Origin("it", 1, 2)))
        reply = make_mail(
            sender="Kari Nordmann <kari@example.org>",
            to="it-support@example.test",
            subject="Re: Skrivaren skriver inte",
            body="Den skriver fortfarande inte.",
            message_id=new_message_id(),
            headers={"In-Reply-To": first_id, "References": first_id},
        )
        follow_up = trace(lambda: intake.process(reply, Origin("it", 1, 3)))
    print(describe("a new case", new_case))
    print(describe("a customer's follow-up", follow_up))
    print("module sizes (lines):")
    sizes = sorted(((len(p.read_text().splitlines()), p.stem) for p in PACKAGE.glob("*.py")), reverse=True)
    for lines, name in sizes:
        print(f"  {name:<14} {lines:5d}")


if __name__ == "__main__":
    main()
