"""distance: ‖θ − θ₀‖ and ‖θ − θ₀‖/‖θ₀‖ overall and per layer against hand computation; the CLI."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from geometry_helpers import TINY_HEAD, blobs, context, nnopt
from nnopt.plugins.analyzers.distance import Distance


def net(values: list[float]) -> nn.Module:
    m = nn.Sequential(nn.Linear(2, 1), nn.BatchNorm1d(1)).double()
    with torch.no_grad():
        w, b, g, beta = values
        m[0].weight.copy_(torch.tensor([[w, 0.0]]))
        m[0].bias.fill_(b)
        m[1].weight.fill_(g)
        m[1].bias.fill_(beta)
        m[1].running_mean.fill_(5.0)
    return m


def test_overall_and_per_layer_numbers_by_hand():
    theta, ref = net([3.0, 1.0, 2.0, 0.0]), net([0.0, 1.0, 1.0, 0.0])
    with torch.no_grad():
        ref[1].running_mean.fill_(1.0)
    r = Distance(Distance.Params(to="init")).analyze(context(theta, blobs(dim=2), {"init": ref}))
    # differences: linear weight (3, 0), bias 0, bn weight 1, bn bias 0 → ‖Δ‖ = √10; ‖θ₀‖ = √(0+1+1+0) = √2
    assert r["distance"] == pytest.approx(math.sqrt(10)) and r["ref_norm"] == pytest.approx(math.sqrt(2))
    assert r["relative"] == pytest.approx(math.sqrt(5)) and r["norm"] == pytest.approx(math.sqrt(9 + 1 + 4))
    assert r["layers"]["0"] == {"distance": pytest.approx(3.0), "relative": pytest.approx(3.0),
                                "norm": pytest.approx(math.sqrt(10)), "ref_norm": pytest.approx(1.0)}
    assert r["layers"]["1"]["distance"] == pytest.approx(1.0) and r["layers"]["1"]["relative"] == pytest.approx(1.0)
    assert r["tensors"]["0.bias"]["distance"] == 0.0 and r["tensors"]["0.weight"]["relative"] == math.inf
    assert "1.running_mean" not in r["tensors"]
    everything = Distance(Distance.Params(to="init", include="all")).analyze(context(theta, blobs(dim=2), {"init": ref}))
    assert everything["tensors"]["1.running_mean"]["distance"] == pytest.approx(4.0)
    assert everything["distance"] == pytest.approx(math.sqrt(10 + 16))


def test_params_and_plots(tmp_path):
    assert Distance.Params().to is None  # the analyzed stage's initialization
    theta, ref = net([3.0, 1.0, 2.0, 0.0]), net([1.0, 1.0, 1.0, 0.5])
    analyzer = Distance(Distance.Params(to="init"))
    r = analyzer.analyze(context(theta, blobs(dim=2), {"init": ref}))
    assert [f.name for f in analyzer.plot(r, tmp_path / "a")] == ["distance.png"]
    assert [f.name for f in analyzer.plot_series([(0, r), (5, r)], tmp_path / "b")] == ["distance.png"]


def test_cli_end_to_end(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text(TINY_HEAD.format(name="distance-tiny", norm="none") + """\
  probe:
    kind: analyze
    from: train
    analyzers:
      - {name: distance, to: train@init}
      - {name: distance, to: train}
      - distance
""")
    result = nnopt("run", str(path), "--json", "--store", str(tmp_path / "store"))
    assert result.exit_code == 0, result.stderr
    probe = json.loads(result.stdout)["stages"]["probe"]
    r, same = probe["results"]["distance"], probe["results"]["distance_2"]
    assert r["to"] == "train@0" and 0 < r["relative"] < 1 and set(r["layers"]) == {"linear1", "output"}
    assert same["distance"] == 0.0
    # without `to`: the analyzed stage's own step 0
    assert probe["results"]["distance_3"]["to"] == "train@0" and probe["results"]["distance_3"]["distance"] == r["distance"]
    assert (Path(probe["dir"]) / "plots" / "distance.png").is_file()


def test_the_default_reference_needs_the_analyzed_stage_to_keep_step_0(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text(TINY_HEAD.format(name="distance-tiny", norm="none").replace("keep: [0, 3, 6]", "keep: [3]") + """\
  probe: {kind: analyze, from: train, analyzers: [distance]}
""")
    result = nnopt("run", str(path), "--json", "--store", str(tmp_path / "store"))
    assert result.exit_code == 1
    assert "does not keep step 0" in json.loads(result.stdout)["stages"]["probe"]["message"]
