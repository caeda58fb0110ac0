"""curvature.py: λ_max by Lanczos on least squares (where H = XᵀX/n exactly), the preconditioned
λ_max(P^{-1/2} H P^{-1/2}), Adam's P from torch's state, and the stability thresholds checked
against the actual optimizers running on that quadratic."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from nnopt.plugins.diagnosis.curvature import adam_preconditioner, stability_threshold, top_eigenvalue

F64 = torch.float64


def half_mse(out, y):
    """L(w) = (1/2n) ‖Xw − y‖²: its Hessian in w is XᵀX/n."""
    return 0.5 * ((out - y) ** 2).sum(-1).mean()


def least_squares(n=256, d=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    # columns of different scales: a spread spectrum (condition number ~ 10)
    scales = torch.linspace(0.5, 1.6, d, dtype=F64)
    x = torch.randn(n, d, generator=g, dtype=F64) * scales
    y = x @ torch.randn(d, 1, generator=g, dtype=F64) + 0.1 * torch.randn(n, 1, generator=g, dtype=F64)
    model = nn.Linear(d, 1, bias=False).to(F64)
    with torch.no_grad():
        model.weight.copy_(torch.randn(1, d, generator=g, dtype=F64))
    return model, x, y


def test_top_eigenvalue_is_the_largest_eigenvalue_of_xtx_over_n():
    model, x, y = least_squares()
    exact = float(torch.linalg.eigvalsh(x.T @ x / x.shape[0])[-1])
    before = model.weight.detach().clone()
    r = top_eigenvalue(model, half_mse, x, y, torch.Generator().manual_seed(1))
    assert r["lambda_max"] == pytest.approx(exact, rel=1e-3)
    assert r["preconditioned"] is False and 1 <= r["matvecs"] <= 60 and r["seconds"] >= 0
    assert torch.equal(model.weight, before)


def test_preconditioned_top_eigenvalue_is_that_of_p_half_h_p_half():
    model, x, y = least_squares(seed=2)
    h = x.T @ x / x.shape[0]
    p = torch.linspace(0.2, 3.0, h.shape[0], dtype=F64).flip(0)  # strongly non-uniform
    d = p.rsqrt()
    exact = float(torch.linalg.eigvalsh(d[:, None] * h * d[None, :])[-1])
    plain = float(torch.linalg.eigvalsh(h)[-1])
    r = top_eigenvalue(model, half_mse, x, y, torch.Generator().manual_seed(0), preconditioner={"weight": p[None, :]})
    assert r["preconditioned"] is True
    assert r["lambda_max"] == pytest.approx(exact, rel=1e-3)
    assert abs(exact - plain) > 0.1 * plain  # the preconditioner matters here: the test can tell


def test_measured_in_eval_mode_and_mode_restored():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(64, 6, generator=g), torch.randn(64, 1, generator=g)
    model = nn.Sequential(nn.Linear(6, 16), nn.Dropout(0.5), nn.Tanh(), nn.Linear(16, 1))
    model.train()
    a = top_eigenvalue(model, half_mse, x, y, torch.Generator().manual_seed(3))
    b = top_eigenvalue(model, half_mse, x, y, torch.Generator().manual_seed(3))
    assert model.training and all(m.training for m in model.modules())
    assert a["lambda_max"] == b["lambda_max"]  # dropout off while measuring: a fixed function


def _distance_after(model, x, y, make_opt, steps=200):
    """‖w_T − w*‖ / ‖w_0 − w*‖ of full-batch training on the quadratic."""
    model = copy.deepcopy(model)
    w_star = torch.linalg.lstsq(x, y).solution.T
    start = float(torch.linalg.vector_norm(model.weight.detach() - w_star))
    opt = make_opt(model.parameters())
    for _ in range(steps):
        opt.zero_grad()
        half_mse(model(x), y).backward()
        opt.step()
        if not torch.isfinite(model.weight).all():
            return float("inf")
    return float(torch.linalg.vector_norm(model.weight.detach() - w_star)) / start


@pytest.mark.parametrize("factor", [0.95, 1.05])
def test_gd_converges_below_two_over_lambda_and_diverges_above(factor):
    model, x, y = least_squares(seed=4)
    lam = top_eigenvalue(model, half_mse, x, y, torch.Generator().manual_seed(0))["lambda_max"]
    lr = factor * 2.0 / lam
    rule = stability_threshold("sgd", {"lr": lr})
    assert rule["threshold"] == pytest.approx(2.0 / lr) and rule["preconditioned"] is False
    ratio = _distance_after(model, x, y, lambda ps: torch.optim.SGD(ps, lr=lr), steps=150)
    if lam < rule["threshold"]:
        assert factor < 1 and ratio < 1e-2
    else:
        assert factor > 1 and ratio > 1e3


@pytest.mark.parametrize("factor", [0.97, 1.03])
def test_heavy_ball_stable_below_two_one_plus_beta_over_lambda(factor):
    model, x, y = least_squares(seed=5)
    lam = top_eigenvalue(model, half_mse, x, y, torch.Generator().manual_seed(0))["lambda_max"]
    beta = 0.9
    lr = factor * 2 * (1 + beta) / lam
    rule = stability_threshold("sgd", {"lr": lr, "momentum": beta})
    assert rule["threshold"] == pytest.approx(2 * (1 + beta) / lr) and rule["momentum"] == beta
    ratio = _distance_after(model, x, y, lambda ps: torch.optim.SGD(ps, lr=lr, momentum=beta), steps=200)
    if lam < rule["threshold"]:
        assert factor < 1 and ratio < 1.0  # bounded (here contracting at rate √β)
    else:
        assert factor > 1 and ratio > 1e3


@pytest.mark.parametrize("factor", [0.95, 1.05])
def test_nesterov_threshold_matches_torch_nesterov(factor):
    model, x, y = least_squares(seed=6)
    lam = top_eigenvalue(model, half_mse, x, y, torch.Generator().manual_seed(0))["lambda_max"]
    beta = 0.9
    lr = factor * (2 + 2 * beta) / ((1 + 2 * beta) * lam)
    rule = stability_threshold("sgd", {"lr": lr, "momentum": beta, "nesterov": True})
    assert rule["threshold"] == pytest.approx((2 + 2 * beta) / ((1 + 2 * beta) * lr))
    ratio = _distance_after(model, x, y, lambda ps: torch.optim.SGD(ps, lr=lr, momentum=beta, nesterov=True),
                            steps=200)
    assert (ratio < 1.0) if lam < rule["threshold"] else (ratio > 1e3)
    assert (lam < rule["threshold"]) == (factor < 1)


def test_adam_rule_is_38_over_lr_at_beta1_point_nine():
    for name, params in [("adam", {"lr": 0.01, "betas": [0.9, 0.999]}), ("adamw", {"lr": 0.01, "betas": (0.9, 0.95)}),
                         ("adam", {"lr": 0.01}),  # β₁ from the component's defaults
                         ("nadam", {"lr": 0.01, "beta1": 0.9})]:
        r = stability_threshold(name, params)
        assert r["threshold"] == pytest.approx(38 / 0.01) and r["preconditioned"] is True and r["momentum"] == 0.9
    r = stability_threshold("adam", {"lr": 0.01, "betas": [0.0, 0.999]})
    assert r["threshold"] == pytest.approx(2 / 0.01)  # β₁ = 0: preconditioned GD


def test_momentum_average_form_scales_by_one_minus_beta():
    # m = βm + (1−β)g is heavy ball at step η(1−β): the bound is 2(1+β)/((1−β)η)
    r = stability_threshold("momentum", {"lr": 0.01, "momentum": 0.9, "form": "average"})
    assert r["threshold"] == pytest.approx(2 * 1.9 / (0.1 * 0.01))
    r = stability_threshold("momentum", {"lr": 0.01, "momentum": 0.9, "form": "torch"})
    assert r["threshold"] == pytest.approx(2 * 1.9 / 0.01)


@pytest.mark.parametrize("name", ["lbfgs", "kfac", "hessian_free", "some_new_optimizer"])
def test_unknown_optimizer_has_no_threshold(name):
    r = stability_threshold(name, {"lr": 0.1})
    assert r["threshold"] is None and name in r["rule"]


@pytest.mark.parametrize("cls", [torch.optim.Adam, torch.optim.AdamW])
def test_adam_preconditioner_is_the_denominator_of_torch_adams_step(cls):
    g = torch.Generator().manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 2))
    x, y = torch.randn(32, 5, generator=g), torch.randn(32, 2, generator=g)
    lr, betas, eps = 1e-2, (0.9, 0.99), 1e-3
    opt = cls(model.parameters(), lr=lr, betas=betas, eps=eps, weight_decay=0.0)
    assert adam_preconditioner(opt, model) is None  # no state before the first step
    for _ in range(3):
        opt.zero_grad()
        half_mse(model(x), y).backward()
        opt.step()
    p = adam_preconditioner(opt, model)
    assert set(p) == {n for n, _ in model.named_parameters()}
    # the next step is −lr·m̂_{t+1}/P_{t+1}: compare with the weights torch moves
    opt.zero_grad()
    half_mse(model(x), y).backward()
    before = {n: q.detach().clone() for n, q in model.named_parameters()}
    opt.step()
    p = adam_preconditioner(opt, model)
    for n, q in model.named_parameters():
        m_hat = opt.state[q]["exp_avg"] / (1 - betas[0] ** 4)
        torch.testing.assert_close(q.detach() - before[n], -lr * m_hat / p[n], rtol=1e-4, atol=1e-7)
