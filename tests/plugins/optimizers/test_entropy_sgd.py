"""Entropy-SGD (Chaudhari et al. 2017, Alg. 1) against its update equations; its SGD limit; resumption."""

import io
import math

import pytest
import torch
from pydantic import ValidationError

from nnopt.core.kinds import DataSplit
from nnopt.core.loop import TrainLoop
from nnopt.plugins.optimizers.entropy_sgd import EntropySGD, EntropySGDOptimizer

from loop_helpers import LoopCtx as Ctx

CPU = torch.device("cpu")
A = torch.tensor([[3.0, 1.0], [1.0, 2.0]], dtype=torch.float64)  # f(w) = ½ wᵀAw − bᵀw
B = torch.tensor([1.0, -1.0], dtype=torch.float64)
W0 = torch.tensor([1.0, 2.0], dtype=torch.float64)


def grad(w):
    return A @ w - B


def outer_steps(steps=1, **options):
    w = torch.nn.Parameter(W0.clone())
    opt = EntropySGDOptimizer([w], seed=0, **options)

    def closure():
        opt.zero_grad()
        loss = 0.5 * w @ A @ w - B @ w
        loss.backward()
        return loss

    for _ in range(steps):
        opt.step(closure)
    return w.detach()


def test_one_noiseless_langevin_step_is_the_formula():
    lr, gamma, eta, alpha = 0.7, 0.5, 0.1, 0.75
    x = W0
    xp = x - eta * (grad(x) - gamma * (x - x))  # x' ← x' − η'(∇f(x') − γ(x − x')), x' = x
    mu = (1 - alpha) * x + alpha * xp
    expected = x - lr * gamma * (x - mu)
    got = outer_steps(lr=lr, L=1, gamma=gamma, eta_inner=eta, noise=0.0, alpha=alpha)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(got, W0 - lr * gamma * alpha * eta * grad(W0), rtol=1e-12, atol=1e-15)


def test_three_langevin_steps_weight_decay_and_nesterov_momentum_over_two_outer_steps():
    lr, gamma, eta, alpha, wd, m = 0.5, 0.8, 0.2, 0.6, 0.1, 0.9
    x, buf = W0.clone(), None
    for _ in range(2):
        xp, mu = x.clone(), x.clone()
        for _ in range(3):
            xp = xp - eta * (grad(xp) + wd * xp - gamma * (x - xp))
            mu = (1 - alpha) * mu + alpha * xp
        d = gamma * (x - mu)
        buf = d if buf is None else m * buf + d
        x = x - lr * (d + m * buf)
    got = outer_steps(2, lr=lr, L=3, gamma=gamma, eta_inner=eta, noise=0.0, alpha=alpha, weight_decay=wd,
                      momentum=m, nesterov=True)
    torch.testing.assert_close(got, x, rtol=1e-12, atol=1e-15)


def test_the_noise_is_sqrt_eta_inner_times_eps_gaussians_from_the_seeded_generator():
    lr, gamma, eta, eps = 0.5, 2.0, 0.04, 0.3
    w = torch.nn.Parameter(W0.clone())
    opt = EntropySGDOptimizer([w], lr=lr, L=1, gamma=gamma, eta_inner=eta, noise=eps, alpha=1.0, seed=11)

    def flat_loss():  # ∇f = 0: the Langevin step is the noise alone
        opt.zero_grad()
        loss = 0.0 * w.sum()
        loss.backward()
        return loss

    opt.step(flat_loss)
    z = torch.randn(2, generator=torch.Generator().manual_seed(11), dtype=torch.float64)
    torch.testing.assert_close(w.detach(), W0 + lr * gamma * math.sqrt(eta) * eps * z, rtol=1e-12, atol=1e-15)


def test_large_gamma_approaches_the_sgd_step():
    lr = 0.1
    sgd = W0 - lr * grad(W0)
    errors = []
    for gamma in (10.0, 100.0, 1000.0):  # η' = 0.5/γ: the Langevin chain contracts to x − ∇f/γ
        got = outer_steps(lr=lr, L=30, gamma=gamma, eta_inner=0.5 / gamma, noise=0.0, alpha=1.0)
        errors.append(float(torch.linalg.norm(got - sgd)))
    assert errors[1] < 0.2 * errors[0] and errors[2] < 0.2 * errors[1]  # O(1/γ)
    assert errors[2] < 1e-2 * float(torch.linalg.norm(sgd - W0))




def data():
    g = torch.Generator().manual_seed(4)
    x = torch.randn(16, 2, generator=g, dtype=torch.float64)
    return DataSplit(x, x.sum(1, keepdim=True), x[:4], x[:4].sum(1, keepdim=True), "regression", (2,), 1)


def loop_of(params, split, total, seed=0, ctx=None, callbacks=(), checkpoint_due=lambda s: False):
    component = EntropySGD(EntropySGD.Params(**params))
    model = torch.nn.Linear(2, 1, bias=False).double()
    with torch.no_grad():
        model.weight.fill_(0.2)
    opt = component.build(model.parameters(), CPU)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    return TrainLoop(ctx or Ctx(seed), model, opt, sched, torch.nn.functional.mse_loss, split, total=total,
                     batch_size=4, shuffle_seed=0, evaluate=lambda m: {}, log_every=1, callbacks=list(callbacks),
                     step_rule=component.step_rule(), checkpoint_due=checkpoint_due)


def test_inner_batches_same_reuses_the_loops_batch_and_sampled_draws_fresh_ones():
    split = data()
    for mode in ("same", "sampled"):
        inputs = []
        loop = loop_of({"L": 3, "inner_batches": mode, "noise": 0.0}, split, 1)
        loop.model.register_forward_hook(lambda mod, args, out: inputs.append(args[0]))
        loop.run()
        assert len(inputs) == 3 and all(t.shape == (4, 2) for t in inputs)  # L evaluations of batch_size rows
        assert torch.equal(inputs[0], loop.batch[0])  # Langevin step 1 is on the loop's batch
        assert all(torch.equal(t, inputs[0]) for t in inputs[1:]) == (mode == "same")


def test_resumes_bitwise_and_follows_the_stage_seed():
    split, params = data(), {"L": 3, "noise": 0.1, "momentum": 0.5, "gamma": 1.0, "lr": 0.5}
    whole = loop_of(params, split, 9)
    whole.run()
    other_seed = loop_of(params, split, 9, seed=1)
    other_seed.run()
    assert not torch.equal(whole.model.weight, other_seed.model.weight)
    ctx = Ctx()
    loop_of(params, split, 9, ctx=ctx, checkpoint_due=lambda s: s == 5).run()
    resumed = loop_of(params, split, 9)
    resumed.load_state_dict(torch.load(io.BytesIO(ctx.saved), weights_only=False))
    assert "momentum_buffer" in resumed.optimizer.state[resumed.model.weight]
    resumed.run()
    assert torch.equal(resumed.model.weight, whole.model.weight)


@pytest.mark.parametrize(
    "params", [{"L": 0}, {"gamma": 0}, {"eta_inner": 0}, {"noise": -1}, {"alpha": 0}, {"alpha": 1.5},
               {"momentum": 1.0}, {"nesterov": True}, {"inner_batches": "fresh"}]
)
def test_params_out_of_range(params):
    with pytest.raises(ValidationError):
        EntropySGD.Params(**params)
