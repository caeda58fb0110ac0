"""The train stage's ``plots/loss.png``: loss, test accuracy and learning rate side by side,
the diverged step marked, and ``--figure-format`` writing SVG beside the PNG."""

from __future__ import annotations

import textwrap

from PIL import Image

from nnopt.core import figure_style as fs
from nnopt.plugins.stages.train import loss_figure, plot_loss

from stage_helpers import read_metrics


def _titles(fig):
    return [ax.get_title() for ax in fig.axes]


def test_a_classification_run_draws_loss_accuracy_and_lr(train, monkeypatch):
    monkeypatch.delenv(fs.FORMAT_ENV, raising=False)
    outcome, out = train(steps=12, log_every=2, eval_every=4, schedule={"name": "cosine"}, stage_id="fit")
    assert outcome.status == "ok"
    with Image.open(out / "plots/loss.png") as im:
        assert tuple(round(v) for v in im.info["dpi"]) == (150, 150)
        assert im.size == (round(3 * 4.6 * 150), 600)  # three panels
    assert not (out / "plots/loss.svg").exists()
    records = read_metrics(out)
    fig = loss_figure([(r["step"], r["loss"]) for r in records if "lr" in r],
                      [(r["step"], r["test_loss"]) for r in records if "test_loss" in r], records=records, stage_id="fit")
    assert _titles(fig) == ["train and test loss", "test accuracy", "learning rate"]
    assert fig.get_suptitle() == "training (stage 'fit')"
    lr_line = fig.axes[2].get_lines()[0]
    assert list(lr_line.get_xdata()) == [2, 4, 6, 8, 10, 12]
    lrs = list(lr_line.get_ydata())
    assert lrs[0] > lrs[-1]  # the cosine schedule as logged
    assert all(0 <= a <= 1 for a in fig.axes[1].get_lines()[0].get_ydata())


def test_a_regression_run_draws_loss_and_lr_only(train):
    outcome, out = train(steps=6, log_every=2, loss="mse", data={"task": "regression"},
                         optimizer={"name": "sgd", "lr": 0.05})
    assert outcome.status == "ok"
    with Image.open(out / "plots/loss.png") as im:
        assert im.size == (round(2 * 4.6 * 150), 600)
    records = read_metrics(out)
    fig = loss_figure([(r["step"], r["loss"]) for r in records if "lr" in r], [], records=records)
    assert _titles(fig) == ["train and test loss", "learning rate"]
    assert fig.get_suptitle() == "training"


def test_a_diverged_run_marks_the_step_it_diverged_at(train, tmp_path, monkeypatch):
    import nnopt.plugins.stages.train as train_module

    drawn = []
    real = train_module.plot_loss
    monkeypatch.setattr(train_module, "plot_loss", lambda *a, **kw: drawn.append(kw) or real(*a, **kw))
    outcome, out = train(epochs=50, log_every=1, optimizer={"name": "sgd", "lr": 1e6})
    assert outcome.status == "diverged"
    assert drawn[0]["diverged"] == (outcome.metrics["diverged_at_step"], outcome.metrics["last_finite_loss"])
    assert (out / "plots/loss.png").is_file()
    step, last = outcome.metrics["diverged_at_step"], outcome.metrics["last_finite_loss"]
    records = read_metrics(out)
    curve = [(r["step"], r["loss"]) for r in records if "lr" in r]
    fig = loss_figure(curve, [], records=records, diverged=(step, last))
    marks = [line for line in fig.axes[0].get_lines() if line.get_marker() == "x"]
    assert len(marks) == 1 and list(marks[0].get_xdata()) == [step] and list(marks[0].get_ydata()) == [last]
    assert marks[0].get_color() == fs.VERMILLION
    assert f"diverged (step {step})" in [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    # a non-finite "last finite" loss (none was logged) still draws the mark, at the top of the curve
    path = plot_loss([(1, 2.0), (2, 3.0)], [], tmp_path / "p" / "loss.png", diverged=(3, float("nan")))
    assert path.is_file()


def test_the_loss_axis_is_logarithmic_only_when_it_spans_decades():
    assert loss_figure([(1, 1.0), (2, 0.5)], []).axes[0].get_yscale() == "linear"
    assert loss_figure([(1, 1.0), (2, 0.01)], []).axes[0].get_yscale() == "log"
    assert len(loss_figure([(1, 1.0)], [], records=[{"step": 1, "loss": 1.0}]).axes) == 1  # no lr logged: one panel


def test_run_figure_format_svg_writes_an_svg_beside_the_png(invoke, write_pipeline, tmp_path, monkeypatch):
    monkeypatch.setenv(fs.FORMAT_ENV, "")  # the CLI sets it: restored after the test
    path = write_pipeline(textwrap.dedent("""\
        name: figs
        data: {name: synthetic, task: gaussian_mixture, n_train: 64, n_test: 32, dim: 4, batch_size: 32}
        model: {arch: {name: mlp, widths: [8]}}
        loss: cross_entropy
        stages:
          train: {kind: train, optimizer: {name: sgd, lr: 0.1}, steps: 4, log_every: 1}
        """))
    result = invoke("run", path, "--figure-format", "svg", "--store", tmp_path / "store", "--json")
    assert result.exit_code == 0, result.stderr
    plots = list((tmp_path / "store").rglob("plots/loss.png"))
    assert len(plots) == 1 and plots[0].with_suffix(".svg").is_file()
    assert not plots[0].with_suffix(".pdf").exists()


def test_a_bad_figure_format_setting_is_a_usage_error(invoke, write_pipeline, tmp_path, monkeypatch):
    monkeypatch.setenv(fs.FORMAT_ENV, "tiff")
    result = invoke("run", tmp_path / "missing.yaml", "--store", tmp_path / "store")
    assert result.exit_code == 2 and "'tiff' is not a figure format" in result.stderr
    assert not (tmp_path / "store").exists()
