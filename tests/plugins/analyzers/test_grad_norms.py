"""grad_norms: per-layer ‖∂L/∂W‖ against hand-computed gradients."""

from __future__ import annotations

import math

import pytest
import torch
from pydantic import ValidationError
from torch import nn

from nnopt.core.kinds import AnalysisContext, DataSplit
from nnopt.plugins.analyzers.grad_norms import GradNorms, _growth


def half_squared_error(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """L = ½‖Wx − y‖² summed over outputs, averaged over examples."""
    return 0.5 * (out - y).square().sum(-1).mean()


def data(n: int = 40, d: int = 3, k: int = 2, seed: int = 0) -> DataSplit:
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(n, d, generator=g), torch.randn(n, k, generator=g)
    return DataSplit(x, y, x[:0], y[:0], "regression", (d,), k)


def context(model, split, batch=None, seed=0) -> AnalysisContext:
    return AnalysisContext(model, half_squared_error, split, torch.device("cpu"), torch.Generator().manual_seed(seed),
                           step=None if batch is None else 7, batch=batch)


def analyze(model, split, batch=None, seed=0, **params):
    return GradNorms(GradNorms.Params(**params)).analyze(context(model, split, batch, seed))


@pytest.fixture
def linear():
    torch.manual_seed(0)
    return nn.Linear(3, 2, bias=False)


def test_single_example_matches_the_outer_product(linear):
    x, y = torch.tensor([[1.0, -2.0, 0.5]]), torch.tensor([[0.3, -1.0]])
    W = linear.weight.detach()
    expected = torch.outer(W @ x[0] - y[0], x[0]).norm().item()  # ∇W = (Wx − y) xᵀ
    r = analyze(linear, data(), batch=(x, y))
    assert r["layers"] == {"weight": pytest.approx(expected, rel=1e-6)}
    assert r["weights"] == [pytest.approx(expected, rel=1e-6)] and r["weight_names"] == ["weight"]
    assert r["total"] == pytest.approx(expected, rel=1e-6) and r["growth_per_layer"] is None


def test_train_split_is_the_mean_gradient_and_chunks_do_not_matter(linear):
    split = data(n=40)
    W = linear.weight.detach()
    expected = ((split.x_train @ W.T - split.y_train).T @ split.x_train / 40).norm().item()  # (1/n) Σ (Wx−y)xᵀ
    full = analyze(linear, split, source="train", samples=None)
    chunked = analyze(linear, split, source="train", samples=None, chunk=7)
    assert full["total"] == pytest.approx(expected, rel=1e-5)
    assert chunked["total"] == pytest.approx(expected, rel=1e-5)
    # source=batch falls back to the train split when no batch is given (an analyze stage)
    assert analyze(linear, split, samples=None)["total"] == pytest.approx(expected, rel=1e-5)
    # source=train ignores the batch
    batch = (split.x_train[:2], split.y_train[:2])
    assert analyze(linear, split, batch=batch, source="train", samples=None)["total"] == pytest.approx(expected, rel=1e-5)


def test_samples_caps_the_examples_with_a_seeded_subset(linear):
    split = data(n=40)
    a, b, c = (analyze(linear, split, seed=s, source="train", samples=5) for s in (1, 1, 2))
    assert a == b and a["total"] != c["total"]
    with pytest.raises(ValidationError):
        GradNorms.Params(samples=0)
    with pytest.raises(ValidationError):
        GradNorms.Params(source="test")


def test_layers_weights_total_and_growth_on_a_deep_network():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 2))
    r = analyze(model, data(), source="train")
    assert list(r["layers"]) == [name for name, _ in model.named_parameters()]
    assert r["weight_names"] == ["0.weight", "2.weight", "4.weight"]
    assert r["weights"] == [r["layers"][n] for n in r["weight_names"]]
    assert r["total"] == pytest.approx(math.sqrt(sum(v * v for v in r["layers"].values())))
    assert r["growth_per_layer"] == pytest.approx((r["weights"][0] / r["weights"][-1]) ** 0.5)
    assert _growth([8.0, 4.0, 2.0]) == pytest.approx(2.0) and _growth([1.0, 0.0]) is None and _growth([3.0]) is None


def test_never_touches_the_parameters_grad(linear):
    split = data()
    before = torch.full_like(linear.weight, 7.0)
    linear.weight.grad = before
    analyze(linear, split, source="train")
    assert linear.weight.grad is before and torch.equal(before, torch.full_like(before, 7.0))
    linear.weight.grad = None
    analyze(linear, split, batch=(split.x_train[:4], split.y_train[:4]))
    assert linear.weight.grad is None


def test_works_under_no_grad_and_skips_frozen_parameters():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    model[0].bias.requires_grad_(False)
    with torch.no_grad():
        r = analyze(model, data())
    assert "0.bias" not in r["layers"] and r["total"] > 0


def test_plots(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))
    analyzer = GradNorms(GradNorms.Params(source="train"))
    r = analyzer.analyze(context(model, data()))
    assert analyzer.plot(r, tmp_path) == [tmp_path / "grad_norms.png"]
    series = [(s, r) for s in (0, 10, 20)]
    assert analyzer.plot_series(series, tmp_path) == [tmp_path / "grad_norms_track.png", tmp_path / "grad_norms_heatmap.png"]
    assert all((tmp_path / f).stat().st_size > 1000 for f in ("grad_norms.png", "grad_norms_track.png", "grad_norms_heatmap.png"))
    assert analyzer.plot({"weights": [], "weight_names": []}, tmp_path / "empty") == []
    assert analyzer.plot_series([], tmp_path / "empty") == []


def test_ratios_are_the_gradient_norm_over_the_weight_norm(linear):
    x, y = torch.tensor([[1.0, -2.0, 0.5]]), torch.tensor([[0.3, -1.0]])
    W = linear.weight.detach()
    grad = torch.outer(W @ x[0] - y[0], x[0])  # ∇W of ½‖Wx − y‖²
    r = analyze(linear, data(), batch=(x, y))
    assert r["ratios"] == [pytest.approx((grad.norm() / W.norm()).item(), rel=1e-6)]


def test_ratios_are_aligned_with_the_weights_and_skip_biases():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))
    with torch.no_grad():
        model[2].weight.mul_(10.0)  # a layer ten times larger: its ratio is not its norm's
    r = analyze(model, data(), source="train")
    norms = [model[0].weight.norm().item(), model[2].weight.norm().item()]
    assert len(r["ratios"]) == len(r["weights"]) == 2
    assert r["ratios"] == [pytest.approx(g / w, rel=1e-6) for g, w in zip(r["weights"], norms)]


def test_a_zero_weight_has_an_undefined_ratio():
    model = nn.Linear(3, 2, bias=True)
    with torch.no_grad():
        model.weight.zero_()
    r = analyze(model, data(), source="train")
    assert r["weights"][0] > 0 and math.isnan(r["ratios"][0])
    empty = analyze(nn.Sequential(), data())
    assert empty["ratios"] == [] and empty["weights"] == []


def test_the_heatmap_is_drawn_from_one_step_and_needs_a_positive_norm(tmp_path):
    analyzer = GradNorms(GradNorms.Params())
    r = {"layers": {"a.weight": 0.5, "b.weight": 2e-3}, "weight_names": ["a.weight", "b.weight"]}
    assert analyzer.plot_series([(3, r)], tmp_path) == [tmp_path / "grad_norms_track.png", tmp_path / "grad_norms_heatmap.png"]
    # unevenly spaced steps, one layer with no finite gradient at one of them
    uneven = [(0, r), (5, {**r, "layers": {"a.weight": float("nan"), "b.weight": 1.0}}), (50, r)]
    assert (tmp_path / "uneven" / "grad_norms_heatmap.png") in analyzer.plot_series(uneven, tmp_path / "uneven")
    zero = {"layers": {"a.weight": 0.0}, "weight_names": ["a.weight"]}
    assert analyzer.plot_series([(0, zero)], tmp_path / "zero") == []


def test_the_heatmap_colorbar_ticks_parse_no_mathtext(tmp_path):
    # the labels are mathtext (the norm's symbol); the log colorbar's ticks are plain numbers
    import subprocess
    import sys

    code = (
        "import matplotlib._mathtext as mathtext\n"
        "parsed, parse = [], mathtext.Parser.parse\n"
        "mathtext.Parser.parse = lambda self, s, *a, **k: parsed.append(s) or parse(self, s, *a, **k)\n"
        "from nnopt.plugins.analyzers.grad_norms import _heatmap\n"
        "r = {'layers': {'a.weight': 3.0, 'b.weight': 1e-4}}\n"
        f"_heatmap([(0, r), (10, r)], ['a.weight', 'b.weight'], __import__('pathlib').Path({str(tmp_path / 'h.png')!r}))\n"
        "print(sorted(set(parsed)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    parsed = eval(out.stdout)
    assert parsed and all("partial" in s and "10^" not in s and "mathdefault" not in s for s in parsed), parsed
    assert (tmp_path / "h.png").stat().st_size > 1000
