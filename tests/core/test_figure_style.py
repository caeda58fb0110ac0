"""figure_style: the palette reads on white, save writes 150-dpi PNGs (and SVG/PDF when asked),
a bad format setting is a clear error, mark_diverged shows in the legend."""

from __future__ import annotations

import pytest
from PIL import Image

from nnopt.core import figure_style as fs


def _luminance(hex_colour: str) -> float:
    """WCAG 2 relative luminance of an ``#RRGGBB`` colour."""
    def channel(c: float) -> float:
        return c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4

    r, g, b = (channel(int(hex_colour[i:i + 2], 16) / 255) for i in (1, 3, 5))
    return 0.2126 * r + 0.7152 * g + 0.0722 * b


def test_every_palette_colour_stands_out_on_white():
    # WCAG contrast ratio against white: Okabe-Ito's pale yellow #F0E442 is 1.2, tab10's 'C8' olive 2.9, all ours >= 2
    contrast = {c: 1.05 / (_luminance(c) + 0.05) for c in fs.PALETTE}
    assert min(contrast.values()) >= 2.0, contrast
    assert 1.05 / (_luminance("#F0E442") + 0.05) < 1.5  # the rule does reject pale yellow
    assert len(set(fs.PALETTE)) == len(fs.PALETTE) == 8


def test_palette_cycles_and_ramp_avoids_the_pale_end():
    assert fs.palette(3) == [fs.BLUE, fs.VERMILLION, fs.GREEN]
    assert fs.palette(10)[8:] == fs.palette(2) and fs.palette(0) == []
    r, g, b, _ = fs.ramp(4, 5)  # the last (palest) of a per-layer ramp
    assert 1.05 / (_luminance("#%02x%02x%02x" % tuple(round(255 * v) for v in (r, g, b))) + 0.05) >= 1.9
    with pytest.raises(ValueError):
        fs.palette(-1)


def test_new_figure_is_styled_and_the_style_does_not_leak():
    import matplotlib

    before = dict(matplotlib.rcParams)
    fig, ax = fs.new_figure()
    (line,) = ax.plot([0, 1], [0, 1])
    assert line.get_color() == fs.BLUE  # the palette's first colour, not tab10's
    assert ax.xaxis._major_tick_kw.get("gridOn") is True
    assert dict(matplotlib.rcParams) == before
    fig, axes = fs.new_figure(9, 3, 1, 3)
    assert len(axes) == 3 and len(fig.axes) == 3


def test_save_writes_a_150_dpi_png_only_by_default(tmp_path, monkeypatch):
    monkeypatch.delenv(fs.FORMAT_ENV, raising=False)
    fig, ax = fs.new_figure(4.0, 3.0)
    ax.plot([1, 2, 3], [1, 4, 9])
    ax.set_ylabel(r"$\|\partial L/\partial W\|_F$")  # mathtext renders (dejavusans fontset)
    path = fs.save(fig, tmp_path / "sub" / "f.png")
    with Image.open(path) as im:
        assert im.size == (600, 450)
        assert tuple(round(v) for v in im.info["dpi"]) == (150, 150)
    assert sorted(p.name for p in path.parent.iterdir()) == ["f.png"]


@pytest.mark.parametrize("setting, extra", [("svg", ["f.svg"]), ("pdf", ["f.pdf"]), (" PNG, svg,pdf ", ["f.pdf", "f.svg"]),
                                            ("png", []), ("", [])])
def test_save_writes_the_formats_the_setting_asks_for_beside_the_png(tmp_path, monkeypatch, setting, extra):
    monkeypatch.setenv(fs.FORMAT_ENV, setting)
    fig, ax = fs.new_figure(3.0, 2.0)
    ax.plot([0, 1], [1, 0])
    fs.save(fig, tmp_path / "f.png")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["f.png", *extra])
    if "f.svg" in extra:
        assert (tmp_path / "f.svg").read_text().lstrip().startswith("<?xml")
    if "f.pdf" in extra:
        assert (tmp_path / "f.pdf").read_bytes().startswith(b"%PDF")


def test_an_invalid_format_is_a_clear_value_error_and_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv(fs.FORMAT_ENV, "svg,jpg")
    with pytest.raises(ValueError, match=r"NNOPT_FIGURE_FORMAT='svg,jpg': 'jpg' is not a figure format.*png, svg, pdf"):
        fs.figure_formats()
    fig, _ = fs.new_figure()
    with pytest.raises(ValueError, match="jpg"):
        fs.save(fig, tmp_path / "f.png")
    assert not (tmp_path / "f.png").exists()


def test_mark_diverged_adds_a_vermillion_x_with_a_legend_entry():
    fig, ax = fs.new_figure()
    ax.plot([1, 2, 3], [1.0, 0.5, 2.0], label="train")
    line = fs.mark_diverged(ax, 4, 2.0)
    assert line.get_marker() == "x" and line.get_color() == fs.VERMILLION and line.get_linestyle() == "None"
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["train", "diverged"]


def test_png_bytes_is_a_150_dpi_png():
    import io

    fig, _ = fs.new_figure(2.0, 2.0)
    with Image.open(io.BytesIO(fs.png_bytes(fig))) as im:
        assert im.size == (300, 300)


def test_a_figure_saved_inside_labelled_names_its_run_in_a_corner(tmp_path):
    from nnopt.core import figure_style

    assert figure_style.run_label("quickstart", "train", {"stages.train.optimizer.lr": 0.05, "seed": 1}) == \
        "quickstart · train · lr=0.05, seed=1"
    fig, ax = figure_style.new_figure()
    ax.plot([0, 1], [0, 1])
    with figure_style.labelled("quickstart · train"):
        figure_style.save(fig, tmp_path / "a.png")
        figure_style.save(fig, tmp_path / "b.png")  # saved again: still one label
    assert [t.get_text() for t in fig.texts] == ["quickstart · train"]
    fig2, _ = figure_style.new_figure()
    figure_style.save(fig2, tmp_path / "c.png")  # outside: no label
    assert fig2.texts == []
