"""mode_connectivity: Bézier / polychain curves, the trained bend removing a known barrier,
BatchNorm statistics recomputed per t, and the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from geometry_helpers import TINY_HEAD, blobs, context, fit, mlp, nnopt
from nnopt.core.kinds import DataSplit
from nnopt.plugins.analyzers.mode_connectivity import ModeConnectivity, bezier, polychain
from nnopt.plugins.analyzers.weight_paths import recompute_bn


class Ring(nn.Module):
    """Outputs ‖w‖² − 1 for every input: under the square loss to 0, L(w) = (‖w‖² − 1)², minimal on
    the unit circle; the straight line between two points of it dips inside, a curve need not."""

    def __init__(self, w):
        super().__init__()
        self.w = nn.Parameter(torch.tensor(w, dtype=torch.float64))

    def forward(self, x):
        return (self.w.pow(2).sum() - 1.0) * torch.ones_like(x[:, :1])


def ring_data() -> DataSplit:
    x = torch.ones(16, 1, dtype=torch.float64)
    return DataSplit(x, torch.zeros(16, 1, dtype=torch.float64), x, torch.zeros(16, 1, dtype=torch.float64),
                     "regression", (1,), 1)


def run(models, data, loss_fn=F.cross_entropy, **params):
    params = {"a": "a", "b": "b", **params}
    return ModeConnectivity(ModeConnectivity.Params(**params)).analyze(context(nn.Identity(), data, models, loss_fn))


def test_curves_are_exact_at_the_ends_and_the_midpoint_bend_is_the_line():
    g = torch.Generator().manual_seed(0)
    a, b = {"w": torch.randn(3, 4, generator=g, dtype=torch.float64)}, {"w": torch.randn(3, 4, generator=g, dtype=torch.float64)}
    mid = {"w": 0.5 * (a["w"] + b["w"])}
    for t in (0.0, 0.2, 0.5, 0.9, 1.0):
        torch.testing.assert_close(bezier(a, mid, b, t)["w"], (1 - t) * a["w"] + t * b["w"])
        torch.testing.assert_close(polychain(a, mid, b, t)["w"], (1 - t) * a["w"] + t * b["w"])
    bend = {"w": torch.randn(3, 4, generator=g, dtype=torch.float64)}
    for curve in (bezier, polychain):
        assert torch.equal(curve(a, bend, b, 0.0)["w"], a["w"]) and torch.equal(curve(a, bend, b, 1.0)["w"], b["w"])
    torch.testing.assert_close(bezier(a, bend, b, 0.5)["w"], 0.25 * a["w"] + 0.5 * bend["w"] + 0.25 * b["w"])
    torch.testing.assert_close(polychain(a, bend, b, 0.5)["w"], bend["w"])
    # untrained (steps: 0) the analyzer's curve is the line, value for value
    data = blobs(dtype=torch.float64)
    r = run({"a": fit(mlp(0), data, 0), "b": fit(mlp(1), data, 1)}, data, steps=0, points=5)
    assert r["curve"]["train_loss"] == pytest.approx(r["line"]["train_loss"], abs=1e-12)
    assert r["curve_barrier"] == pytest.approx(r["line_barrier"], abs=1e-12) and r["bend_offset"] == 0.0


@pytest.mark.parametrize("curve", ["bezier", "polychain"])
def test_training_the_bend_removes_a_known_barrier(curve):
    """a = (1, 0), b = (−0.8, 0.6) on the unit circle: the chord passes ‖w‖² = 0.1 at its midpoint
    (loss 0.81); a Bézier arc through a trained bend stays near the circle; a chain of two straight
    segments cannot (each still cuts inside, by about 0.1 at best), but far less than the chord."""
    data = ring_data()
    models = {"a": Ring([1.0, 0.0]), "b": Ring([-0.8, 0.6])}
    r = run(models, data, loss_fn=F.mse_loss, curve=curve, steps=300, lr=0.05, batch_size=4, points=41)
    assert r["endpoints"] == [pytest.approx(0.0, abs=1e-12)] * 2
    assert r["line_barrier"] == pytest.approx(0.81, abs=0.01)
    assert r["curve_barrier"] < (0.1 if curve == "bezier" else 0.25) * r["line_barrier"]
    assert r["training"]["final_loss"] < 0.1 and r["bend_offset"] > 0.3
    assert r["curve"]["max"] < r["line"]["max"]
    again = run(models, data, loss_fn=F.mse_loss, curve=curve, steps=300, lr=0.05, batch_size=4, points=41)
    assert again["curve"]["values"] == r["curve"]["values"]  # seeded


def test_bn_recompute_re_estimates_the_statistics_at_every_t(monkeypatch):
    data = blobs(dtype=torch.float64)
    a, b = fit(mlp(0, bn=True), data, 0), fit(mlp(1, bn=True), data, 1)
    seen = []
    import nnopt.plugins.analyzers.weight_paths as wp

    def spy(model, x, batch_size=1024):
        recompute_bn(model, x, batch_size)
        seen.append(model[1].running_mean.clone())

    monkeypatch.setattr(wp, "recompute_bn", spy)
    r = run({"a": a, "b": b}, data, steps=5, points=3, bn="recompute")
    assert r["method"] == "loop" and len(seen) == 2 * 3  # the curve's and the line's points
    assert not torch.allclose(seen[0], seen[1]) and not torch.allclose(seen[1], seen[2])
    # at t = 0 the recomputed statistics are those of θ_a's own activations, not θ_a's stored ones
    with torch.no_grad():
        h = a[0](data.x_train)
    torch.testing.assert_close(seen[0], h.mean(0))
    r_eval = run({"a": a, "b": b}, data, steps=5, points=3, bn="eval")
    assert r_eval["method"] == "loop" and r_eval["line"]["train_loss"][0] != r["line"]["train_loss"][0]


def test_plot(tmp_path):
    data = blobs(dtype=torch.float64)
    analyzer = ModeConnectivity(ModeConnectivity.Params(a="a", b="b"))
    r = run({"a": mlp(0), "b": mlp(1)}, data, steps=3, points=3)
    assert [f.name for f in analyzer.plot(r, tmp_path)] == ["mode_connectivity.png"]


def test_cli_end_to_end(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text(TINY_HEAD.format(name="mc-tiny", norm="batchnorm") + """\
  other: {kind: train, seed: 1, optimizer: {name: sgd, lr: 0.05}, steps: 6}
  probe:
    kind: analyze
    from: train
    analyzers:
      - {name: mode_connectivity, a: train, b: other, steps: 4, points: 3, samples: 64}
      - {name: mode_connectivity, a: train, b: other, curve: polychain, bn: eval, steps: 4, points: 3, metric: error}
""")
    result = nnopt("run", str(path), "--json", "--store", str(tmp_path / "store"))
    assert result.exit_code == 0, result.stderr
    probe = json.loads(result.stdout)["stages"]["probe"]
    r, r2 = probe["results"]["mode_connectivity"], probe["results"]["mode_connectivity_2"]
    assert r["bn"] == "recompute" and r["t"] == [0.0, 0.5, 1.0] and r["training"]["steps"] == 4
    assert r2["curve_kind"] == "polychain" and r2["metric"] == "error" and r2["method"] == "loop"
    assert (Path(probe["dir"]) / "plots" / "mode_connectivity.png").is_file()
