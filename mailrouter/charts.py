"""charts: the report's pictures as PNG bytes, from plain figures. The report mail (inline
images) and the dashboard (served PNGs) draw with these same functions.

matplotlib's object API (Figure + the Agg canvas), never pyplot: no global figure state, so the
dashboard can draw in several threads at once, and no display is needed. Words on a chart come
in the report's language (its catalogue, the report mail's and the dashboard's words); an empty
chart says so rather than showing bare axes.
"""

from __future__ import annotations

import io
import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

WIDTH, HEIGHT, DPI = 6.0, 2.6, 200  # 1200 x 520 pixels: sharp at 600 px in a mail and on a wall
_CURRENT, _PREVIOUS, _TARGET, _GRID = "#2563eb", "#9ca3af", "#dc2626", "#e5e7eb"


@dataclass(frozen=True)
class Words:
    """A chart's few words, in the report's language."""

    current: str
    previous: str
    target: str
    hours: str
    no_cases: str
    weekdays: tuple[str, ...]  # Monday first
    ages: tuple[str, ...]  # kpi.AGE_BANDS in words

    @classmethod
    def of(cls, words: Mapping[str, Any]) -> Words:
        """From the reports' catalogue of a language (Templates.words)."""
        return cls(
            words["chart_current"],
            words["chart_previous"],
            words["chart_target"],
            words["chart_hours"],
            words["no_cases"],
            tuple(words["weekdays"]),
            tuple(words["ages"]),
        )


def _figure() -> tuple[Figure, Axes]:
    # matplotlib is imported once a chart is drawn: imported with this module it cost every
    # start of the daemon and of every command 1.4 s (`mailrouter report` included).
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(WIDTH, HEIGHT), dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    axes.spines[["top", "right"]].set_visible(False)
    axes.tick_params(labelsize=8)
    return figure, axes


def _whole_numbers() -> MaxNLocator:
    from matplotlib.ticker import MaxNLocator

    return MaxNLocator(integer=True)


def _png(figure: Figure) -> bytes:
    out = io.BytesIO()
    figure.savefig(out, format="png", dpi=DPI, facecolor="white")
    return out.getvalue()


def _nothing(words: Words) -> bytes:
    """The chart of a period without cases: one readable line instead of empty axes."""
    figure, axes = _figure()
    axes.set_axis_off()
    axes.text(0.5, 0.5, words.no_cases, ha="center", va="center", fontsize=16, color="#6b7280")
    return _png(figure)


def volume(days: Sequence[date], current: Sequence[int], previous: Sequence[int], words: Words) -> bytes:
    """New cases per day, with the same days of the previous period (shifted onto these) behind."""
    if not any(current) and not any(previous):
        return _nothing(words)
    figure, axes = _figure()
    positions = range(len(days))
    axes.bar(positions, previous, width=0.8, color=_PREVIOUS, label=words.previous)
    axes.bar(positions, current, width=0.5, color=_CURRENT, label=words.current)
    step = max(1, len(days) // 10)
    axes.set_xticks(list(positions)[::step], [d.strftime("%d.%m") for d in days][::step])
    axes.yaxis.set_major_locator(_whole_numbers())
    axes.grid(axis="y", color=_GRID)
    axes.set_axisbelow(True)
    axes.legend(fontsize=8, frameon=False)
    return _png(figure)


def answer_times(edges: Sequence[float], counts: Sequence[int], target: float | None, words: Words) -> bytes:
    """How many cases got their first answer within each band of hours (`edges` one longer than
    `counts`, the last band open-ended), with the SLA target as a line."""
    if not any(counts):
        return _nothing(words)
    figure, axes = _figure()
    positions = range(len(counts))
    labels = [f"{_hours(lo)}–{_hours(hi)}" for lo, hi in itertools.pairwise(edges)]
    labels[-1] = f"{_hours(edges[-2])}+"
    colors = [_TARGET if target is not None and lo >= target else _CURRENT for lo in edges[:-1]]
    axes.bar(positions, counts, color=colors)
    axes.set_xticks(list(positions), labels)
    axes.set_xlabel(words.hours, fontsize=8)
    axes.yaxis.set_major_locator(_whole_numbers())
    axes.grid(axis="y", color=_GRID)
    axes.set_axisbelow(True)
    if target is not None:
        # The target as a position between the bands' positions, so it falls where its hours are.
        band = next((i for i, hi in enumerate(edges[1:]) if target < hi), len(counts) - 1)
        lo, hi = edges[band], edges[band + 1]
        share = (target - lo) / (hi - lo) if hi > lo else 0.0
        axes.axvline(band - 0.5 + share, color=_TARGET, linestyle="--", linewidth=1.2)
        label = f"{words.target} {_hours(target)} h"
        axes.text(band - 0.45 + share, max(counts), label, color=_TARGET, fontsize=8)
    return _png(figure)


def _hours(value: float) -> str:
    return f"{value:g}"


def backlog(bands: Sequence[str], counts: Sequence[int], words: Words) -> bytes:
    """Open cases by how long they have been open, the youngest band on top."""
    if not any(counts):
        return _nothing(words)
    figure, axes = _figure()
    bars = axes.barh(list(bands), counts, color=_CURRENT)
    axes.bar_label(bars, fontsize=8, padding=2)
    axes.invert_yaxis()
    axes.xaxis.set_major_locator(_whole_numbers())
    axes.grid(axis="x", color=_GRID)
    axes.set_axisbelow(True)
    return _png(figure)


def busiest_hours(by_weekday_hour: Sequence[Sequence[int]], words: Words) -> bytes:
    """New cases by weekday (rows, Monday first) and hour of arrival (24 columns), as a heat map."""
    if not any(any(row) for row in by_weekday_hour):
        return _nothing(words)
    figure, axes = _figure()
    image = axes.imshow(by_weekday_hour, aspect="auto", cmap="Blues", interpolation="nearest")
    axes.set_yticks(range(7), list(words.weekdays))
    axes.set_xticks(range(0, 24, 2), [f"{h:02d}" for h in range(0, 24, 2)])
    axes.spines[["left", "bottom"]].set_visible(False)
    colorbar = figure.colorbar(image, ax=axes, fraction=0.04, pad=0.01)
    colorbar.ax.tick_params(labelsize=7)
    colorbar.ax.yaxis.set_major_locator(_whole_numbers())
    return _png(figure)
