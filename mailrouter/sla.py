"""sla: which policy a case gets, and when each of its targets falls due, in business time.

Pure: config and instants in, columns out. casework calls it as a case is opened, changes
priority, waits on the customer and hears back; the scheduler compares the due times with now.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from mailrouter.config import Config, SlaPolicy

PRIORITIES = ("low", "normal", "high", "urgent")


class Target(StrEnum):
    FIRST_RESPONSE = "first-response"
    NEXT_RESPONSE = "next-response"
    RESOLUTION = "resolution"

    @property
    def column(self) -> str:
        """The stem of the case's columns: first_response_due, warned_first_response_at …"""
        return self.value.replace("-", "_")


class Stage(StrEnum):
    WARNING = "warning"
    BREACH = "breach"


@dataclass(frozen=True)
class Choice:
    policy: str  # "" for none
    why: str


def choose(config: Config, rule_policy: str | None, department: str, priority: str) -> Choice:
    """A rule's choice first; then the priority's policy, so that urgent cases are held to the
    urgent targets in every department; then the department's default."""
    if rule_policy:
        return Choice(rule_policy, f"rule set sla {rule_policy}")
    by_priority = config.file.sla_by_priority.get(priority)
    if by_priority:
        return Choice(by_priority, f"priority {priority} has sla {by_priority}")
    default = config.mailboxes[department].sla
    if default:
        return Choice(default, f"department {department}'s default sla {default}")
    return Choice("", "no sla policy applies")


def rechoose(config: Config, current: str, department: str, before: str, after: str) -> Choice:
    """After a priority change: the new priority's policy, else the department's default in place
    of a policy the old priority gave; a rule's or the department's choice stays."""
    by_priority = config.file.sla_by_priority
    if by_priority.get(after):
        return Choice(by_priority[after], f"priority {after} has sla {by_priority[after]}")
    if current and current == by_priority.get(before):
        default = config.mailboxes[department].sla
        return Choice(default, f"priority {after} has no sla of its own: the department's default")
    return Choice(current, f"sla {current or 'none'} stays")


def policy(config: Config, name: str) -> SlaPolicy | None:
    return config.file.sla.get(name) if name else None


def _due(config: Config, department: str, start: datetime, span: timedelta) -> datetime:
    return config.calendar(department).add(start, span)


def clock(
    config: Config, department: str, name: str, opened: datetime, paused: timedelta
) -> dict[str, datetime | None]:
    """The first-response and resolution columns of a case opened at `opened`: due after the
    target's business time plus the business time it spent waiting on the customer."""
    chosen = policy(config, name)
    if chosen is None:
        return {
            "first_response_due": None,
            "first_response_warn": None,
            "resolution_due": None,
            "resolution_warn": None,
        }
    columns: dict[str, datetime | None] = {}
    for target, span in (
        (Target.FIRST_RESPONSE, chosen.first_response),
        (Target.RESOLUTION, chosen.resolution),
    ):
        columns[f"{target.column}_due"] = _due(config, department, opened, span + paused)
        columns[f"{target.column}_warn"] = _due(config, department, opened, span * chosen.warn_at + paused)
    return columns


def next_response(
    config: Config, department: str, name: str, replied: datetime
) -> dict[str, datetime | None]:
    """The next-response columns after a customer's reply (none where the policy has no such target)."""
    chosen = policy(config, name)
    if chosen is None or chosen.next_response is None:
        return {}
    span = chosen.next_response
    return {
        "next_response_due": _due(config, department, replied, span),
        "next_response_warn": _due(config, department, replied, span * chosen.warn_at),
        "warned_next_response_at": None,
        "breached_next_response_at": None,
    }


def paused_for(config: Config, department: str, since: datetime, until: datetime) -> timedelta:
    return config.calendar(department).elapsed(since, until)


def working_time(
    config: Config,
    department: str,
    opened: datetime,
    at: datetime,
    paused_seconds: float,
    paused_at: datetime | None,
) -> timedelta:
    """Business time from opening to `at` less the business time spent waiting on the customer
    (a wait still going on included): what a target's span is held against."""
    paused = timedelta(seconds=paused_seconds)
    if paused_at is not None:
        paused += paused_for(config, department, paused_at, at)
    return config.calendar(department).elapsed(opened, at) - paused


def met(config: Config, name: str, target: Target, spent: timedelta) -> bool | None:
    """Whether `spent` business time is within the policy's span for the target; None without a
    policy (or a target it has not)."""
    chosen = policy(config, name)
    if chosen is None:
        return None
    span = {
        Target.FIRST_RESPONSE: chosen.first_response,
        Target.NEXT_RESPONSE: chosen.next_response,
        Target.RESOLUTION: chosen.resolution,
    }[target]
    return None if span is None else spent <= span


def remaining(config: Config, department: str, due: datetime, now: datetime) -> timedelta:
    """Business time left until `due`; negative: the overshoot."""
    return config.calendar(department).elapsed(now, due)


def raised(priority: str) -> str:
    """One step up; urgent stays urgent."""
    index = PRIORITIES.index(priority) if priority in PRIORITIES else 1
    return PRIORITIES[min(index + 1, len(PRIORITIES) - 1)]


def duration_text(span: timedelta) -> str:
    """ "3h 05m", "2d 1h", "45s": short enough for a subject line and `mailrouter show`."""
    seconds = int(abs(span).total_seconds())
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, seconds = divmod(rest, 60)
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {minutes:02d}m"
    if minutes:
        return f"{minutes}m {seconds:02d}s"
    return f"{seconds}s"


@dataclass(frozen=True)
class Standing:
    """Where one target of a case stands, in business time: for `mailrouter show`."""

    target: Target
    due: datetime
    met_at: datetime | None
    left: timedelta  # to the due time from when it was met, the clock stopped, or now; < 0: overshot
    paused: bool

    def text(self) -> str:
        margin = sla_margin(self.left)
        if self.met_at is not None:
            return f"met {self.met_at:%Y-%m-%d %H:%M} UTC, {margin}"
        return margin + (" (the clock stands still: waiting on the customer)" if self.paused else "")


def sla_margin(left: timedelta) -> str:
    if left >= timedelta(0):
        return f"{duration_text(left)} of business time left"
    return f"overshot by {duration_text(left)} of business time"


def standing(
    config: Config,
    department: str,
    target: Target,
    due: datetime,
    met_at: datetime | None,
    paused_at: datetime | None,
    now: datetime,
) -> Standing:
    reference = met_at or paused_at or now
    return Standing(target, due, met_at, remaining(config, department, due, reference), paused_at is not None)
