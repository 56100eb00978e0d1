"""What an agent's reply says: commands on its first lines, then the answer for the customer.

Commands stand on their own lines at the very top (`#close`, `#assign agent2@…`); the first
other line ends them. The quoted history that mail clients append is cut off (mailrouter.quoting),
so the customer gets the answer, not the whole thread again.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

from mailrouter.quoting import strip_quoted_history

PRIORITIES = ("low", "normal", "high", "urgent")
_COMMAND_LINE = re.compile(r"^#([A-Za-z]+)\b[ \t]*(.*)$")
_DURATION = re.compile(r"^(\d+)\s*(m|min|h|d|w)$", re.IGNORECASE)
_UNITS = {"m": "minutes", "min": "minutes", "h": "hours", "d": "days", "w": "weeks"}


@dataclass(frozen=True)
class Command:
    name: str
    argument: str = ""

    def __str__(self) -> str:
        return f"#{self.name}{' ' + self.argument if self.argument else ''}"


@dataclass(frozen=True)
class AgentReply:
    commands: tuple[Command, ...]
    answer: str  # for the customer (or the note's text): commands and quoted history removed
    errors: tuple[str, ...]

    @property
    def is_note(self) -> bool:
        return any(c.name == "note" for c in self.commands)


def parse_duration(text: str) -> timedelta | None:
    match = _DURATION.match(text.strip())
    if match is None:
        return None
    return timedelta(**{_UNITS[match[2].lower()]: int(match[1])})


def read_agent_reply(text: str, assignable: frozenset[str]) -> AgentReply:
    lines = text.replace("\r\n", "\n").split("\n")
    commands: list[Command] = []
    errors: list[str] = []
    index = 0
    while index < len(lines):
        line = lines[index].strip()
        if not line and not commands:
            index += 1
            continue
        match = _COMMAND_LINE.match(line)
        if match is None:
            break
        command = Command(match[1].lower(), match[2].strip())
        problem = _check(command, assignable)
        if problem:
            errors.append(f"{command}: {problem}")
        commands.append(command)
        index += 1
    answer = strip_quoted_history("\n".join(lines[index:]))
    return AgentReply(tuple(commands), answer, tuple(errors))


def _no_argument(argument: str, _assignable: frozenset[str]) -> str | None:
    return f"takes no argument, got {argument!r}" if argument else None


def _anything(_argument: str, _assignable: frozenset[str]) -> str | None:
    return None


def _assignee(argument: str, assignable: frozenset[str]) -> str | None:
    if argument.lower() in assignable:
        return None
    return f"{argument!r} is neither an agent nor a group" if argument else "whom? e.g. #assign it-agents"


def _priority(argument: str, _assignable: frozenset[str]) -> str | None:
    return None if argument.lower() in PRIORITIES else f"priority must be one of {', '.join(PRIORITIES)}"


def _tag(argument: str, _assignable: frozenset[str]) -> str | None:
    return None if re.fullmatch(r"[\w.-]+", argument) else "one tag, letters, digits, '-', '_' or '.'"


def _duration(argument: str, _assignable: frozenset[str]) -> str | None:
    return None if parse_duration(argument) else "a duration like 30m, 4h, 2d or 1w"


def _address(argument: str, _assignable: frozenset[str]) -> str | None:
    return None if re.fullmatch(r"[^@\s]+@[^@\s]+", argument) else "whom? e.g. #uncc kari@kunde.example"


@dataclass(frozen=True)
class CommandSpec:
    name: str
    usage: str
    help: str
    check: Callable[[str, frozenset[str]], str | None]  # the argument's problem, or None


# Every command an agent can give, in the order the help lists them; casework says what each does.
COMMANDS = (
    CommandSpec("note", "#note", "internal: recorded on the case, never sent to the customer", _anything),
    CommandSpec("close", "#close", "close the case", _no_argument),
    CommandSpec(
        "resolve", "#resolve", "resolved: the customer may still reopen it by replying", _no_argument
    ),
    CommandSpec("pending", "#pending", "waiting for the customer", _no_argument),
    CommandSpec(
        "assign", "#assign <agent address or group>", "give the case to an agent or group", _assignee
    ),
    CommandSpec("priority", "#priority <low|normal|high|urgent>", "change the priority", _priority),
    CommandSpec("tag", "#tag <tag>", "add a tag", _tag),
    CommandSpec("uncc", "#uncc <address>", "stop copying a participant on the answers", _address),
    CommandSpec("followup", "#followup <30m|4h|2d|1w>", "remind whoever has the case then", _duration),
    CommandSpec("show", "#show", "the case's mail, to you alone (a sensitive case's)", _no_argument),
)
_BY_NAME = {spec.name: spec for spec in COMMANDS}
COMMAND_HELP = "Commands stand on their own lines at the top of your reply:\n" + "".join(
    f"  {spec.usage:<36}{spec.help}\n" for spec in COMMANDS
)


def _check(command: Command, assignable: frozenset[str]) -> str | None:
    spec = _BY_NAME.get(command.name)
    if spec is None:
        return f"unknown command (known: {' '.join('#' + s.name for s in COMMANDS)})"
    return spec.check(command.argument, assignable)
