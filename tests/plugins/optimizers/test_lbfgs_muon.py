"""L-BFGS on the full batch, and Muon's orthogonalized matrix steps with the AdamW fallback."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from nnopt.core.errors import StageError
from nnopt.core.kinds import DataSplit
from nnopt.core.loop import TrainLoop
from nnopt.plugins.optimizers.lbfgs import LBFGS
from nnopt.plugins.optimizers.muon import Muon, MuonWithFallback

from loop_helpers import RecordingCtx as _Ctx

CPU = torch.device("cpu")
D = torch.float64


def _regression(n=40, scales=(1.0, 3.0, 0.3, 10.0)):
    g = torch.Generator().manual_seed(0)
    dim = len(scales)
    x = torch.randn(n, dim, generator=g, dtype=D) * torch.tensor(scales, dtype=D)
    y = torch.sin(x.sum(1, keepdim=True)) + 0.1 * torch.randn(n, 1, generator=g, dtype=D)
    return DataSplit(x, y, x[:5], y[:5], "regression", (dim,), 1)


def _loop(component, model, data, total, checkpoint_due=lambda s: False, batch_size=None):
    opt = component.build(model.parameters(), CPU)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 1.0)
    ctx = _Ctx()
    loop = TrainLoop(ctx, model, opt, sched, nn.functional.mse_loss, data, total=total,
                     batch_size=batch_size or data.n_train, shuffle_seed=0, evaluate=lambda m: {"loss": 0.0},
                     log_every=1, checkpoint_due=checkpoint_due, step_rule=component.step_rule())
    return loop, ctx


# --------------------------------------------------------------------------- L-BFGS
def test_lbfgs_solves_a_quadratic_in_a_few_times_d_gradient_evaluations():
    # With exact line searches L-BFGS (m ≥ d) ends on a quadratic in d iterations; torch's
    # strong-Wolfe search is inexact (it accepts the first step meeting c1 = 1e-4, c2 = 0.9),
    # and measured on such problems it needs about 2d–3d evaluations to reach 1e-6: so the
    # bound asserted is 4d evaluations, where GD at its best fixed rate needs ~κ·ln(1e6) ≈ 100.
    data = _regression(scales=(1.0, 2.0, 0.5, 1.5))
    torch.manual_seed(0)
    model = nn.Linear(4, 1).double()  # least squares in d = 5 parameters: a strictly convex quadratic
    d = sum(p.numel() for p in model.parameters())
    x1 = torch.cat([data.x_train, torch.ones(data.n_train, 1, dtype=D)], 1)
    w_star = torch.linalg.lstsq(x1, data.y_train).solution[:, 0]
    w0 = torch.cat([model.weight.detach()[0], model.bias.detach()]).clone()
    params = LBFGS.Params(max_iter=4 * d, max_eval=4 * d, tolerance_grad=0.0, tolerance_change=0.0, chunk_size=16)
    loop, _ = _loop(LBFGS(params), model, data, total=1)
    loop.run()
    w = torch.cat([model.weight.detach()[0], model.bias.detach()])
    state = loop.optimizer.state[loop.optimizer.param_groups[0]["params"][0]]
    assert state["func_evals"] <= 4 * d
    assert (w - w_star).norm() <= 1e-6 * (w0 - w_star).norm()


def test_lbfgs_reports_the_full_batch_loss_before_the_step():
    data = _regression()
    torch.manual_seed(0)
    model = nn.Linear(4, 1).double()
    before = nn.functional.mse_loss(model(data.x_train), data.y_train).item()
    loop, ctx = _loop(LBFGS(LBFGS.Params(max_iter=3)), model, data, total=1)
    loop.run()
    assert ctx.lines[0]["loss"] == pytest.approx(before, rel=1e-12)


def test_lbfgs_refuses_mini_batches():
    torch.manual_seed(0)
    loop, _ = _loop(LBFGS(), nn.Linear(4, 1).double(), _regression(), total=2, batch_size=8)
    with pytest.raises(StageError, match="an epoch is one step"):
        loop.run()


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 1)).double()


@pytest.mark.parametrize("line_search", ["strong_wolfe", "none"])
def test_lbfgs_resumes_bitwise_from_its_state_dict(line_search):
    component = LBFGS(LBFGS.Params(max_iter=3, history_size=4, line_search=line_search, lr=1.0 if line_search != "none" else 0.1))
    data = _regression()
    straight, _ = _loop(component, _net(), data, total=4)
    straight.run()
    first, ctx = _loop(component, _net(), data, total=4, checkpoint_due=lambda step: step == 2)
    first.run()
    state = ctx.checkpoints[0]
    lbfgs_state = next(iter(state["optimizer"]["state"].values()))
    assert lbfgs_state["old_dirs"] and lbfgs_state["n_iter"] >= 2  # the curvature pairs travel with it
    resumed, _ = _loop(component, _net(), data, total=4)
    resumed.load_state_dict(state)
    resumed.run()
    for a, b in zip(straight.model.parameters(), resumed.model.parameters()):
        assert torch.equal(a, b)


# --------------------------------------------------------------------------- Muon
def _newton_schulz(m, steps=5, coefficients=(3.4445, -4.775, 2.0315), eps=1e-7):
    """Jordan et al.'s quintic iteration X ← aX + b(XXᵀ)X + c(XXᵀ)²X from X₀ = M/‖M‖_F, in float64."""
    a, b, c = coefficients
    x = m.T if m.shape[0] > m.shape[1] else m
    x = x / (x.norm() + eps)
    for _ in range(steps):
        s = x @ x.T
        x = a * x + (b * s + c * s @ s) @ x
    return x.T if m.shape[0] > m.shape[1] else x


def _ill_conditioned_gradient(rows=8, cols=5):
    g = torch.Generator().manual_seed(0)
    u, _ = torch.linalg.qr(torch.randn(rows, cols, generator=g))
    v, _ = torch.linalg.qr(torch.randn(cols, cols, generator=g))
    return u @ torch.diag(torch.logspace(0, -2, cols)) @ v.T  # singular values 1 … 0.01


def test_muon_update_is_the_orthogonalized_momentum():
    lr, mu, rows, cols = 0.02, 0.95, 8, 5
    G = _ill_conditioned_gradient(rows, cols)
    W = nn.Parameter(torch.zeros(rows, cols))
    opt = Muon(Muon.Params(lr=lr, momentum=mu)).build([W], CPU)
    for _ in range(2):
        W.grad = G.clone()
        before = W.detach().clone()
        opt.step()
    update = (before - W.detach()) / (lr * math.sqrt(max(1, rows / cols)))
    # step 2: B_2 = μ(1−μ)G + (1−μ)G, Nesterov direction (1−μ)G + μB_2
    buf = mu * (1 - mu) * G + (1 - mu) * G
    expected = _newton_schulz(((1 - mu) * G + mu * buf).double()).float()
    torch.testing.assert_close(update, expected, atol=0.05, rtol=0.05)  # torch iterates in bfloat16
    s = torch.linalg.svdvals(update)
    assert s.min() > 0.5 and s.max() < 1.5 and s.max() / s.min() < 2.5  # G's spread: 100
    assert torch.linalg.svdvals(G).max() / torch.linalg.svdvals(G).min() > 50


def test_muon_is_torchs_muon_for_matrices_and_adamw_for_the_rest():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.LayerNorm(6), nn.Linear(6, 3))
    twin = copy.deepcopy(model)
    params = Muon.Params(lr=0.02, weight_decay=0.1, adamw_lr=0.003, adamw_betas=[0.8, 0.9], adamw_weight_decay=0.01)
    opt = Muon(params).build(model.parameters(), CPU)
    assert isinstance(opt, MuonWithFallback)
    assert [p.ndim for p in opt.muon.param_groups[0]["params"]] == [2, 2]
    assert sorted(p.ndim for p in opt.fallback.param_groups[0]["params"]) == [1, 1, 1, 1]
    matrices = [p for p in twin.parameters() if p.ndim == 2]
    others = [p for p in twin.parameters() if p.ndim != 2]
    ref_muon = torch.optim.Muon(matrices, lr=0.02, weight_decay=0.1, momentum=0.95, nesterov=True)
    ref_adamw = torch.optim.AdamW(others, lr=0.003, betas=(0.8, 0.9), weight_decay=0.01)
    x = torch.randn(16, 4)
    for _ in range(3):
        for m, opts in ((model, [opt]), (twin, [ref_muon, ref_adamw])):
            for o in opts:
                o.zero_grad()
            m(x).pow(2).mean().backward()
            for o in opts:
                o.step()
    for a, b in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def test_muon_groups_keep_their_options_and_a_schedule_sets_both_optimizers():
    model = nn.Sequential(nn.Linear(4, 6), nn.Linear(6, 3))
    groups = [{"params": [model[0].weight, model[0].bias]},
              {"params": [model[1].weight, model[1].bias], "lr": 0.01, "weight_decay": 0.0}]
    opt = Muon(Muon.Params(lr=0.02, adamw_lr=0.004, weight_decay=0.1)).build(groups, CPU)
    lrs = sorted((g["lr"], g["weight_decay"], g["params"][0].ndim) for g in opt.param_groups)
    assert lrs == [(0.002, 0.0, 1), (0.004, 0.1, 1), (0.01, 0.0, 2), (0.02, 0.1, 2)]
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 0.5 ** t)
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    opt.step()
    sched.step()
    inner = opt.muon.param_groups + opt.fallback.param_groups
    assert sorted(g["lr"] for g in inner) == [0.001, 0.002, 0.005, 0.01]


def test_muon_resumes_from_its_state_dict():
    def make():
        torch.manual_seed(0)
        m = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 2))
        return m, Muon(Muon.Params(lr=0.02)).build(m.parameters(), CPU)

    x = torch.randn(8, 4, generator=torch.Generator().manual_seed(1))

    def steps(m, o, k):
        for _ in range(k):
            o.zero_grad()
            m(x).pow(2).mean().backward()
            o.step()

    straight, so = make()
    steps(straight, so, 4)
    half, ho = make()
    steps(half, ho, 2)
    saved = copy.deepcopy((half.state_dict(), ho.state_dict()))
    resumed, ro = make()
    resumed.load_state_dict(saved[0])
    ro.load_state_dict(saved[1])
    assert len(ro.state) == 4  # both optimizers' moments came back
    steps(resumed, ro, 2)
    for a, b in zip(straight.parameters(), resumed.parameters()):
        assert torch.equal(a, b)


# --------------------------------------------------------------------------- CLI
@pytest.mark.parametrize("optimizer, batch", [("{name: lbfgs, max_iter: 5}", 48), ("{name: muon, lr: 0.02}", 16)])
def test_cli_runs_lbfgs_and_muon_pipelines(optimizer, batch, invoke, write_pipeline, store):
    path = write_pipeline(f"""
        name: second-family
        seed: 0
        device: cpu
        data: {{name: synthetic, task: gaussian_mixture, dim: 4, n_train: 48, n_test: 16, batch_size: {batch}}}
        model: {{arch: {{name: mlp, widths: [8]}}}}
        loss: cross_entropy
        stages:
          fit: {{kind: train, optimizer: {optimizer}, epochs: 3}}
    """)
    result = invoke("run", path, "--json", "--store", store)
    assert result.exit_code == 0, result.stderr
