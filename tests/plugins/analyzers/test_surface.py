"""surface: the loss on a plane of filter-normalized random or PCA directions; vmap grid = loop grid."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from pydantic import ValidationError
from torch import nn

from geometry_helpers import TINY_HEAD, blobs, context, fit, mlp, nnopt
from nnopt.core.errors import StageError
from nnopt.plugins.analyzers.directions import random_directions
from nnopt.plugins.analyzers.surface import Surface
from nnopt.plugins.stages._common import evaluate

GRID = {"x": {"start": -1, "stop": 1, "points": 5}, "y": {"start": -0.5, "stop": 1, "points": 4}}


def run(model, data, models=None, **params):
    return Surface(Surface.Params(**params)).analyze(context(model, data, models))


def test_centre_equals_the_reference_loss_and_points_are_theta_plus_steps():
    data = blobs(dtype=torch.float64)
    model = fit(mlp(0, bn=True), data, 0)
    r = run(model, data, **GRID)
    assert r["x"] == [-1.0, -0.5, 0.0, 0.5, 1.0] and r["y"] == [-0.5, 0.0, 0.5, 1.0]
    assert len(r["loss"]) == 4 and all(len(row) == 5 for row in r["loss"])
    exact = evaluate(model, F.cross_entropy, data.x_train, data.y_train, True)
    # (0, 0) is θ* itself (θ* + 0·δ + 0·η is θ* exactly; batched matmuls may round differently)
    assert r["loss"][1][2] == pytest.approx(exact["loss"], rel=1e-13) and r["reference_loss"] == exact["loss"]
    assert r["accuracy"][1][2] == exact["accuracy"]
    # the point (x=0.5, y=1.0) by hand, with the same seeded directions
    weights = {k: v.detach() for k, v in model.named_parameters()}
    d1, d2 = random_directions(weights, torch.Generator().manual_seed(0))
    probe = mlp(0, bn=True)
    probe.load_state_dict({**model.state_dict(), **{k: w + 0.5 * d1[k] + 1.0 * d2[k] for k, w in weights.items()}})
    assert r["loss"][3][3] == pytest.approx(evaluate(probe, F.cross_entropy, data.x_train, data.y_train, True)["loss"],
                                            rel=1e-12)
    assert r["method"] == "loop" and r["points"] == 20  # auto, on a CPU


def test_vmap_grid_equals_loop_grid():
    data = blobs(dtype=torch.float32)
    model = fit(mlp(3, bn=True, dtype=torch.float32), data, 3)
    fast = run(model, data, chunk=3, batch_size=40, **GRID)
    slow = run(model, data, method="loop", batch_size=40, **GRID)
    assert slow["method"] == "loop"
    for row_f, row_s in zip(fast["loss"], slow["loss"]):
        assert row_f == pytest.approx(row_s, abs=1e-6)
    assert fast["accuracy"] == slow["accuracy"]


def test_bn_recompute_and_ignore_options_change_the_surface():
    data = blobs(dtype=torch.float64)
    model = fit(mlp(0, bn=True), data, 0)
    plain = run(model, data, **GRID)
    recomputed = run(model, data, bn="recompute", **GRID)
    assert recomputed["method"] == "loop" and recomputed["loss"] != plain["loss"]
    moved = run(model, data, ignore="none", **GRID)
    assert moved["loss"][1][2] == plain["loss"][1][2] and moved["loss"] != plain["loss"]
    no_bn = mlp(0)
    assert run(no_bn, data, bn="recompute", method="vmap", **GRID)["method"] == "vmap"  # nothing to recompute


def test_pca_surface_projects_the_trajectory():
    data = blobs(dtype=torch.float64)
    steps = {}
    model = mlp(0)
    steps["t0"] = mlp(0)
    for k in (1, 2, 3):
        model = fit(model, data, k, steps=20)
        steps[f"t{k}"] = mlp(0)
        steps[f"t{k}"].load_state_dict(model.state_dict())
    r = run(steps["t3"], data, steps, directions="pca", trajectory=["t0", "t1", "t2", "t3"])
    assert [t["ref"] for t in r["trajectory"]] == ["t0", "t1", "t2", "t3"]
    assert r["trajectory"][-1]["x"] == pytest.approx(0.0, abs=1e-12)  # the centre's own projection
    assert 0.0 < r["explained_variance"][1] <= r["explained_variance"][0] <= 1.0
    assert r["direction_norms"] == [pytest.approx(1.0), pytest.approx(1.0)]
    xs = [t["x"] for t in r["trajectory"]]
    assert r["x"][0] < min(xs) and r["x"][-1] > max(xs) and len(r["x"]) == 21  # the automatic span covers it


def test_bad_input_is_a_clear_error():
    with pytest.raises(ValidationError, match="needs `trajectory`"):
        Surface.Params(directions="pca")
    with pytest.raises(ValidationError, match="only used with directions: pca"):
        Surface.Params(trajectory=["a", "b", "c"])
    with pytest.raises(ValidationError, match="trajectory"):
        Surface.Params(directions="pca", trajectory=["a", "b"])
    with pytest.raises(ValidationError, match="name the stage alone"):
        Surface.Params(directions="pca", trajectory="train@3")
    with pytest.raises(ValidationError):
        Surface.Params(x={"start": 0, "stop": 1})
    data = blobs(dtype=torch.float64)
    with pytest.raises(StageError, match="share an architecture"):
        run(mlp(0), data, {"a": mlp(0), "b": mlp(1), "c": nn.Sequential(nn.Linear(4, 9), nn.Tanh(), nn.Linear(9, 3))
                           .double()}, directions="pca", trajectory=["a", "b", "c"])


def test_plots(tmp_path):
    data = blobs(dtype=torch.float64)
    analyzer = Surface(Surface.Params(**GRID))
    r = run(mlp(0), data, **GRID)
    assert [f.name for f in analyzer.plot(r, tmp_path)] == ["surface_contour.png", "surface_3d.png"]


def test_cli_end_to_end(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text(TINY_HEAD.format(name="surface-tiny", norm="none") + """\
  probe:
    kind: analyze
    from: train
    analyzers:
      - {name: surface, x: {start: -1, stop: 1, points: 3}, y: {start: -1, stop: 1, points: 3}, samples: 100}
      - {name: surface, directions: pca, trajectory: [train@0, train@3, train@6], samples: 100,
         x: {start: -1, stop: 1, points: 3}, y: {start: -1, stop: 1, points: 2}}
      - {name: surface, directions: pca, trajectory: train, samples: 100,
         x: {start: -1, stop: 1, points: 3}, y: {start: -1, stop: 1, points: 2}}
""")
    result = nnopt("run", str(path), "--json", "--store", str(tmp_path / "store"))
    assert result.exit_code == 0, result.stderr
    probe = json.loads(result.stdout)["stages"]["probe"]
    r, r2 = probe["results"]["surface"], probe["results"]["surface_2"]
    assert r["samples"] == 100 and len(r["loss"]) == 3 and r["loss"][1][1] == pytest.approx(r["reference_loss"], rel=1e-6)
    assert r2["directions"] == "pca" and len(r2["trajectory"]) == 3
    # a stage alone: every step it keeps, then its final weights
    assert [t["ref"] for t in probe["results"]["surface_3"]["trajectory"]] == ["train@0", "train@3", "train@6", "train"]
    plots = Path(probe["dir"]) / "plots"
    assert (plots / "surface_contour.png").is_file() and (plots / "surface_2_surface_3d.png").is_file()
