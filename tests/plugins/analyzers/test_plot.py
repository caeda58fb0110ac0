"""The shared plotting helpers: log axes labelled in plain numbers, never through mathtext."""

from __future__ import annotations

import subprocess
import sys

import pytest

from nnopt.plugins.analyzers._plot import new_figure, save, set_log_y


def labels(ax, which: str = "major") -> list[str]:
    ax.figure.canvas.draw()
    ticks = ax.yaxis.get_majorticklabels() if which == "major" else ax.yaxis.get_minorticklabels()
    return [t.get_text() for t in ticks if t.get_text()]


def test_log_axis_decades_are_labelled_as_plain_numbers():
    fig, ax = new_figure()
    ax.plot([0, 1, 2], [2.0, 0.05, 1e-5])
    set_log_y(ax, [2.0, 0.05, 1e-5])
    shown = labels(ax)
    assert {"1", "0.1", "0.01", "0.001", "0.0001", "1e\N{MINUS SIGN}05"} <= set(shown)
    assert not any("$" in s for s in shown)


def test_an_axis_spanning_less_than_a_decade_still_has_labels():
    fig, ax = new_figure()
    ax.plot([0, 1], [0.25, 0.45])
    set_log_y(ax, [0.25, 0.45])
    shown = labels(ax) + labels(ax, "minor")
    assert shown and not any("$" in s for s in shown)
    assert {"0.3", "0.4"} <= set(shown)


def test_a_symlog_axis_labels_zero_and_negatives_plainly():
    fig, ax = new_figure()
    ax.plot([0, 1, 2], [-1.0, 0.0, 10.0])
    set_log_y(ax, [-1.0, 0.0, 10.0])
    shown = labels(ax)
    assert "0" in shown and "10" in shown and "\N{MINUS SIGN}1" in shown
    assert not any("$" in s for s in shown)


@pytest.mark.parametrize("values", [[2.0, 1e-3], [-1.0, 0.0, 10.0]], ids=["log", "symlog"])
def test_a_log_plot_parses_no_mathtext_and_loads_no_pyplot(tmp_path, values):
    # the first mathtext label in a process costs ~30 ms of parser and math-font set-up
    code = (
        "import sys\n"
        "import matplotlib._mathtext as mathtext\n"
        "parsed, parse = [], mathtext.Parser.parse\n"
        "mathtext.Parser.parse = lambda self, s, *a, **k: parsed.append(s) or parse(self, s, *a, **k)\n"
        "from nnopt.plugins.analyzers._plot import new_figure, save, set_log_y\n"
        f"values = {values!r}\n"
        "fig, ax = new_figure()\n"
        "ax.plot(range(len(values)), values)\n"
        "set_log_y(ax, values)\n"
        f"save(fig, {str(tmp_path / 'p.png')!r})\n"
        "print(parsed, 'matplotlib.pyplot' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["[]", "False"]
    assert (tmp_path / "p.png").stat().st_size > 1000


def test_save_writes_a_png_into_new_directories(tmp_path):
    fig, ax = new_figure()
    ax.plot([0, 1], [1, 2])
    path = save(fig, tmp_path / "a" / "b" / "plot.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
