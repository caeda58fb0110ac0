"""jacobian_spectrum: singular values of ∂z^L/∂x against weight products and hand-built Jacobians."""

from __future__ import annotations

import json

import pytest
import torch
from pydantic import ValidationError
from torch import nn

from nnopt.core.errors import StageError
from nnopt.core.kinds import AnalysisContext, DataSplit
from nnopt.core.stage import json_safe
from nnopt.plugins.analyzers import jacobian_spectrum as module
from nnopt.plugins.analyzers.jacobian_spectrum import JacobianSpectrum


def data(n: int = 16, d: int = 5, k: int = 4, seed: int = 0) -> DataSplit:
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(n, d, generator=g), torch.randn(n, k, generator=g)
    return DataSplit(x, y, x[:0], y[:0], "regression", (d,), k)


def analyze(model, split, seed=0, **params):
    ctx = AnalysisContext(model, None, split, torch.device("cpu"), torch.Generator().manual_seed(seed))
    return JacobianSpectrum(JacobianSpectrum.Params(**params)).analyze(ctx)


def linear_net(*dims: int, seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(*[nn.Linear(a, b) for a, b in zip(dims, dims[1:])])


def test_a_linear_network_has_the_singular_values_of_its_weight_product():
    model = linear_net(5, 7, 6, 4)  # biases do not enter J
    product = model[2].weight @ model[1].weight @ model[0].weight
    sv = torch.linalg.svdvals(product.double())
    r = analyze(model, data(), samples=3)
    assert r["shape"] == [4, 5] and r["count"] == 3 * 4 and r["samples"] == 3
    assert r["max"] == pytest.approx(sv.max().item(), rel=1e-5)
    assert r["min"] == pytest.approx(sv.min().item(), rel=1e-5)
    assert r["mean_sq"] == pytest.approx(sv.square().mean().item(), rel=1e-5)  # the same J at every input
    assert r["std_sq"] == pytest.approx(sv.square().std(unbiased=False).item(), rel=1e-4)
    assert r["quantiles"]["0.5"] == pytest.approx(torch.quantile(sv.repeat(3), 0.5).item(), rel=1e-5)
    assert r["max_min_ratio"] == pytest.approx((sv.max() / sv.min()).item(), rel=1e-5)
    assert sum(r["histogram"]["counts"]) == 12 and len(r["histogram"]["edges"]) == 31
    json.dumps(json_safe(r))


def test_an_orthogonal_linear_network_is_an_exact_isometry():
    torch.manual_seed(0)
    model = nn.Sequential(*[nn.Linear(6, 6, bias=False) for _ in range(5)])
    for layer in model:
        nn.init.orthogonal_(layer.weight)
    r = analyze(model, data(d=6, k=6), samples=4)
    assert r["max"] == pytest.approx(1.0, abs=1e-5) and r["min"] == pytest.approx(1.0, abs=1e-5)
    assert r["mean_sq"] == pytest.approx(1.0, abs=1e-5) and r["std_sq"] == pytest.approx(0.0, abs=1e-5)
    assert sum(r["histogram"]["counts"]) == 24  # a degenerate range still gets a histogram


def test_layer_takes_the_jacobian_to_an_inner_module():
    model = linear_net(5, 7, 4)
    model.insert(1, nn.Tanh())
    r = analyze(model, data(), samples=2, layer="0")
    sv = torch.linalg.svdvals(model[0].weight.double())
    assert r["layer"] == "0" and r["shape"] == [7, 5]
    assert r["max"] == pytest.approx(sv.max().item(), rel=1e-5) and r["min"] == pytest.approx(sv.min().item(), rel=1e-5)
    with pytest.raises(StageError, match="no module 'bogus'"):
        analyze(model, data(), layer="bogus")


def test_a_tanh_network_matches_the_hand_built_jacobian():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, 3))
    split = data(n=1)
    x = split.x_train[0].double()
    W1, b1, W2 = (t.detach().double() for t in (model[0].weight, model[0].bias, model[2].weight))
    J = W2 @ torch.diag(1 - torch.tanh(W1 @ x + b1) ** 2) @ W1  # D = diag(φ'(h))
    sv = torch.linalg.svdvals(J)
    r = analyze(model, split, samples=1)
    assert r["max"] == pytest.approx(sv.max().item(), rel=1e-5) and r["min"] == pytest.approx(sv.min().item(), rel=1e-5)
    assert r["mean_sq"] == pytest.approx(sv.square().mean().item(), rel=1e-5)


def test_chunks_under_max_entries_give_the_same_spectrum_and_one_too_large_jacobian_is_refused():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 6), nn.ReLU(), nn.Linear(6, 4))
    whole = analyze(model, data(), samples=8)
    chunked = analyze(model, data(), samples=8, max_entries=2 * 4 * 5)  # two examples at a time
    for key in ("mean_sq", "std_sq", "max", "min", "mean"):
        assert chunked[key] == pytest.approx(whole[key], rel=1e-6), key
    assert chunked["histogram"]["counts"] == whole["histogram"]["counts"]
    with pytest.raises(StageError, match="max_entries"):
        analyze(model, data(), max_entries=19)  # one J has 4 × 5 = 20 entries
    with pytest.raises(ValidationError):
        JacobianSpectrum.Params(samples=1000)


def test_the_autograd_fallback_gives_the_same_spectrum(monkeypatch):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, 4))
    fast = analyze(model, data(), samples=3)

    def refuse(*args, **kwargs):
        raise RuntimeError("this model is not supported by torch.func")

    monkeypatch.setattr(torch.func, "vmap", refuse)
    slow = analyze(model, data(), samples=3)
    assert slow["mean_sq"] == pytest.approx(fast["mean_sq"], rel=1e-6)
    assert slow["max"] == pytest.approx(fast["max"], rel=1e-6) and slow["min"] == pytest.approx(fast["min"], rel=1e-6)


def test_gaussian_inputs_and_the_seeded_subset():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, 4))
    a, b, c = (analyze(model, data(), seed=s, samples=2) for s in (1, 1, 2))
    assert a == b and a != c
    # Gaussian inputs of a tiny std: J is the Jacobian at x = 0, W2 diag(tanh'(b1)) W1
    small = analyze(model, data(), samples=2, inputs="gaussian", input_std=1e-4)
    W1, b1, W2 = (t.detach().double() for t in (model[0].weight, model[0].bias, model[2].weight))
    at_zero = torch.linalg.svdvals(W2 @ torch.diag(1 - torch.tanh(b1) ** 2) @ W1)
    assert small["max"] == pytest.approx(at_zero.max().item(), rel=1e-3)
    assert small["min"] == pytest.approx(at_zero.min().item(), rel=1e-3)


def test_plots(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 6), nn.ReLU(), nn.Linear(6, 4))
    analyzer = JacobianSpectrum(JacobianSpectrum.Params(samples=4))
    r = analyzer.analyze(AnalysisContext(model, None, data(), torch.device("cpu"), torch.Generator().manual_seed(0)))
    assert analyzer.plot(r, tmp_path) == [tmp_path / "jacobian_spectrum.png"]
    assert analyzer.plot_series([(0, r), (10, r)], tmp_path) == [tmp_path / "jacobian_spectrum_track.png"]
    assert all(p.stat().st_size > 1000 for p in tmp_path.iterdir())
    assert analyzer.plot({"histogram": {}}, tmp_path / "empty") == []
    assert module._summary(torch.tensor([0.0, 2.0], dtype=torch.float64), 4)["max_min_ratio"] == float("inf")
