"""Jinja2 templates per department and language: <department>/<name>.<language>.txt.j2 (+ .html.j2).

A missing language falls back to the next one asked for, then English; a template a department
does not have comes from _default/. A missing HTML part just means a plain-text mail.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jinja2 import (
    Environment,
    FileSystemLoader,
    StrictUndefined,
    TemplateNotFound,
    select_autoescape,
)
from jinja2 import (
    TemplateError as JinjaError,
)

from mailrouter.errors import TemplateError

DEFAULT = "_default"


@dataclass(frozen=True)
class Rendered:
    text: str
    html: str | None


class Templates:
    def __init__(self, directory: Path) -> None:
        if not directory.is_dir():
            raise TemplateError(f"{directory}: templates directory not found")
        self.directory = directory
        self._env = Environment(
            loader=FileSystemLoader(directory),
            autoescape=select_autoescape(enabled_extensions=("html.j2",), default=False),
            undefined=StrictUndefined,
            keep_trailing_newline=True,
        )

    def render(
        self, department: str, name: str, languages: Iterable[str], context: dict[str, Any]
    ) -> Rendered:
        text_name = self.text_file(department, name, languages)
        html_name = text_name.removesuffix(".txt.j2") + ".html.j2"  # same language as the text
        try:
            text = self._env.get_template(text_name).render(context)
            html = None
            if (self.directory / html_name).is_file():
                html = self._env.get_template(html_name).render(context)
        except TemplateNotFound as exc:
            raise TemplateError(f"{self.directory}: template {exc.name} not found") from exc
        except JinjaError as exc:
            raise TemplateError(f"{self.directory}: {text_name}: {exc}") from exc
        return Rendered(text=text, html=html)

    def text_file(self, department: str, name: str, languages: Iterable[str]) -> str:
        """The text part `render` would use: the first language asked for (then English) that
        the department has, else that _default/ has."""
        languages = list(dict.fromkeys([*languages, "en"]))
        tried = [f"{folder}/{name}.{lang}.txt.j2" for folder in (department, DEFAULT) for lang in languages]
        found = next((t for t in tried if (self.directory / t).is_file()), None)
        if found is None:
            raise TemplateError(f"{self.directory}: none of {', '.join(tried)} exists")
        return found

    def words(self, language: str) -> dict[str, Any]:
        """The reports' words in a language (`w` of _default/_report.<language>.j2): the one
        catalogue the report mail, its charts and the dashboard all read."""
        name = f"{DEFAULT}/_report.{language}.j2"
        try:
            module = self._env.get_template(name).module
        except TemplateNotFound as exc:
            raise TemplateError(f"{self.directory}: template {exc.name} not found") from exc
        except JinjaError as exc:
            raise TemplateError(f"{self.directory}: {name}: {exc}") from exc
        return dict(getattr(module, "w"))  # noqa: B009  (a template's export, not an attribute of ours)

    def files(self) -> list[str]:
        """Every template file, relative to the directory: <department or _default>/<name>.<lang>.<part>.j2"""
        return sorted(p.relative_to(self.directory).as_posix() for p in self.directory.rglob("*.j2"))

    def render_file(self, relative: str, context: dict[str, Any]) -> str | None:
        """One file rendered, for `mailrouter check`; the problem (with its line) when it fails."""
        try:
            self._env.get_template(relative).render(context)
        except JinjaError as exc:
            line = getattr(exc, "lineno", None)
            return f"{self.directory / relative}{f':{line}' if line else ''}: {exc}"
        return None
