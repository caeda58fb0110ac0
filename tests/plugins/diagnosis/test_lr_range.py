"""lr_range.py: Smith's LR range test on least squares, where plain SGD becomes unstable at
η = 2/λ_max (λ_max of H = XᵀX/n, exact by eigvalsh)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from nnopt.plugins.diagnosis.lr_range import lr_range_test, plot_lr_range

F64 = torch.float64


def half_mse(out, y):
    return 0.5 * ((out - y) ** 2).sum(-1).mean()


def least_squares(n=256, d=12, seed=0, noise=0.1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=F64) * torch.linspace(0.5, 1.6, d, dtype=F64)
    y = x @ torch.randn(d, 1, generator=g, dtype=F64) + noise * torch.randn(n, 1, generator=g, dtype=F64)
    model = nn.Linear(d, 1, bias=False).to(F64)
    with torch.no_grad():
        model.weight.copy_(torch.randn(1, d, generator=g, dtype=F64))
    critical = 2.0 / float(torch.linalg.eigvalsh(x.T @ x / n)[-1])
    return model, x, y, critical


def sgd(params):
    return torch.optim.SGD(params, lr=1.0)  # the test overwrites the lr every step


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_diverges_past_two_over_lambda_and_suggests_a_stable_rate(seed):
    model, x, y, crit = least_squares(seed=seed)
    before = model.weight.detach().clone()
    lr_min = 1e-3 * crit
    r = lr_range_test(model, sgd, half_mse, x, y, 64, torch.Generator().manual_seed(seed), lr_min, 10 * crit)
    # GD on the quadratic is stable below 2/λ (mini-batch noise keeps exciting the top direction,
    # so its excess loss grows as ∏ (η_t λ − 1)² once η_t > 2/λ). The stop is detected with a lag:
    # the smoothed loss must exceed 4× its minimum, i.e. the raw loss grow by ~4/(1 − β) = 40×
    # beyond it; at this sweep's 1.097× per step, k steps past 2/λ multiply the excess by about
    # exp(2k² ln 1.097), and 3·(2/λ) (k ≈ 12 steps) would need an excess that started below
    # 1e-11 of the loss — far less than one batch's noise.
    assert crit < r["diverged_at"] <= 3 * crit
    assert r["steps"] < 100 and len(r["lrs"]) == len(r["losses"]) <= r["steps"]
    assert crit / 2 < r["min_loss_lr"] < r["diverged_at"]  # the loss falls until the instability
    assert 10 * lr_min < r["suggested_lr"] < crit
    assert torch.equal(model.weight, before) and model.weight.grad is None


def test_faster_smoothing_reacts_within_a_factor_two():
    model, x, y, crit = least_squares(seed=3)
    r = lr_range_test(model, sgd, half_mse, x, y, 64, torch.Generator().manual_seed(0), 1e-3 * crit, 10 * crit,
                      smoothing=0.3)
    assert crit < r["diverged_at"] < 2 * crit


def test_rates_follow_the_exponential_schedule_and_stable_sweeps_run_to_the_end():
    model, x, y, crit = least_squares(seed=4)
    lr_min, lr_max, steps = 1e-3 * crit, 0.5 * crit, 40
    r = lr_range_test(model, sgd, half_mse, x, y, 32, torch.Generator().manual_seed(0), lr_min, lr_max, steps=steps)
    assert r["diverged_at"] is None and r["steps"] == steps and len(r["lrs"]) == steps
    expected = [lr_min * (lr_max / lr_min) ** (t / (steps - 1)) for t in range(steps)]
    assert r["lrs"] == pytest.approx(expected, rel=1e-12)
    assert r["losses"][-1] < 0.5 * r["losses"][0]
    assert all(math.isfinite(v) for v in r["losses"])


def test_no_suggestion_when_the_loss_never_decreases():
    # noise-free targets and the model at the solution: every batch loss is 0
    g = torch.Generator().manual_seed(0)
    x = torch.randn(128, 4, generator=g, dtype=F64)
    w = torch.randn(1, 4, generator=g, dtype=F64)
    model = nn.Linear(4, 1, bias=False).to(F64)
    with torch.no_grad():
        model.weight.copy_(w)
    r = lr_range_test(model, sgd, half_mse, x, x @ w.T, 32, torch.Generator().manual_seed(0), 1e-4, 1e-2, steps=20)
    assert r["suggested_lr"] is None


def test_plot_is_written(tmp_path):
    model, x, y, crit = least_squares(seed=5)
    r = lr_range_test(model, sgd, half_mse, x, y, 64, torch.Generator().manual_seed(0), 1e-3 * crit, 10 * crit)
    out = plot_lr_range({**r, "lr": 0.5 * crit}, tmp_path / "lr" / "range.png")
    assert out.exists() and out.stat().st_size > 1000
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
