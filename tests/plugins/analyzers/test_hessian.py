"""hessian_eigs / hessian_density / hessian_trace / hessian_exact against the exact Hessian of a
tiny network (torch.func.hessian, float64); plots; the CLI end to end (analyze and track)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from pydantic import ValidationError
from torch import nn
from torch.func import functional_call, hessian

from nnopt.cli import main
from nnopt.core.errors import StageError
from nnopt.core.kinds import AnalysisContext, DataSplit
from nnopt.plugins.analyzers.hessian import HessianDensity, HessianEigs, HessianExact, HessianTrace, outlier_split


def setup(seed=0, n=40):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3)).double()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, 4, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (n,), generator=g)
    data = DataSplit(x, y, x[:5], y[:5], "classification", (4,), 3, num_classes=3)
    names = [k for k, _ in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]
    sizes = [p.numel() for p in model.parameters()]
    theta = torch.cat([p.detach().reshape(-1) for p in model.parameters()])

    def f(flat):
        return F.cross_entropy(functional_call(model, {k: t.view(s) for k, t, s in zip(names, flat.split(sizes), shapes)}, (x,)), y)

    return model, data, torch.linalg.eigvalsh(hessian(f)(theta)), hessian(f)(theta)


def run(cls, model, data, seed=0, lr=None, **params):
    ctx = AnalysisContext(model=model, loss_fn=F.cross_entropy, data=data, device=torch.device("cpu"),
                          generator=torch.Generator().manual_seed(seed), lr=lr)
    return cls(cls.Params(**params)).analyze(ctx)


@pytest.mark.parametrize("batch_size", [64, 7])
def test_lanczos_top_and_bottom_agree_with_the_exact_spectrum_to_1e_6(batch_size):
    model, data, exact, _ = setup()
    assert exact[0] < -1e-3  # a non-minimum: genuinely negative bottom eigenvalues
    r = run(HessianEigs, model, data, k=3, which="both", tol=1e-8, max_hvps=100, batch_size=batch_size)
    expected = exact.flip(0)[:3].tolist() + exact[:3].tolist()
    assert r["eigenvalues"] == pytest.approx(expected, rel=1e-6)
    assert r["all_converged"] and r["converged"] == [True] * 6 and r["which"] == ["top"] * 3 + ["bottom"] * 3
    assert r["n_hvps"] <= 100 and r["dim"] == exact.numel() and r["samples"] == 40 and r["seconds"] >= 0
    assert all(res <= 1e-8 * abs(v) for v, res in zip(r["eigenvalues"], r["residuals"]))
    assert r["top"] == pytest.approx(float(exact[-1]), rel=1e-6)


def test_power_iteration_finds_the_top_and_refuses_bottom():
    model, data, exact, _ = setup()
    r = run(HessianEigs, model, data, k=1, method="power", tol=1e-6, max_hvps=2000)
    dominant = float(exact[exact.abs().argmax()])
    assert r["eigenvalues"][0] == pytest.approx(dominant, rel=1e-5) and r["method"] == "power"
    with pytest.raises(StageError, match="which: top"):
        run(HessianEigs, model, data, method="power", which="bottom")


def test_the_budget_stops_lanczos_and_says_not_converged():
    model, data, _, _ = setup()
    r = run(HessianEigs, model, data, k=3, tol=1e-12, max_hvps=4)
    assert r["n_hvps"] == 4 and not r["all_converged"]


def test_hessian_exact_is_torch_func_hessian_and_refuses_large_models():
    model, data, exact, h = setup()
    r = run(HessianExact, model, data, batch_size=7)  # batches 7×5 + 5, size-weighted
    assert r["eigenvalues"] == pytest.approx(exact.tolist(), rel=1e-9, abs=1e-12)
    assert r["trace"] == pytest.approx(float(h.trace()), rel=1e-10) and r["asymmetry"] < 1e-12
    zero = exact.numel() * 2.3e-16 * float(exact.abs().max())
    assert r["n_negative"] == int((exact < -zero).sum()) > 0 and r["n_zero"] == int((exact.abs() <= zero).sum())
    assert r["top"][0] == r["eigenvalues"][-1]
    with pytest.raises(StageError, match="above max_params = 10"):
        run(HessianExact, model, data, max_params=10)
    gn = run(HessianExact, model, data, curvature="gauss_newton")
    assert min(gn["eigenvalues"]) > -1e-10  # the Gauss–Newton matrix of cross-entropy is PSD


def test_hutchinson_trace_is_unbiased_within_four_standard_errors():
    model, data, exact, _ = setup()
    r = run(HessianTrace, model, data, probes=400)
    assert r["n_probes"] == 400 == r["n_hvps"] == len(r["probe_values"]) and r["trace_se"] > 0
    assert abs(r["trace"] - float(exact.sum())) <= 4 * r["trace_se"]
    again = run(HessianTrace, model, data, probes=400)
    assert again["trace"] == r["trace"]  # seeded


def test_slq_density_has_unit_mass_and_matches_the_exact_trace_and_extremes():
    model, data, exact, _ = setup()
    d = exact.numel()
    r = run(HessianDensity, model, data, probes=20, steps=d, sigma=0.01, grid=2000)
    assert r["mass"] == pytest.approx(1.0, abs=1e-3) and len(r["density"]) == 2000 == len(r["grid"])
    assert abs(r["trace"] - float(exact.sum())) <= 4 * r["trace_se"]
    assert r["lambda_max"] == pytest.approx(float(exact[-1]), rel=1e-6)
    assert r["lambda_min"] == pytest.approx(float(exact[0]), rel=1e-6)
    for weights in r["weights"]:
        assert sum(weights) == pytest.approx(1.0, abs=1e-10)
    # mass of the exact spectrum in a window vs the SLQ weights in it, within statistical error
    lo, hi = 0.0, float(exact[-1]) + 1
    true_mass = float(((exact >= lo) & (exact < hi)).double().mean())
    per_probe = [sum(w for w, t in zip(ws, ts) if lo <= t < hi) for ws, ts in zip(r["weights"], r["nodes"])]
    mean = sum(per_probe) / len(per_probe)
    se = (sum((m - mean) ** 2 for m in per_probe) / (len(per_probe) - 1) / len(per_probe)) ** 0.5
    assert abs(mean - true_mass) <= 4 * se + 1e-9


def test_outlier_split_uses_the_largest_ratio_gap_above_the_bulk_scale():
    values = [40.0, 25.0, 18.0, 1.2, 1.0, 0.9, 0.5, 0.01]
    assert outlier_split(values, floor=0.5, max_count=10, min_gap=2.0) == (3, 1.2, 15.0)
    assert outlier_split(values, floor=0.5, max_count=2, min_gap=1.5)[0] == 1  # 40/25 = 1.6 is the best within 2
    assert outlier_split(values, floor=0.5, max_count=2, min_gap=2.0)[0] == 0  # ... and below min_gap 2
    assert outlier_split([3.0, 2.5, 2.0, 1.8], floor=0.1, max_count=10, min_gap=2.0) == (0, None, 1.25)
    # ratios below the bulk scale (values near 0) are not gaps: 0.5/0.01 is ignored
    assert outlier_split([1.0, 0.9, 0.5, 0.01], floor=0.4, max_count=10, min_gap=1.5)[0] == 2


def test_plots_are_written(tmp_path):
    model, data, _, _ = setup()
    files = []
    for cls, params in ((HessianEigs, {"k": 3}), (HessianDensity, {"probes": 2, "steps": 10}),
                        (HessianTrace, {"probes": 5}), (HessianExact, {})):
        analyzer = cls(cls.Params(**params))
        files += analyzer.plot(run(cls, model, data, lr=0.1, **params), tmp_path)
    series = [(s, run(HessianEigs, model, data, k=1, lr=0.1)) for s in (0, 10)]
    files += HessianEigs(HessianEigs.Params(k=1)).plot_series(series, tmp_path)
    assert {f.name for f in files} == {"hessian_eigs.png", "hessian_density.png", "hessian_trace.png",
                                       "hessian_exact.png", "hessian_eigs_track.png"}
    assert all(f.is_file() and f.stat().st_size > 1000 for f in files)
    assert series[0][1]["lr"] == 0.1 and series[0][1]["two_over_lr"] == 20.0


def test_bad_params_are_validation_errors():
    for cls, bad in ((HessianEigs, {"k": 0}), (HessianEigs, {"tol": 0}), (HessianEigs, {"which": "middle"}),
                     (HessianDensity, {"probes": 0}), (HessianExact, {"max_params": 0}), (HessianTrace, {"bogus": 1})):
        with pytest.raises(ValidationError):
            cls.Params(**bad)


# ------------------------------------------------------------------------------ CLI
TINY = """\
name: hessian-cli
seed: 0
device: cpu
data: {name: digits, batch_size: 64}
model:
  arch: {name: mlp, widths: [8], activation: tanh}
loss: cross_entropy
stages:
  train:
    kind: train
    optimizer: {name: sgd, lr: 0.1}
    steps: 20
    track:
      - {name: hessian_eigs, every: 10, k: 1, split: batch}
  probe:
    kind: analyze
    from: train
    analyzers:
      - {name: hessian_eigs, k: 2, which: both, samples: 128}
      - {name: hessian_density, samples: 128, probes: 2, steps: 15, grid: 100}
      - {name: hessian_trace, samples: 128, probes: 5}
      - {name: hessian_exact, samples: 128, max_params: 1000}
"""


def test_cli_end_to_end(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text(TINY)
    result = CliRunner().invoke(main, ["run", str(path), "--json", "--store", str(tmp_path / "store")],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    r = out["stages"]["probe"]["results"]
    exact = r["hessian_exact"]["eigenvalues"]
    assert r["hessian_eigs"]["eigenvalues"][0] == pytest.approx(exact[-1], rel=1e-3)
    assert r["hessian_eigs"]["eigenvalues"][2] == pytest.approx(exact[0], rel=1e-3)
    assert r["hessian_density"]["mass"] == pytest.approx(1.0, abs=0.02)
    assert abs(r["hessian_trace"]["trace"] - sum(exact)) <= 5 * r["hessian_trace"]["trace_se"]
    plots = Path(out["stages"]["probe"]["dir"]) / "plots"
    for name in ("hessian_eigs", "hessian_density", "hessian_trace", "hessian_exact"):
        assert (plots / f"{name}.png").is_file()
    assert (Path(out["stages"]["train"]["dir"]) / "plots" / "hessian_eigs_track.png").is_file()
    tracked = [json.loads(line) for line in (Path(out["stages"]["train"]["dir"]) / "metrics.jsonl").read_text().splitlines()]
    tracked = [t for t in tracked if t.get("track") == "hessian_eigs"]
    assert [t["step"] for t in tracked] == [0, 10] and all(t["two_over_lr"] == pytest.approx(20.0) for t in tracked)


def test_a_too_large_model_fails_the_stage_with_the_message(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text(TINY.replace("max_params: 1000", "max_params: 100"))
    result = CliRunner().invoke(main, ["run", str(path), "--json", "--store", str(tmp_path / "store")])
    assert result.exit_code == 1
    assert "above max_params = 100" in json.loads(result.stdout)["stages"]["probe"]["message"]
