"""`nnopt describe schedules NAME --plot out.png`: validated params, a PNG, and exit 2 on bad input."""

import math

import pytest

from nnopt.core.describe import configured_component, schedule_curve
from nnopt.core.registry import Registry


def test_plot_writes_a_png(invoke, tmp_path):
    out = tmp_path / "cos.png"
    result = invoke("describe", "schedules", "cosine", "--plot", str(out), "--steps", "50", "--lr", "0.2",
                    "--set", "min_lr_fraction=0.1")
    assert result.exit_code == 0, result
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "from 0.2 to" in result.stdout


def test_plot_curve_is_the_schedule_the_stage_would_step():
    warm = configured_component(Registry(), "schedules", "warmup", ["length=10", "unit=steps", "then=cosine"])
    curve = schedule_curve(warm, 110, lr=0.1)
    assert len(curve) == 110 and curve[0] == pytest.approx(0.01) and curve[10] == pytest.approx(0.1)
    assert curve[60] == pytest.approx(0.05 * (1 + math.cos(math.pi * 50 / 100)))
    step = configured_component(Registry(), "schedules", "step", ["every=2", "gamma=10"])
    assert schedule_curve(step, 25, lr=1.0, steps_per_epoch=10)[::10] == pytest.approx([1.0, 1.0, 0.1])


def test_param_alias_and_nested_component(invoke, tmp_path):
    out = tmp_path / "w.png"
    result = invoke("describe", "schedule", "warmup", "--plot", str(out), "--param", "then={name: cosine}",
                    "--param", "length=2")
    assert result.exit_code == 0, result
    assert out.exists()


@pytest.mark.parametrize("settings, located", [
    (["alpha=2"], "--set alpha=2: alpha:"),
    (["tauu=3"], "did you mean 'tau'"),
    (["alpha"], "--set alpha: <root>: expected PATH=VALUE"),
])
def test_bad_params_exit_2_with_a_located_message(invoke, tmp_path, settings, located):
    args = ["describe", "schedules", "inverse_time", "--plot", str(tmp_path / "x.png")]
    for s in settings:
        args += ["--set", s]
    result = invoke(*args)
    assert result.exit_code == 2, result
    assert located in result.stderr
    assert not (tmp_path / "x.png").exists()


def test_nested_bad_param_is_located_below_its_parent(invoke, tmp_path):
    result = invoke("describe", "schedules", "warmup", "--plot", str(tmp_path / "x.png"),
                    "--set", "then={name: cosine, min_lr_fraction: 3}")
    assert result.exit_code == 2 and "then.min_lr_fraction" in result.stderr, result


def test_a_run_the_schedule_cannot_fit_exits_2(invoke, tmp_path):
    result = invoke("describe", "schedules", "wsd", "--plot", str(tmp_path / "x.png"), "--steps", "10", "--set", "warmup=20")
    assert result.exit_code == 2 and "do not fit" in result.stderr, result


def test_plot_is_for_schedules_and_set_needs_plot(invoke, tmp_path):
    assert invoke("describe", "optimizers", "sgd", "--plot", str(tmp_path / "x.png")).exit_code == 2
    assert invoke("describe", "schedules", "cosine", "--set", "min_lr_fraction=0.1").exit_code == 2


def test_without_plot_describe_prints_as_before(invoke):
    result = invoke("describe", "schedules", "inverse_time")
    assert result.exit_code == 0, result
    assert "Robbins" in result.stdout and "alpha" in result.stdout and "Parameters:" in result.stdout
