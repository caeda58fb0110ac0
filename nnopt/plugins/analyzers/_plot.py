"""Small matplotlib helpers shared by analyzers and stages (imported lazily, inside functions).

Every figure is drawn in ``nnopt.core.figure_style`` (palette, grid, mathtext fontset, 150 dpi)
and written through its ``save`` (PNG, plus SVG/PDF when ``--figure-format`` asks): no plot
calls ``savefig`` or picks a dpi itself. Figures are drawn with the object-oriented API, never
through ``pyplot``: no global backend is switched, no figure registry grows, and plotting works
without a display and from any thread. Log axes are labelled in plain text (``0.01``,
``1e-05``), not mathtext (``10^{-2}``): they read as numbers, and a figure with no other math
skips building the mathtext parser (about 30 ms, measured, matplotlib 3.11).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Iterable

from nnopt.core import figure_style
from nnopt.core.figure_style import mark_diverged, palette  # noqa: F401  (re-exported for plots)


def new_figure(width: float = 6.4, height: float = 4.0, nrows: int = 1, ncols: int = 1,
               **subplot_kw: Any) -> tuple[Any, Any]:
    """A fresh ``(figure, axes)`` in nnopt's figure style (``figure_style.new_figure``)."""
    return figure_style.new_figure(width, height, nrows, ncols, **subplot_kw)


def save(fig: Any, path: Path) -> Path:
    """Write ``fig`` as PNG to ``path`` (and SVG/PDF beside it when asked): ``figure_style.save``."""
    return figure_style.save(fig, path)


def finite_pairs(xs: Iterable[Any], ys: Iterable[Any]) -> tuple[list[float], list[float]]:
    """The (x, y) points whose y is a finite number (NaN, inf and None dropped)."""
    out_x: list[float] = []
    out_y: list[float] = []
    for x, y in zip(xs, ys):
        if isinstance(y, (int, float)) and math.isfinite(y):
            out_x.append(x)
            out_y.append(float(y))
    return out_x, out_y


def set_log_y(ax: Any, values: Iterable[float]) -> None:
    """A log y-axis when every value is positive, else a symmetric-log one (0 and below drawn);
    tick labels are plain numbers."""
    from matplotlib.ticker import LogFormatter

    class PlainLogFormatter(LogFormatter):
        """Labels the ticks matplotlib's log formatter would label, as ``f"{x:g}"``."""

        def __call__(self, x: float, pos: Any = None) -> str:
            return self.fix_minus(f"{x:g}") if super().__call__(x, pos) else ""

    values = list(values)
    if values and min(values) <= 0:
        ax.set_yscale("symlog", linthresh=max(min((abs(v) for v in values if v != 0), default=1e-8), 1e-12))
        ax.yaxis.set_major_formatter(PlainLogFormatter(10))
    else:
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(PlainLogFormatter(10))
        # minor ticks are labelled where the axis spans too few decades to show a major one
        ax.yaxis.set_minor_formatter(PlainLogFormatter(10, labelOnlyBase=False))


def log_colorbar(fig: Any, mappable: Any, ax: Any, label: str) -> Any:
    """A colorbar for ``mappable`` (drawn with a ``LogNorm``) beside ``ax``, its ticks labelled
    in plain numbers as ``set_log_y`` labels an axis (matplotlib's default log colorbar labels
    are mathtext)."""
    from matplotlib.ticker import LogFormatter

    class PlainLogFormatter(LogFormatter):
        def __call__(self, x: float, pos: Any = None) -> str:
            return self.fix_minus(f"{x:g}") if super().__call__(x, pos) else ""

    bar = fig.colorbar(mappable, ax=ax)
    bar.ax.yaxis.set_major_formatter(PlainLogFormatter(10))
    bar.ax.yaxis.set_minor_formatter(PlainLogFormatter(10, labelOnlyBase=False))
    bar.set_label(label)
    return bar


def positive_series_figure(series: list[tuple[int, dict[str, Any]]], lines: Iterable[tuple[str, str, str]],
                           ylabel: str, title: str, path: Path, markers: bool = False) -> list[Path]:
    """Tracked quantities against step on a log axis: one line per ``(key, label, colour)`` of
    ``lines``, each drawn through its positive finite values; ``[]`` (nothing written) when
    no line has any."""
    steps = [s for s, _ in series]
    fig, ax = new_figure()
    plotted: list[float] = []
    style = {"marker": "o", "markersize": 2.5} if markers else {}
    for key, label, color in lines:
        xs, ys = finite_pairs(steps, [r.get(key) for _, r in series])
        pts = [(a, b) for a, b in zip(xs, ys) if b > 0]
        if pts:
            ax.plot(*zip(*pts), label=label, color=color, linewidth=1.2, **style)
            plotted.extend(b for _, b in pts)
    if not plotted:
        return []
    set_log_y(ax, plotted)
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    return [save(fig, path)]
