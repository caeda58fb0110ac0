"""Barzilai–Borwein steps (BB1, BB2, safeguards) and SGD-BB (Tan et al. 2016) against their equations."""

import io

import pytest
import torch
from pydantic import ValidationError

from nnopt.core.kinds import DataSplit
from nnopt.core.loop import TrainLoop
from nnopt.plugins.optimizers.barzilai_borwein import BarzilaiBorwein, BarzilaiBorweinOptimizer
from nnopt.plugins.optimizers.full_batch import FullBatchStep

from loop_helpers import LoopCtx as Ctx

CPU = torch.device("cpu")
SPECTRUM = torch.logspace(0, -3, 12, dtype=torch.float64)  # F(θ) = ½ Σ_i a_i θ_i², κ = 1000
THETA0 = torch.linspace(1.0, -1.0, 12, dtype=torch.float64)


def quadratic_run(component_params, steps, a=SPECTRUM):
    """(θ_t, g_t, η_t) for t = 0 … steps−1 of the component's optimizer on ½θᵀdiag(a)θ."""
    w = torch.nn.Parameter(THETA0.clone())
    opt = BarzilaiBorwein(BarzilaiBorwein.Params(**component_params)).build([w], CPU)
    rows = []
    for _ in range(steps):
        opt.zero_grad()
        (0.5 * torch.sum(a * w * w)).backward()
        theta, g = w.detach().clone(), w.grad.detach().clone()
        opt.step()
        rows.append((theta, g, opt.param_groups[0]["lr"], w.detach().clone()))
    return rows


@pytest.mark.parametrize("variant", ["bb1", "bb2"])
def test_each_step_is_the_bb_step_from_s_and_y(variant):
    rows = quadratic_run({"lr": 0.3, "variant": variant}, 8)
    for t, (theta, g, eta, after) in enumerate(rows):
        if t == 0:
            expected = 0.3
        else:
            s, y = theta - rows[t - 1][0], g - rows[t - 1][1]
            expected = float(s @ s / (s @ y)) if variant == "bb1" else float(s @ y / (y @ y))
        assert eta == pytest.approx(expected, rel=1e-12)
        torch.testing.assert_close(after, theta - expected * g, rtol=1e-12, atol=1e-15)
    etas = [r[2] for r in rows[1:]]
    assert all(1 / SPECTRUM.max() <= e <= 1 / SPECTRUM.min() for e in etas)  # inverse Rayleigh quotients of A


def test_bb_beats_gradient_descent_at_one_over_l_on_an_ill_conditioned_quadratic():
    steps = 150
    bb = quadratic_run({"lr": 1.0}, steps)[-1][3]
    gd = THETA0 * (1 - SPECTRUM / SPECTRUM.max()) ** steps  # GD at η = 1/L, solved in closed form
    assert torch.linalg.norm(bb) < 1e-3 * torch.linalg.norm(THETA0)  # BB is non-monotone: no tighter at one step
    assert torch.linalg.norm(gd) > 0.5 * torch.linalg.norm(THETA0)  # the λ = 1e-3 directions barely moved


def test_nonpositive_curvature_falls_back_and_the_step_is_clipped():
    # F(θ) = −½θ²: s and y have opposite signs, sᵀy < 0
    def etas(**kw):
        w = torch.nn.Parameter(torch.tensor([1.0], dtype=torch.float64))
        opt = BarzilaiBorweinOptimizer([w], lr=0.5, **kw)
        out = []
        for _ in range(3):
            opt.zero_grad()
            (-0.5 * w * w).sum().backward()
            opt.step()
            out.append(opt.param_groups[0]["lr"])
        return out

    assert etas(fallback="previous") == [0.5, 0.5, 0.5]
    assert etas(fallback="initial") == [0.5, 0.5, 0.5]
    assert etas(fallback="abs") == [0.5, 1.0, 1.0]  # |sᵀs/sᵀy| = 1 for a curvature of −1
    assert etas(fallback="abs", max_lr=0.8) == [0.5, 0.8, 0.8]


def test_sgd_bb_sets_the_step_once_per_epoch_from_the_epoch_iterates_and_averaged_gradients():
    m, beta, lr0 = 4, 0.5, 0.2
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(6 * m, 12, generator=g, dtype=torch.float64) * 1e-2
    w = torch.nn.Parameter(THETA0.clone())
    opt = BarzilaiBorweinOptimizer([w], lr=lr0, stochastic=True, beta=beta, steps_per_epoch=m)
    a = torch.logspace(0, -1, 12, dtype=torch.float64)
    thetas, grads, etas = [], [], []
    for k in range(6 * m):
        opt.zero_grad()
        (0.5 * torch.sum(a * w * w) + noise[k] @ w).backward()  # a "stochastic" gradient
        thetas.append(w.detach().clone())
        grads.append(w.grad.detach().clone())
        opt.step()
        etas.append(opt.param_groups[0]["lr"])
        torch.testing.assert_close(w.detach(), thetas[-1] - etas[-1] * grads[-1], rtol=1e-12, atol=1e-15)
    # by hand: x̃_e = θ at step e·m; ĝ_e = the β-average of every gradient before step e·m
    g_hat, averages = torch.zeros(12, dtype=torch.float64), {}
    for k in range(6 * m):
        if k % m == 0:
            averages[k // m] = g_hat.clone()
        g_hat = beta * grads[k] + (1 - beta) * g_hat
    expected = lr0
    for e in range(6):
        if e >= 2:
            s = thetas[e * m] - thetas[(e - 1) * m]
            y = averages[e] - averages[e - 1]
            expected = float(s @ s / abs(s @ y)) / m
        assert etas[e * m : (e + 1) * m] == pytest.approx([expected] * m, rel=1e-12)  # constant within the epoch
    assert etas[2 * m] != lr0




def data():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(24, 3, generator=g, dtype=torch.float64) * torch.tensor([1.0, 0.3, 0.1], dtype=torch.float64)
    y = x @ torch.tensor([[1.0], [2.0], [-1.0]], dtype=torch.float64)
    return DataSplit(x, y, x[:4], y[:4], "regression", (3,), 1)


def loop_of(params, split, total, ctx=None, checkpoint_due=lambda s: False, batch_size=6):
    component = BarzilaiBorwein(BarzilaiBorwein.Params(**params))
    net = torch.nn.Linear(3, 1, bias=False).double()
    with torch.no_grad():
        net.weight.fill_(0.1)
    opt = component.build(net.parameters(), CPU)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    return TrainLoop(ctx or Ctx(), net, opt, sched, torch.nn.functional.mse_loss, split, total=total,
                     batch_size=batch_size, shuffle_seed=0, evaluate=lambda m: {}, log_every=1,
                     callbacks=component.callbacks(opt, net), step_rule=component.step_rule(),
                     checkpoint_due=checkpoint_due)


def test_default_steps_are_full_batch_whatever_the_loops_batch_size():
    split = data()
    assert isinstance(BarzilaiBorwein(BarzilaiBorwein.Params()).step_rule(), FullBatchStep)
    small, whole = loop_of({"lr": 0.1}, split, 5, batch_size=6), loop_of({"lr": 0.1}, split, 5, batch_size=24)
    small.run()
    whole.run()
    torch.testing.assert_close(small.model.weight, whole.model.weight, rtol=1e-12, atol=1e-14)
    assert small.train_curve[0][1] == pytest.approx(float(torch.mean((split.x_train @ torch.full((3, 1), 0.1, dtype=torch.float64) - split.y_train) ** 2)))


def test_sgd_bb_resumes_bitwise_and_learns_the_epoch_length_from_the_loop():
    split, params = data(), {"lr": 0.05, "stochastic": True}
    whole = loop_of(params, split, 26)
    whole.run()
    assert whole.optimizer.state["bb"]["m"] == 4
    ctx = Ctx()
    loop_of(params, split, 26, ctx=ctx, checkpoint_due=lambda s: s == 13).run()
    resumed = loop_of(params, split, 26)
    resumed.load_state_dict(torch.load(io.BytesIO(ctx.saved), weights_only=False))
    assert resumed.optimizer.state["bb"]["step"] == 13
    resumed.run()
    assert torch.equal(resumed.model.weight, whole.model.weight)
    assert whole.optimizer.state["bb"]["lr"] != 0.05  # the BB step took over after two epochs


@pytest.mark.parametrize(
    "params",
    [{"lr": 0}, {"variant": "bb3"}, {"min_lr": 2.0, "max_lr": 1.0}, {"stochastic": True, "full_batch": True},
     {"beta": 0.5}, {"stochastic": True, "beta": 1.5}, {"weight_decay": -1}],
)
def test_params_out_of_range(params):
    with pytest.raises(ValidationError):
        BarzilaiBorwein.Params(**params)


def test_groups_with_their_own_lr_are_refused():
    a, b = torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(2))
    with pytest.raises(ValueError, match="one step size"):
        BarzilaiBorwein(BarzilaiBorwein.Params(lr=0.1)).build([{"params": [a]}, {"params": [b], "lr": 0.01}], CPU)
