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
        languages = list(dict.fromkeys([*languages, "en"]))
        tried = [f"{folder}/{name}.{lang}.txt.j2" for folder in (department, DEFAULT) for lang in languages]
        text_name = next((t for t in tried if (self.directory / t).is_file()), None)
        if text_name is None:
            raise TemplateError(f"{self.directory}: none of {', '.join(tried)} exists")
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

    def check(self) -> list[str]:
        """Syntax errors in every template file, for `mailrouter check`."""
        problems = []
        for path in sorted(self.directory.rglob("*.j2")):
            relative = path.relative_to(self.directory).as_posix()
            try:
                self._env.get_template(relative)
            except JinjaError as exc:
                line = getattr(exc, "lineno", None)
                problems.append(f"{path}{f':{line}' if line else ''}: {exc}")
        return problems
