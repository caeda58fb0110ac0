"""sharpness: Keskar's ε-sharpness is ≥ 0, stays in its box, and matches the closed form of a
quadratic; the top eigenvalue and trace beside it; the CLI end to end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from torch import nn

from nnopt.cli import main
from nnopt.core.kinds import AnalysisContext, DataSplit
from nnopt.plugins.analyzers.sharpness import Sharpness

A = torch.tensor([3.0, 1.0, 0.5, 0.0, 2.0], dtype=torch.float64)
THETA = torch.tensor([0.5, -2.0, 0.0, 1.0, -0.1], dtype=torch.float64)


class Point(nn.Module):
    """f(x; θ) = θ for every example: with the loss below, L(θ) = ½ Σ a_i θ_i²."""

    def __init__(self):
        super().__init__()
        self.theta = nn.Parameter(THETA.clone())

    def forward(self, x):
        return self.theta.expand(x.shape[0], -1)


def quadratic(out, y):
    return 0.5 * (A * out * out).sum(1).mean()


def run(model, loss_fn, data, **params):
    ctx = AnalysisContext(model=model, loss_fn=loss_fn, data=data, device=torch.device("cpu"),
                          generator=torch.Generator().manual_seed(0))
    return Sharpness(Sharpness.Params(**params)).analyze(ctx)


def point_data():
    x = torch.zeros(4, 1, dtype=torch.float64)
    return DataSplit(x, torch.zeros(4, 5, dtype=torch.float64), x, x, "regression", (1,), 5)


@pytest.mark.parametrize("start", ["random", "zero"])
def test_a_quadratic_matches_the_closed_form_vertex_maximum(start):
    eps = 0.05
    r = run(Point(), quadratic, point_data(), epsilon=eps, ascent_steps=12, start=start, trace_probes=4)
    radius = eps * (THETA.abs() + 1)
    base = float(0.5 * (A * THETA ** 2).sum())
    best = float(0.5 * (A * (THETA.abs() + radius) ** 2).sum())  # the vertex δ_i = sign(θ_i)·r_i (either sign at 0)
    if start == "zero":  # from δ = 0 the coordinate with θ_i = 0 has zero gradient and never moves
        stuck = THETA == 0
        best = float(0.5 * (A * torch.where(stuck, torch.zeros_like(THETA), THETA.abs() + radius) ** 2).sum())
    assert r["loss"] == pytest.approx(base) and r["max_loss"] == pytest.approx(best, rel=1e-12)
    assert r["loss_increase"] == pytest.approx(best - base)
    assert r["sharpness"] == pytest.approx(100 * (best - base) / (1 + base))
    assert r["in_box"] and r["delta_linf_over_radius"] <= 1 + 1e-12
    assert r["top_eigenvalue"] == pytest.approx(3.0, rel=1e-9) and r["top_converged"]
    assert r["trace"] == pytest.approx(float(A.sum())) and r["trace_se"] == pytest.approx(0.0, abs=1e-12)
    assert r["ascent_losses"][0] == pytest.approx(base) and max(r["ascent_losses"]) == pytest.approx(best)


def test_sharpness_is_non_negative_and_scales_with_epsilon_on_a_network():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3)).double()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(30, 4, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (30,), generator=g)
    data = DataSplit(x, y, x[:4], y[:4], "classification", (4,), 3, num_classes=3)
    small = run(model, F.cross_entropy, data, epsilon=1e-4, ascent_steps=5, trace_probes=0, eig=False)
    large = run(model, F.cross_entropy, data, epsilon=1e-2, ascent_steps=5, trace_probes=0, eig=False)
    assert 0 <= small["sharpness"] < large["sharpness"] and small["in_box"] and large["in_box"]
    assert "top_eigenvalue" not in small and "trace" not in small and small["n_hvps"] == 0
    none = run(model, F.cross_entropy, data, ascent_steps=0, start="zero", trace_probes=0, eig=False)
    assert none["sharpness"] == 0.0  # δ = 0 only
    assert [float(p.sum()) for p in model.parameters()] == [float(p.sum()) for p in model.parameters()]


def test_plot_is_written(tmp_path):
    r = run(Point(), quadratic, point_data(), ascent_steps=3, trace_probes=2)
    (path,) = Sharpness(Sharpness.Params()).plot(r, tmp_path)
    assert path.name == "sharpness.png" and path.stat().st_size > 1000


TINY = """\
name: sharpness-cli
seed: 0
device: cpu
data: {name: digits, batch_size: 64}
model:
  arch: {name: mlp, widths: [8], activation: relu}
loss: cross_entropy
stages:
  train:
    kind: train
    optimizer: {name: sgd, lr: 0.1}
    steps: 20
  probe:
    kind: analyze
    from: train
    analyzers:
      - {name: sharpness, samples: 200, ascent_steps: 4, trace_probes: 5, epsilon: 0.0005}
"""


def test_cli_end_to_end(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text(TINY)
    result = CliRunner().invoke(main, ["run", str(path), "--json", "--store", str(tmp_path / "store")],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)["stages"]["probe"]
    r = out["results"]["sharpness"]
    assert r["sharpness"] >= 0 and r["in_box"] and r["epsilon"] == 0.0005 and r["samples"] == 200
    assert r["top_eigenvalue"] > 0 and r["n_hvps"] >= 6
    assert (Path(out["dir"]) / "plots" / "sharpness.png").is_file()
