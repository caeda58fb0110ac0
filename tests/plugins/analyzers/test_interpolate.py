"""interpolate: θ(α) = (1 − α)θ_a + αθ_b with extrapolation, its monotonicity summary, and the CLI."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from pydantic import ValidationError
from torch import nn

from geometry_helpers import TINY_HEAD, blobs, context, fit, mlp, nnopt
from nnopt.core.errors import StageError
from nnopt.plugins.analyzers.interpolate import Interpolate, max_bump
from nnopt.plugins.stages._common import evaluate


def run(models, data, **params):
    params = {"between": ["a", "b"], **params}
    return Interpolate(Interpolate.Params(**params)).analyze(context(nn.Identity(), data, models))


def test_the_path_is_exact_at_both_ends_and_extrapolates():
    data = blobs(dtype=torch.float64)
    a, b = mlp(0), fit(mlp(1), data, 1)
    r = run({"a": a, "b": b}, data, alphas={"start": -0.5, "stop": 1.5, "points": 41})
    assert r["alphas"][0] == -0.5 and r["alphas"][-1] == 1.5 and 0.0 in r["alphas"] and 1.0 in r["alphas"]
    for ref, alpha, model in (("a", 0.0, a), ("b", 1.0, b)):
        i = r["alphas"].index(alpha)
        for split, (x, y) in (("train", (data.x_train, data.y_train)), ("test", (data.x_test, data.y_test))):
            exact = evaluate(model, F.cross_entropy, x, y, True)
            assert r[f"{split}_loss"][i] == pytest.approx(exact["loss"], rel=1e-12)
            assert r[f"{split}_accuracy"][i] == exact["accuracy"]
        assert r["endpoints"][ref]["train_loss"] == r["train_loss"][i]
    # an extrapolated point by hand: α = 1.5 is θ_b + 0.5(θ_b − θ_a)
    probe = mlp(2)
    sa, sb = a.state_dict(), b.state_dict()
    probe.load_state_dict({k: sb[k] + 0.5 * (sb[k] - sa[k]) for k in sa})
    assert r["test_loss"][-1] == pytest.approx(evaluate(probe, F.cross_entropy, data.x_test, data.y_test, True)["loss"],
                                              rel=1e-10)
    assert r["method"] == "loop"  # auto, on a CPU
    vmapped = run({"a": a, "b": b}, data, alphas={"start": -0.5, "stop": 1.5, "points": 41}, method="vmap")
    assert vmapped["method"] == "vmap" and vmapped["train_loss"] == pytest.approx(r["train_loss"], abs=1e-10)


def test_a_linear_model_under_a_convex_loss_gives_a_convex_line():
    data = blobs(dim=5, classes=4, dtype=torch.float64)
    g = torch.Generator().manual_seed(3)
    ends = {}
    for name in ("a", "b"):
        m = nn.Linear(5, 4).double()
        with torch.no_grad():
            m.weight.copy_(3.0 * torch.randn(4, 5, generator=g, dtype=torch.float64))
        ends[name] = m
    r = run(ends, data, alphas={"start": -1.0, "stop": 2.0, "points": 31})
    v = r["train_loss"]
    second = [v[i - 1] - 2 * v[i] + v[i + 1] for i in range(1, len(v) - 1)]
    assert min(second) >= -1e-9  # convex along the whole line, extrapolation included
    assert 0.0 <= r["barrier"] <= 1e-9


def test_max_bump_and_the_monotonicity_summary():
    assert max_bump([0, 0.25, 0.5, 0.75, 1], [3.0, 2.0, 2.5, 1.0, 1.2]) == (0.5, 0.5)
    assert max_bump([0, 0.5, 1], [3.0, 2.0, 1.0]) == (0.0, 0)
    assert max_bump([1, 0, 0.5], [1.0, 3.0, 2.0]) == (0.0, 0)  # sorted by α
    assert math.isnan(max_bump([0, 1], [math.nan, 1.0])[0])
    data = blobs(dtype=torch.float64)
    init, trained = mlp(0), fit(mlp(0), data, 0, steps=100)
    r = run({"a": init, "b": trained}, data, alphas={"start": 0, "stop": 1, "points": 11}, tolerance=0.0)
    m = r["monotone"]
    inside = r["train_loss"]
    assert m["max_bump"] == max_bump(r["alphas"], inside)[0] and m["is_monotone"] == (m["max_bump"] <= 0.0)
    assert m["decrease"] == pytest.approx(inside[0] - inside[-1])
    err = run({"a": init, "b": trained}, data, alphas={"start": 0, "stop": 1, "points": 5}, metric="test_error")
    assert err["monotone"]["metric"] == "test_error"


def test_bad_input_is_a_clear_error():
    with pytest.raises(ValidationError, match="between"):
        Interpolate.Params(between=["a"])
    with pytest.raises(ValidationError, match="between"):
        Interpolate.Params(between=["a", "b", "c"])
    with pytest.raises(ValidationError, match="stop"):
        Interpolate.Params(between=["a", "b"], alphas={"start": 1, "stop": 0, "points": 5})
    with pytest.raises(ValidationError):
        Interpolate.Params(between=["a", "b"], bn="train")
    data = blobs()
    with pytest.raises(StageError, match="share an architecture"):
        run({"a": nn.Linear(4, 3), "b": nn.Linear(4, 2)}, data)
    regression = data.__class__(data.x_train, data.x_train[:, :1], data.x_test, data.x_test[:, :1], "regression", (4,), 1)
    with pytest.raises(StageError, match="train_loss or test_loss"):
        run({"a": nn.Linear(4, 1), "b": nn.Linear(4, 1)}, regression, metric="train_error")


def test_plot(tmp_path):
    data = blobs(dtype=torch.float64)
    analyzer = Interpolate(Interpolate.Params(between=["a", "b"]))
    r = run({"a": mlp(0), "b": mlp(1)}, data, alphas={"start": -0.5, "stop": 1.5, "points": 9})
    files = analyzer.plot(r, tmp_path)
    assert [f.name for f in files] == ["interpolate.png"] and files[0].read_bytes()[:4] == b"\x89PNG"


def test_cli_end_to_end(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text(TINY_HEAD.format(name="interp-tiny", norm="batchnorm") + """\
  probe:
    kind: analyze
    from: train
    analyzers:
      - {name: interpolate, between: [train@0, train], alphas: {start: -0.5, stop: 1.5, points: 5}}
      - {name: interpolate, between: [train@3, train], alphas: {start: 0, stop: 1, points: 3}, bn: recompute}
""")
    result = nnopt("run", str(path), "--json", "--store", str(tmp_path / "store"))
    assert result.exit_code == 0, result.stderr
    probe = json.loads(result.stdout)["stages"]["probe"]
    r, r2 = probe["results"]["interpolate"], probe["results"]["interpolate_2"]
    assert r["a"] == "train@0" and r["alphas"] == [-0.5, 0.0, 0.5, 1.0, 1.5] and len(r["test_accuracy"]) == 5
    assert isinstance(r["monotone"]["is_monotone"], bool) and r["method"] == "loop"  # auto, on a CPU
    assert r2["bn"] == "recompute" and r2["method"] == "loop"
    assert (Path(probe["dir"]) / "plots" / "interpolate.png").is_file()
    bad = tmp_path / "q.yaml"
    bad.write_text(path.read_text().replace("between: [train@3, train]", "between: [train@4, train]"))
    result = nnopt("validate", str(bad))
    assert result.exit_code == 2 and "does not keep step 4" in result.stderr and "between" in result.stderr
