"""directions: Gaussian, filter-normalized random directions (Li et al. 2018) and PCA directions."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from nnopt.core.errors import StageError
from nnopt.plugins.analyzers.directions import (filter_normalize, gaussian_direction, pca_directions,
                                                random_directions)


def weights():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 5, 3), nn.BatchNorm2d(5), nn.Flatten(), nn.Linear(20, 7)).double()
    with torch.no_grad():
        model[3].weight[2].zero_()  # a pruned neuron
        model[1].weight.uniform_(0.5, 2.0)
    return {k: v.detach() for k, v in model.named_parameters()}


def test_filter_normalized_directions_match_the_weights_filter_norms():
    w = weights()
    d1, d2 = random_directions(w, torch.Generator().manual_seed(1))
    for d in (d1, d2):
        conv, lin = d["0.weight"], d["3.weight"]
        torch.testing.assert_close(conv.reshape(5, -1).norm(dim=1), w["0.weight"].reshape(5, -1).norm(dim=1))
        torch.testing.assert_close(lin.norm(dim=1), w["3.weight"].norm(dim=1))  # per output row, not per tensor
        assert torch.equal(lin[2], torch.zeros(20))  # a zero filter gets a zero direction
        for name in ("0.bias", "1.weight", "1.bias", "3.bias"):  # ignore: biasbn
            assert torch.equal(d[name], torch.zeros_like(w[name]))
    assert not torch.allclose(d1["0.weight"], d2["0.weight"])
    included = filter_normalize(gaussian_direction(w, torch.Generator().manual_seed(2)), w, ignore="none")
    torch.testing.assert_close(included["1.weight"].abs(), w["1.weight"].abs())


def test_random_directions_are_gaussian_not_uniform():
    w = {"big": torch.zeros(200, 100, dtype=torch.float64)}
    d = gaussian_direction(w, torch.Generator().manual_seed(0))["big"]
    assert abs(float(d.mean())) < 0.02 and float(d.std()) == pytest.approx(1.0, abs=0.02)
    assert float((d < 0).double().mean()) == pytest.approx(0.5, abs=0.02)  # not all positive
    kurtosis = float(((d - d.mean()) ** 4).mean() / d.var() ** 2)
    assert kurtosis == pytest.approx(3.0, abs=0.15)  # a Gaussian's 3, a uniform's 1.8
    again = gaussian_direction(w, torch.Generator().manual_seed(0))["big"]
    assert torch.equal(d, again)  # seeded


def test_pca_directions_recover_a_planar_trajectory():
    g = torch.Generator().manual_seed(0)
    e1 = torch.randn(30, generator=g, dtype=torch.float64)
    e1 /= e1.norm()
    e2 = torch.randn(30, generator=g, dtype=torch.float64)
    e2 -= (e2 @ e1) * e1
    e2 /= e2.norm()
    origin = {"w": torch.randn(5, 6, generator=g, dtype=torch.float64)}
    coords = [(3.0, 1.0), (2.0, -0.5), (1.0, 0.4), (0.0, 0.0)]
    traj = [{"w": origin["w"] + (a * e1 + b * e2).reshape(5, 6)} for a, b in coords]
    out = pca_directions(traj, origin)
    d1, d2 = (d["w"].reshape(-1) for d in out["directions"])
    assert float(d1.norm()) == pytest.approx(1.0) and float(d1 @ d2) == pytest.approx(0.0, abs=1e-12)
    basis = torch.stack([e1, e2])  # both directions lie in the trajectory's plane
    for d in (d1, d2):
        assert float((basis @ d).norm()) == pytest.approx(1.0, abs=1e-10)
    assert sum(out["explained"]) == pytest.approx(1.0)
    for (a, b), (px, py) in zip(coords, out["coords"]):  # projections keep distances in the plane
        assert px ** 2 + py ** 2 == pytest.approx(a ** 2 + b ** 2, rel=1e-10)
    with pytest.raises(StageError, match="fewer than two directions"):
        pca_directions([{"w": origin["w"] + t * e1.reshape(5, 6)} for t in (1.0, 2.0, 3.0)], origin)
