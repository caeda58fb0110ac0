"""noise_scale.py: the two-batch-size estimate of B_simple = tr(Σ)/|G|² (McCandlish et al. 2018)
against the exact value from all n per-example gradients (torch.func.vmap of grad)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.func import functional_call, grad, vmap

from nnopt.plugins.diagnosis.noise_scale import gradient_noise_scale

F64 = torch.float64


def mse(out, y):
    return ((out - y) ** 2).sum(-1).mean()


def regression(n=512, d=32, noise=3.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=F64)
    y = x @ torch.randn(d, 1, generator=g, dtype=F64) + noise * torch.randn(n, 1, generator=g, dtype=F64)
    model = nn.Linear(d, 1).to(F64)
    with torch.no_grad():  # current weights away from the optimum: a clear mean gradient
        model.weight.copy_(torch.randn(1, d, generator=g, dtype=F64))
        model.bias.zero_()
    return model, x, y


def exact_noise_scale(model, x, y):
    """G = (1/n) Σ g_i, tr Σ = (1/n) Σ ‖g_i − G‖² from the per-example gradients g_i."""
    params = {k: v.detach() for k, v in model.named_parameters()}

    def one(p, xi, yi):
        return mse(functional_call(model, p, (xi[None],)), yi[None])

    per = vmap(grad(one), in_dims=(None, 0, 0))(params, x, y)
    flat = torch.cat([per[k].reshape(x.shape[0], -1) for k in params], 1)
    mean = flat.mean(0)
    tr = float(((flat - mean) ** 2).sum(1).mean())
    g2 = float((mean ** 2).sum())
    return tr / g2, tr, g2


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_estimate_within_25_percent_of_exact_b_simple(seed):
    model, x, y = regression(seed=seed)
    b_exact, tr, g2 = exact_noise_scale(model, x, y)
    assert 4 < b_exact < 256  # between the two batch sizes' range: the regime the estimator resolves
    before = [p.detach().clone() for p in model.parameters()]
    r = gradient_noise_scale(model, mse, x, y, torch.Generator().manual_seed(100 + seed), small_batch=8,
                             big_batch=128, repeats=128)
    assert r["b_simple"] == pytest.approx(b_exact, rel=0.25)
    assert r["trace_sigma"] == pytest.approx(tr, rel=0.25) and r["grad_sq"] == pytest.approx(g2, rel=0.25)
    assert (r["small_batch"], r["big_batch"], r["repeats"]) == (8, 128, 128)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert all(p.grad is None for p in model.parameters())


def test_noisier_data_has_a_larger_noise_scale():
    # the same weights and inputs; label noise adds only to tr Σ (the mean gradient changes little)
    def b(noise):
        model, x, y = regression(noise=noise)
        return gradient_noise_scale(model, mse, x, y, torch.Generator().manual_seed(0), 8, 128, repeats=32)["b_simple"]

    lo, hi = b(1.0), b(16.0)  # residual variance ≈ ‖w − w*‖² + σ² ≈ 32 + σ²
    assert hi > 3 * lo


def test_noise_free_gradients_give_zero():
    # every example the same: each per-example gradient equals G, so Σ = 0
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 6, generator=g, dtype=F64).repeat(256, 1)
    y = torch.randn(1, 1, generator=g, dtype=F64).repeat(256, 1)
    model = nn.Linear(6, 1).to(F64)
    r = gradient_noise_scale(model, mse, x, y, torch.Generator().manual_seed(0), 4, 64, repeats=4)
    assert r["grad_sq"] > 0
    assert r["b_simple"] == pytest.approx(0.0, abs=1e-8)


def test_pure_noise_gives_infinity():
    # at the least-squares optimum of the whole set G = 0: the |G|² estimate is noise around 0
    model, x, y = regression()
    xa = torch.cat([x, torch.ones(x.shape[0], 1, dtype=F64)], 1)
    sol = torch.linalg.lstsq(xa, y).solution
    with torch.no_grad():
        model.weight.copy_(sol[:-1].T)
        model.bias.copy_(sol[-1])
    out = [gradient_noise_scale(model, mse, x, y, torch.Generator().manual_seed(s), 8, 128, repeats=16)
           for s in range(6)]
    # |G|² ≈ 0: each estimate is ≤ 0 (inf) or noise, far beyond the batch sizes measured
    assert all(r["b_simple"] > 128 for r in out)
    assert any(math.isinf(r["b_simple"]) for r in out)


def test_rejects_bad_batch_sizes():
    model, x, y = regression(n=64)
    with pytest.raises(ValueError):
        gradient_noise_scale(model, mse, x, y, torch.Generator(), 32, 16)
    with pytest.raises(ValueError):
        gradient_noise_scale(model, mse, x, y, torch.Generator(), 8, 128)
