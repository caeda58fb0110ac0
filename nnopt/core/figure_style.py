"""The one style every nnopt figure is drawn in, and the one way figures are written.

Colours are the Okabe–Ito palette (Okabe & Ito 2008, "Color Universal Design"): told apart
under the common colour-vision deficiencies, and without its pale yellow (#F0E442), which
hardly shows on white. Figures are Agg-rendered ``matplotlib.figure.Figure`` objects (no
``pyplot``: no global backend, no figure registry, any thread). The style's rcParams are applied
in ``style()``, a context manager, never globally: an embedding program keeps its own
settings. ``new_figure`` creates the figure and its axes inside the style (the colour cycle,
grid and spines are fixed when axes are made) and ``save`` draws it inside the style (fonts,
mathtext and grid lines are read when the figure is drawn).

Which files ``save`` writes is read from the environment variable ``NNOPT_FIGURE_FORMAT``
(``nnopt run --figure-format``): an environment variable, not a setting passed down, so that it
reaches the worker processes of a sweep as well. PNG is always written (reports embed it).

Importing this module does not import matplotlib (a cached run draws nothing).
"""

from __future__ import annotations

import contextlib
import contextvars
import os
from pathlib import Path
from typing import Any, Iterator

#: Okabe–Ito colours, in the order lines take them
BLUE = "#0072B2"
VERMILLION = "#D55E00"
GREEN = "#009E73"
PURPLE = "#CC79A7"
ORANGE = "#E69F00"
SKY = "#56B4E9"
BLACK = "#000000"
GREY = "#999999"
PALETTE: tuple[str, ...] = (BLUE, VERMILLION, GREEN, PURPLE, ORANGE, SKY, BLACK, GREY)

#: a sequential colormap for ordered families of lines (one per layer, input → output): cividis
#: reads under colour-vision deficiencies and in grey
SEQUENTIAL = "cividis"

DPI = 150
FORMATS = ("png", "svg", "pdf")
FORMAT_ENV = "NNOPT_FIGURE_FORMAT"

#: the run a figure belongs to (``labelled``): written in small grey type in its lower left corner
_LABEL: contextvars.ContextVar[str | None] = contextvars.ContextVar("nnopt_figure_label", default=None)


@contextlib.contextmanager
def labelled(text: str | None) -> Iterator[None]:
    """Every figure ``save`` writes meanwhile carries ``text`` in its lower left corner: the
    runner names the pipeline, the stage and the matrix values there, so a figure taken out
    of its directory (into a paper draft, a slide) still says which run drew it."""
    token = _LABEL.set(text)
    try:
        yield
    finally:
        _LABEL.reset(token)


def run_label(pipeline: str, stage: str, params: dict[str, Any] | None = None) -> str:
    """``pipeline · stage · lr=0.05, seed=1``: the matrix values by the last part of their path."""
    shown = ", ".join(f"{str(k).rsplit('.', 1)[-1]}={_short(v)}" for k, v in (params or {}).items())
    return " · ".join(x for x in (pipeline, stage, shown) if x)


def _short(value: Any) -> str:
    text = value.get("name", str(value)) if isinstance(value, dict) else str(value)
    return text if len(text) <= 24 else text[:21] + "…"

_RC: dict[str, Any] = {
    "axes.prop_cycle": None,  # filled in by style(): a cycler needs matplotlib
    "axes.grid": True,
    "axes.grid.which": "major",
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.titlesize": "medium",
    "axes.labelsize": "medium",
    "grid.alpha": 0.3,
    "grid.linewidth": 0.6,
    "lines.linewidth": 1.4,
    "lines.markersize": 4.0,
    "legend.fontsize": "small",
    "legend.framealpha": 0.8,
    "mathtext.fontset": "dejavusans",  # math in the labels' own sans-serif face
    "image.cmap": SEQUENTIAL,
    "savefig.dpi": DPI,
    "savefig.bbox": None,  # constrained layout already fits the figure: sizes stay as asked
    "svg.fonttype": "none",  # SVG text stays text (searchable, editable)
    "pdf.fonttype": 42,  # TrueType in PDFs: editable, accepted by journals
}


def palette(n: int) -> list[str]:
    """``n`` colours of the palette, in order, cycling when ``n`` exceeds its eight."""
    if n < 0:
        raise ValueError(f"palette(n) needs n >= 0, got {n}")
    return [PALETTE[i % len(PALETTE)] for i in range(n)]


def ramp(i: int, n: int) -> Any:
    """The ``i``-th of ``n`` colours along the sequential colormap (one per layer of a
    network, say: ordered things get ordered colours)."""
    from matplotlib import colormaps

    # 0.8: cividis ends in pale yellow; its colour at 0.8 still has a contrast of 2 against white
    return colormaps[SEQUENTIAL](0.8 * i / max(n - 1, 1))


def rc_params() -> dict[str, Any]:
    """The rcParams ``style()`` applies."""
    from matplotlib import cycler

    return {**_RC, "axes.prop_cycle": cycler(color=list(PALETTE))}


@contextlib.contextmanager
def style() -> Iterator[None]:
    """Apply nnopt's figure style (palette, grid, fonts, dpi) inside the ``with`` block only."""
    import matplotlib

    with matplotlib.rc_context(rc_params()):
        yield


def new_figure(width: float = 6.4, height: float = 4.0, nrows: int = 1, ncols: int = 1,
               **subplot_kw: Any) -> tuple[Any, Any]:
    """A fresh ``(figure, axes)`` in the style, rendered by Agg, laid out by constrained
    layout; ``axes`` is one Axes for a 1×1 grid, else the array ``Figure.subplots`` returns."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    with style():
        fig = Figure(figsize=(width, height), layout="constrained")
        FigureCanvasAgg(fig)
        axes = fig.subplots(nrows, ncols, squeeze=True, subplot_kw=subplot_kw or None)
    return fig, axes


def figure_formats() -> tuple[str, ...]:
    """The formats ``save`` writes: ``png`` and those ``NNOPT_FIGURE_FORMAT`` names
    (comma-separated of png, svg, pdf; unset or empty: PNG only). A ValueError names a value
    that is not one of them."""
    raw = os.environ.get(FORMAT_ENV, "")
    asked = [part.strip().lower() for part in raw.split(",") if part.strip()]
    bad = [a for a in asked if a not in FORMATS]
    if bad:
        raise ValueError(f"{FORMAT_ENV}={raw!r}: {', '.join(map(repr, bad))} is not a figure format "
                         f"(a comma-separated list of {', '.join(FORMATS)})")
    return ("png", *dict.fromkeys(a for a in asked if a != "png"))


def save(fig: Any, path: Path | str) -> Path:
    """Write ``fig`` as a PNG at ``path`` (parents created; 150 dpi) and, as
    ``figure_formats()`` asks, as SVG / PDF beside it (same stem); returns the PNG's path.
    Inside ``labelled(text)`` the figure carries ``text`` in its lower left corner."""
    formats = figure_formats()  # first: a bad setting fails before anything is written
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    label = _LABEL.get()
    if label and not getattr(fig, "_nnopt_labelled", False):
        engine = fig.get_layout_engine()
        if hasattr(engine, "set") and type(engine).__name__ == "ConstrainedLayoutEngine":
            engine.set(rect=(0, 0.04, 1, 0.96))  # a strip at the bottom for the label, below every x label
        fig.text(0.002, 0.002, label, ha="left", va="bottom", fontsize=6, color=GREY)
        fig._nnopt_labelled = True  # saved twice (two formats, a redraw): one label
    with style():
        fig.savefig(path, format="png", dpi=DPI)
        for fmt in formats[1:]:
            fig.savefig(path.with_suffix(f".{fmt}"), format=fmt)
    return path


def png_bytes(fig: Any) -> bytes:
    """``fig`` as PNG bytes (150 dpi, in the style), for a report that embeds the image."""
    import io

    buf = io.BytesIO()
    with style():
        fig.savefig(buf, format="png", dpi=DPI)
    return buf.getvalue()


def mark_diverged(ax: Any, x: Any, y: Any, label: str = "diverged") -> Any:
    """Mark where a run diverged: a large vermillion ``x`` at ``(x, y)`` (scalars or
    sequences), with a legend entry ``label``; the legend is redrawn to show it. Returns the
    marker's line."""
    xs = list(x) if isinstance(x, (list, tuple)) else [x]
    ys = list(y) if isinstance(y, (list, tuple)) else [y]
    (line,) = ax.plot(xs, ys, linestyle="none", marker="x", markersize=10, markeredgewidth=2.2,
                      color=VERMILLION, label=label, zorder=5)
    ax.legend()
    return line
