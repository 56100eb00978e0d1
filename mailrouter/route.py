"""route: TOML rules decide department, category, priority, group/assignee, tags and template.

Rules are read from every *.toml file in the rules directory, in file-name order, each file's
[[rule]] tables in order. Every condition of a rule must hold; a list means any of its values.
The first matching rule decides, unless it says `continue = true`: then later matching rules
apply too, overriding what they set again and adding tags.
"""

from __future__ import annotations

import functools
import re
import tomllib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any, Literal, cast

import re2
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from mailrouter.config import MailboxSettings
from mailrouter.errors import RuleError
from mailrouter.language import detect_language
from mailrouter.parse import Address, Inbound

Priority = Literal["low", "normal", "high", "urgent"]
OneOrMany = str | list[str]


def _as_list(value: OneOrMany | None) -> list[str]:
    if value is None:
        return []
    return [value] if isinstance(value, str) else list(value)


class Conditions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    mailbox: OneOrMany | None = None
    sender: OneOrMany | None = Field(default=None, alias="from")
    from_domain: OneOrMany | None = None
    to: OneOrMany | None = None
    cc: OneOrMany | None = None
    subject_contains: OneOrMany | None = None
    subject_regex: OneOrMany | None = None
    body_contains: OneOrMany | None = None
    body_regex: OneOrMany | None = None
    header: dict[str, OneOrMany] | None = None
    header_regex: dict[str, OneOrMany] | None = None

    @field_validator("subject_regex", "body_regex")
    @classmethod
    def _compiles(cls, value: OneOrMany | None) -> OneOrMany | None:
        for pattern in _as_list(value):
            _compile(pattern)
        return value

    @field_validator("header_regex")
    @classmethod
    def _header_compiles(cls, value: dict[str, OneOrMany] | None) -> dict[str, OneOrMany] | None:
        for name, patterns in (value or {}).items():
            for pattern in _as_list(patterns):
                try:
                    _compile(pattern)
                except ValueError as exc:
                    raise ValueError(f"{name}: {exc}") from None
        return value


class Actions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    department: str | None = None
    category: str | None = None
    priority: Priority | None = None
    group: str | None = None
    assignee: str | None = None
    tags: list[str] = []
    template: str | None = None
    acknowledge: bool | None = None
    sla: str | None = None  # an [sla.<name>] policy of config.toml
    sensitive: bool | None = None  # health data and the like: agents get an excerpt only


class Rule(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    name: str = Field(min_length=1)
    description: str = ""
    when: Conditions = Conditions()
    then: Actions = Actions()
    continue_: bool = Field(default=False, alias="continue")
    source: str = ""


class _RuleFile(BaseModel):
    model_config = ConfigDict(extra="forbid")
    rule: list[Rule] = []


# How much of a body the regexes of rules read: the default of [limits] regex_text_chars.
REGEX_CHARS = 64 * 1024
_RE2_OPTIONS = re2.Options()
_RE2_OPTIONS.case_sensitive = False
_RE2_OPTIONS.log_errors = False  # the RuleError says it, naming the file and the rule


@functools.cache
def _compile(pattern: str) -> re2._Regexp[str]:
    """Rules' patterns run on text any sender writes, so they run on RE2, whose time is linear in
    the text for every pattern: with a backtracking engine `^(\\w+\\s?)*$` takes seconds on a
    25-character subject. RE2 has no backreferences or lookaround; such a pattern is refused."""
    try:
        return re2.compile(pattern, _RE2_OPTIONS)
    except re2.error as exc:
        reason = exc.args[0].decode() if exc.args and isinstance(exc.args[0], bytes) else str(exc)
        try:
            re.compile(pattern)
        except re.error:
            raise ValueError(f"invalid regular expression {pattern!r}: {reason}") from None
        raise ValueError(
            f"regular expression {pattern!r} needs what RE2 cannot do ({reason}): rules run on RE2, "
            "which has no backreferences or lookaround, so that no message can make a pattern slow"
        ) from None


def load_rules(
    directory: Path, departments: frozenset[str], policies: frozenset[str] | None = None
) -> tuple[Rule, ...]:
    """`policies`: the SLA policies a rule may name (None: not checked). Every problem of every
    file is found before any is raised: the RuleError has one line each, naming file, rule and key."""
    if not directory.is_dir():
        raise RuleError(f"{directory}: rules directory not found")
    rules: list[Rule] = []
    names: dict[str, str] = {}
    problems: list[str] = []
    for path in sorted(directory.glob("*.toml")):
        try:
            document = tomllib.loads(path.read_text(encoding="utf-8"))
            parsed = _RuleFile.model_validate(document)
        except tomllib.TOMLDecodeError as exc:
            problems.append(f"{path}: not valid TOML: {exc}")
            continue
        except ValidationError as exc:
            problems.extend(_describe(path, document, exc))
            continue
        for rule in parsed.rule:
            where = f"{path}: rule {rule.name!r}"
            if rule.name in names:
                problems.append(f"{where}: the name is already used in {names[rule.name]}")
            if rule.then.department is not None and rule.then.department not in departments:
                known = ", ".join(sorted(departments))
                problems.append(f"{where}: then.department {rule.then.department!r} is not one of: {known}")
            if policies is not None and rule.then.sla is not None and rule.then.sla not in policies:
                known = ", ".join(sorted(policies)) or "none are configured"
                problems.append(f"{where}: then.sla {rule.then.sla!r} is not an [sla] policy ({known})")
            names[rule.name] = str(path)
            rules.append(rule.model_copy(update={"source": path.name}))
    if problems:
        raise RuleError("\n".join(problems))
    return tuple(rules)


def _describe(path: Path, document: dict[str, Any], error: ValidationError) -> list[str]:
    lines = []
    for item in error.errors():
        location = list(item["loc"])
        if len(location) >= 2 and location[0] == "rule" and isinstance(location[1], int):
            entry = document.get("rule", [])[location[1]]
            name = entry.get("name", f"#{location[1] + 1}") if isinstance(entry, dict) else "?"
            location = [f"rule {name!r}", *location[2:]]
        key = ".".join(str(part) for part in location)
        message = "unknown key" if item["type"] == "extra_forbidden" else item["msg"]
        lines.append(f"{path}: {key}: {message}")
    return lines


@dataclass(frozen=True)
class RuleVerdict:
    rule: str
    source: str
    matched: bool
    reasons: tuple[str, ...]
    skipped: bool = False


@dataclass(frozen=True)
class Decision:
    department: str
    category: str
    priority: str
    group: str
    assignee: str
    tags: tuple[str, ...]
    template: str | None  # None: no acknowledgement
    language: str
    matched_rules: tuple[str, ...]
    verdicts: tuple[RuleVerdict, ...]
    sla: str | None = None  # a rule's SLA policy; None: the priority's or the department's
    sensitive: bool = False

    @property
    def explanation(self) -> str:
        if not self.matched_rules:
            return f"no rule matched: the mailbox's department {self.department} applies"
        matched = [v for v in self.verdicts if v.matched]
        return "; ".join(f"rule {v.rule!r} ({v.source}) matched: {', '.join(v.reasons)}" for v in matched)


@dataclass(frozen=True)
class _Mail:
    """What conditions look at, read from the message once for all the rules."""

    mailbox: str
    sender: str
    subject: str
    subject_folded: str
    body: str
    body_folded: str
    body_head: str  # what body_regex reads
    to: tuple[Address, ...]
    cc: tuple[Address, ...]
    headers: dict[str, tuple[str, ...]]

    @classmethod
    def of(cls, inbound: Inbound, mailbox: str, regex_chars: int = REGEX_CHARS) -> _Mail:
        return cls(
            mailbox=mailbox,
            sender=inbound.sender.address if inbound.sender else "",
            subject=inbound.subject,
            subject_folded=inbound.subject.casefold(),
            body=inbound.text,
            body_folded=inbound.text.casefold(),
            body_head=inbound.text[:regex_chars],
            to=inbound.to,
            cc=inbound.cc,
            headers=inbound.headers,
        )


def _conditions(when: Conditions, mail: _Mail) -> Iterator[tuple[str, list[str], Callable[[str], object]]]:
    """The conditions a rule sets, in order: a label, the values (any may hold), the test of one."""
    if when.mailbox is not None:
        yield "mailbox is", _as_list(when.mailbox), lambda w: w == mail.mailbox
    if when.sender is not None:
        yield "from matches", _as_list(when.sender), lambda w: fnmatchcase(mail.sender, w.lower())
    if when.from_domain is not None:
        yield "sender domain is", _as_list(when.from_domain), lambda w: _in_domain(mail.sender, w.lower())
    if when.to is not None:
        yield "to matches", _as_list(when.to), lambda w: _any_address(mail.to, w)
    if when.cc is not None:
        yield "cc matches", _as_list(when.cc), lambda w: _any_address(mail.cc, w)
    if when.subject_contains is not None:
        yield (
            "subject contains",
            _as_list(when.subject_contains),
            lambda w: w.casefold() in mail.subject_folded,
        )
    if when.subject_regex is not None:
        yield "subject matches", _as_list(when.subject_regex), lambda w: _compile(w).search(mail.subject)
    if when.body_contains is not None:
        yield "body contains", _as_list(when.body_contains), lambda w: w.casefold() in mail.body_folded
    if when.body_regex is not None:
        yield "body matches", _as_list(when.body_regex), lambda w: _compile(w).search(mail.body_head)
    # The casts tell mypy the lambdas' type: it cannot infer a lambda with a default argument.
    for name, wanted in (when.header or {}).items():
        folded = [v.casefold() for v in mail.headers.get(name.lower(), ())]
        yield (
            f"header {name} contains",
            _as_list(wanted),
            cast(Callable[[str], object], lambda w, vs=folded: any(w.casefold() in v for v in vs)),
        )
    for name, wanted in (when.header_regex or {}).items():
        values = mail.headers.get(name.lower(), ())
        yield (
            f"header {name} matches",
            _as_list(wanted),
            cast(Callable[[str], object], lambda w, vs=values: any(_compile(w).search(v) for v in vs)),
        )


def _match_rule(rule: Rule, mail: _Mail, *, explain: bool) -> RuleVerdict:
    """With explain, every condition is checked, so that `rules explain` can say all of what held
    and what did not; otherwise the first condition that fails decides."""
    results: list[tuple[bool, str]] = []
    for label, wanted, holds in _conditions(rule.when, mail):
        if not wanted:  # an empty list sets no condition
            continue
        hit = next((w for w in wanted if holds(w)), None)
        results.append(
            (hit is not None, f"{label} {hit!r}" if hit is not None else f"{label} none of {wanted}")
        )
        if hit is None and not explain:
            break
    if not results:
        return RuleVerdict(rule.name, rule.source, True, ("no conditions: matches every message",))
    matched = all(ok for ok, _ in results)
    reasons = tuple(reason for ok, reason in results if ok == matched)
    return RuleVerdict(rule.name, rule.source, matched, reasons)


def _in_domain(address: str, domain: str) -> bool:
    host = address.rpartition("@")[2]
    return host == domain or host.endswith("." + domain)


def _any_address(addresses: tuple[Address, ...], pattern: str) -> bool:
    return any(fnmatchcase(a.address, pattern.lower()) for a in addresses)


def route(
    inbound: Inbound,
    mailbox: str,
    mailboxes: dict[str, MailboxSettings],
    rules: tuple[Rule, ...],
    *,
    explain: bool = False,
    regex_chars: int = REGEX_CHARS,
) -> Decision:
    """explain: every condition of every rule is checked and reported, as `rules explain` shows
    them; without it a rule's verdict stops at its first failed condition, which is all the
    routing itself needs (a rule that does not match says why, but not every why). Regexes read
    only the first regex_chars characters of the body."""
    mail = _Mail.of(inbound, mailbox, regex_chars)
    department = mailbox
    fields: dict[str, str] = {"category": "", "priority": "normal", "group": "", "assignee": ""}
    tags: list[str] = []
    template: str | None = None
    acknowledge: bool | None = None
    sla: str | None = None
    sensitive: bool | None = None
    matched: list[str] = []
    verdicts: list[RuleVerdict] = []
    stopped = False
    for rule in rules:
        if stopped:
            verdicts.append(
                RuleVerdict(rule.name, rule.source, False, ("an earlier rule decided",), skipped=True)
            )
            continue
        verdict = _match_rule(rule, mail, explain=explain)
        verdicts.append(verdict)
        if not verdict.matched:
            continue
        matched.append(rule.name)
        actions = rule.then
        department = actions.department or department
        for key in fields:
            value = getattr(actions, key)
            if value is not None:
                fields[key] = value
        tags.extend(t for t in actions.tags if t not in tags)
        template = actions.template or template
        acknowledge = actions.acknowledge if actions.acknowledge is not None else acknowledge
        sla = actions.sla or sla
        sensitive = actions.sensitive if actions.sensitive is not None else sensitive
        stopped = not rule.continue_

    settings = mailboxes[department]
    if acknowledge is None:
        acknowledge = settings.acknowledge
    if sensitive is None:  # a rule's word first; else the department's, or its category's
        sensitive = settings.sensitive or fields["category"] in settings.sensitive_categories
    return Decision(
        department=department,
        tags=tuple(tags),
        template=(template or settings.template) if acknowledge else None,
        language=detect_language(f"{inbound.subject}\n{inbound.text}", settings.language),
        matched_rules=tuple(matched),
        verdicts=tuple(verdicts),
        sla=sla,
        sensitive=sensitive,
        **fields,
    )
