"""Momentum, Nesterov and the adaptive family follow their update equations step by step.

Each test runs the nnopt component for three steps on F(w) = ½ wᵀAw − bᵀw in float64 and
compares with the recursion written out by hand from the method's paper / torch's docs.
"""

from __future__ import annotations

import math

import pytest
import torch
from pydantic import ValidationError

from nnopt.plugins.optimizers import adaptive
from nnopt.plugins.optimizers.momentum import Momentum, Nesterov

CPU = torch.device("cpu")
D = torch.float64
A = torch.tensor([[3.0, 1.0], [1.0, 2.0]], dtype=D)
B = torch.tensor([1.0, -1.0], dtype=D)
W0 = torch.tensor([1.0, 2.0], dtype=D)
STEPS = 3


def grad(w):
    return A @ w - B


def run(component, w0=W0, steps=STEPS):
    w = torch.nn.Parameter(w0.clone())
    opt = component.build([w], CPU)
    for _ in range(steps):
        opt.zero_grad()
        (0.5 * w @ A @ w - B @ w).backward()
        opt.step()
    return w.detach(), opt


def close(a, b):
    torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-9)


# --------------------------------------------------------------------------- momentum
@pytest.mark.parametrize("wd", [0.0, 0.1])
def test_momentum_average_form(wd):
    lr, beta = 0.1, 0.8
    w, m = W0.clone(), None
    for _ in range(STEPS):
        g = grad(w) + wd * w
        m = g if m is None else beta * m + (1 - beta) * g  # torch's buffer starts at g_1 (m_0 = g_1)
        w = w - lr * m
    close(run(Momentum(Momentum.Params(lr=lr, momentum=beta, form="average", weight_decay=wd)))[0], w)


def test_momentum_torch_form_is_polyaks_heavy_ball():
    lr, beta = 0.1, 0.8
    prev, w = W0.clone(), W0 - lr * grad(W0)  # b_1 = g_1
    for _ in range(STEPS - 1):
        prev, w = w, w - lr * grad(w) + beta * (w - prev)
    close(run(Momentum(Momentum.Params(lr=lr, momentum=beta, form="torch")))[0], w)


def test_nesterov_three_steps():
    lr, mu = 0.1, 0.9
    w, b = W0.clone(), None
    for _ in range(STEPS):
        g = grad(w)
        b = g if b is None else mu * b + g
        w = w - lr * (g + mu * b)
    close(run(Nesterov(Nesterov.Params(lr=lr, momentum=mu)))[0], w)


@pytest.mark.parametrize("cls, params", [(Momentum, {"momentum": 1.0}), (Momentum, {"form": "polyak"}),
                                         (Nesterov, {"momentum": 0.0}), (Momentum, {"lr": 0.0})])
def test_momentum_params_out_of_range(cls, params):
    with pytest.raises(ValidationError):
        cls.Params(**params)


# --------------------------------------------------------------------------- Adagrad, RMSprop, Adadelta
def test_adagrad():
    lr, lr_decay, g0, eps, wd = 0.5, 0.1, 0.2, 1e-10, 0.05
    w, G = W0.clone(), torch.full((2,), g0, dtype=D)
    for t in range(1, STEPS + 1):
        g = grad(w) + wd * w
        G = G + g * g
        w = w - lr / (1 + (t - 1) * lr_decay) * g / (G.sqrt() + eps)
    p = adaptive.Adagrad.Params(lr=lr, lr_decay=lr_decay, initial_accumulator_value=g0, weight_decay=wd)
    close(run(adaptive.Adagrad(p))[0], w)


@pytest.mark.parametrize("centered", [False, True])
@pytest.mark.parametrize("momentum", [0.0, 0.7])
def test_rmsprop(centered, momentum):
    lr, rho, eps = 0.01, 0.9, 1e-8
    w, v, gbar, buf = W0.clone(), torch.zeros(2, dtype=D), torch.zeros(2, dtype=D), torch.zeros(2, dtype=D)
    for _ in range(STEPS):
        g = grad(w)
        v = rho * v + (1 - rho) * g * g
        if centered:
            gbar = rho * gbar + (1 - rho) * g
            denom = (v - gbar * gbar).sqrt() + eps
        else:
            denom = v.sqrt() + eps
        if momentum:
            buf = momentum * buf + g / denom
            w = w - lr * buf
        else:
            w = w - lr * g / denom
    p = adaptive.RMSprop.Params(lr=lr, alpha=rho, centered=centered, momentum=momentum)
    close(run(adaptive.RMSprop(p))[0], w)


def test_adadelta():
    lr, rho, eps = 1.0, 0.9, 1e-6
    w, v, u = W0.clone(), torch.zeros(2, dtype=D), torch.zeros(2, dtype=D)
    for _ in range(STEPS):
        g = grad(w)
        v = rho * v + (1 - rho) * g * g
        delta = (u + eps).sqrt() / (v + eps).sqrt() * g
        u = rho * u + (1 - rho) * delta * delta
        w = w - lr * delta
    close(run(adaptive.Adadelta(adaptive.Adadelta.Params(lr=lr, rho=rho, eps=eps)))[0], w)


# --------------------------------------------------------------------------- Adam family
def adam_reference(lr, b1, b2, eps, *, coupled=0.0, decoupled=0.0, amsgrad=False):
    w, m, v, vmax = W0.clone(), torch.zeros(2, dtype=D), torch.zeros(2, dtype=D), torch.zeros(2, dtype=D)
    for t in range(1, STEPS + 1):
        g = grad(w) + coupled * w
        w = w - lr * decoupled * w
        m, v = b1 * m + (1 - b1) * g, b2 * v + (1 - b2) * g * g
        vmax = torch.maximum(vmax, v)
        second = vmax if amsgrad else v
        w = w - lr * (m / (1 - b1**t)) / ((second / (1 - b2**t)).sqrt() + eps)
    return w


def test_adamw_decay_is_decoupled():
    lr, b1, b2, eps, wd = 0.05, 0.8, 0.9, 1e-8, 0.3
    p = adaptive.AdamW.Params(lr=lr, betas=[b1, b2], eps=eps, weight_decay=wd)
    close(run(adaptive.AdamW(p))[0], adam_reference(lr, b1, b2, eps, decoupled=wd))
    # and it is not the coupled (L2) decay, which goes through the preconditioner
    assert not torch.allclose(run(adaptive.AdamW(p))[0], adam_reference(lr, b1, b2, eps, coupled=wd))


def test_amsgrad_divides_by_the_running_max_of_v():
    # a gradient that shrinks in coordinate 0 makes v_t fall there, so max(v) ≠ v by step 3
    lr, b1, b2, eps = 0.3, 0.5, 0.6, 1e-8
    expected = adam_reference(lr, b1, b2, eps, amsgrad=True)
    assert not torch.allclose(expected, adam_reference(lr, b1, b2, eps))
    w, opt = run(adaptive.AMSGrad(adaptive.AMSGrad.Params(lr=lr, betas=[b1, b2], eps=eps)))
    close(w, expected)
    assert isinstance(opt, torch.optim.Adam) and opt.defaults["amsgrad"]


def test_amsgrad_weight_decay_coupled_or_decoupled():
    lr, b1, b2, eps, wd = 0.3, 0.5, 0.6, 1e-8, 0.2
    coupled = adaptive.AMSGrad(adaptive.AMSGrad.Params(lr=lr, betas=[b1, b2], weight_decay=wd))
    decoupled = adaptive.AMSGrad(adaptive.AMSGrad.Params(lr=lr, betas=[b1, b2], weight_decay=wd,
                                                         decoupled_weight_decay=True))
    close(run(coupled)[0], adam_reference(lr, b1, b2, eps, coupled=wd, amsgrad=True))
    close(run(decoupled)[0], adam_reference(lr, b1, b2, eps, decoupled=wd, amsgrad=True))


@pytest.mark.parametrize("decoupled", [False, True])
def test_nadam(decoupled):
    lr, b1, b2, eps, psi, wd = 0.05, 0.9, 0.99, 1e-8, 0.004, 0.1
    w, m, v, prod = W0.clone(), torch.zeros(2, dtype=D), torch.zeros(2, dtype=D), 1.0
    for t in range(1, STEPS + 1):
        g = grad(w)
        if decoupled:
            w = w * (1 - lr * wd)
        else:
            g = g + wd * w
        mu_t = b1 * (1 - 0.5 * 0.96 ** (t * psi))
        mu_next = b1 * (1 - 0.5 * 0.96 ** ((t + 1) * psi))
        prod *= mu_t
        m, v = b1 * m + (1 - b1) * g, b2 * v + (1 - b2) * g * g
        m_hat = mu_next * m / (1 - prod * mu_next) + (1 - mu_t) * g / (1 - prod)
        w = w - lr * m_hat / ((v / (1 - b2**t)).sqrt() + eps)
    p = adaptive.NAdam.Params(lr=lr, betas=[b1, b2], eps=eps, momentum_decay=psi, weight_decay=wd,
                              decoupled_weight_decay=decoupled)
    close(run(adaptive.NAdam(p))[0], w)




def radam_by_hand(lr, b1, b2, eps, steps):
    """RAdam (Liu et al. 2020) on the test quadratic, written out: the weights after ``steps``
    steps and, per step, whether the variance rectification was used (ρ_t > 5)."""
    w, m, v = W0.clone(), torch.zeros(2, dtype=D), torch.zeros(2, dtype=D)
    rho_inf, rectified = 2 / (1 - b2) - 1, []
    for t in range(1, steps + 1):
        g = grad(w)
        m, v = b1 * m + (1 - b1) * g, b2 * v + (1 - b2) * g * g
        m_hat = m / (1 - b1**t)
        rho_t = rho_inf - 2 * t * b2**t / (1 - b2**t)
        if rho_t > 5:
            r = math.sqrt((rho_t - 4) * (rho_t - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho_t))
            w = w - lr * m_hat * r * math.sqrt(1 - b2**t) / (v.sqrt() + eps)
        else:
            w = w - lr * m_hat
        rectified.append(rho_t > 5)
    return w, rectified


@pytest.mark.parametrize("b2", [0.999, 0.5])
def test_radam_rectification(b2):
    # the first steps are not rectified: β2 = 0.999 gives ρ_t ≤ 5 for t ≤ 3, and β2 = 0.5 has
    # ρ_∞ = 3 < 5, so it never is; the update is then the un-adapted m̂ (momentum SGD)
    lr, b1, eps = 0.05, 0.9, 1e-8
    w, branches = radam_by_hand(lr, b1, b2, eps, STEPS)
    assert not any(branches)
    close(run(adaptive.RAdam(adaptive.RAdam.Params(lr=lr, betas=[b1, b2], eps=eps)))[0], w)


def test_radam_rectified_steps_after_the_warmup():
    # with β2 = 0.9, ρ_∞ = 19 and ρ_t > 5 from t = 6: run 8 steps so both branches are used
    lr, b1, b2, eps, steps = 0.05, 0.9, 0.9, 1e-8, 8
    w, rectified = radam_by_hand(lr, b1, b2, eps, steps)
    assert any(rectified) and not all(rectified)
    close(run(adaptive.RAdam(adaptive.RAdam.Params(lr=lr, betas=[b1, b2], eps=eps)), steps=steps)[0], w)


def test_adamax_uses_the_infinity_norm():
    lr, b1, b2, eps = 0.05, 0.9, 0.95, 1e-8
    w, m, u = W0.clone(), torch.zeros(2, dtype=D), torch.zeros(2, dtype=D)
    for t in range(1, STEPS + 1):
        g = grad(w)
        m = b1 * m + (1 - b1) * g
        u = torch.maximum(b2 * u, g.abs() + eps)
        w = w - lr / (1 - b1**t) * m / u
    close(run(adaptive.Adamax(adaptive.Adamax.Params(lr=lr, betas=[b1, b2], eps=eps)))[0], w)


# --------------------------------------------------------------------------- Adafactor
M = torch.tensor([[2.0, -1.0, 0.5], [0.3, 1.5, -2.0]], dtype=D)  # F(W) = ½‖W − M‖² ∘ scale


def test_adafactor_factored_second_moment_for_a_matrix():
    lr, c, eps2, d, wd = 0.05, -0.8, 1e-3, 1.0, 0.1
    scale = torch.tensor([[1.0, 4.0, 0.2], [3.0, 0.5, 2.0]], dtype=D)
    w0 = torch.zeros(2, 3, dtype=D) + 0.1
    eps1 = torch.finfo(D).eps
    w, R, C = w0.clone(), torch.zeros(2, 1, dtype=D), torch.zeros(1, 3, dtype=D)
    for t in range(1, STEPS + 1):
        g = scale * (w - M)
        one_minus_beta = t**c
        rho = min(lr, 1 / math.sqrt(t))
        alpha = max(eps2, (w.pow(2).mean().sqrt()).item()) * rho
        w = w * (1 - lr * wd)
        R = (1 - one_minus_beta) * R + one_minus_beta * (g * g).mean(dim=1, keepdim=True)
        C = (1 - one_minus_beta) * C + one_minus_beta * (g * g).mean(dim=0, keepdim=True)
        V = R @ C / R.mean().clamp(min=eps1)
        U = g / V.clamp(min=eps1**2).sqrt()
        w = w - alpha * U / max(1.0, (U.pow(2).mean().sqrt() / d).item())

    p = torch.nn.Parameter(w0.clone())
    opt = adaptive.Adafactor(adaptive.Adafactor.Params(lr=lr, beta2_decay=c, eps2=eps2, d=d, weight_decay=wd)).build([p], CPU)
    for _ in range(STEPS):
        opt.zero_grad()
        (0.5 * (scale * (p - M) ** 2).sum()).backward()
        opt.step()
    close(p.detach(), w)
    state = opt.state[p]
    assert state["row_var"].shape == (2, 1) and state["col_var"].shape == (1, 3)  # O(n + m), not O(nm)


def test_adafactor_vector_uses_the_plain_average():
    lr, c = 0.05, -0.8
    eps1 = torch.finfo(D).eps
    w, v = W0.clone(), torch.zeros(2, dtype=D)
    for t in range(1, STEPS + 1):
        g = grad(w)
        rho = min(lr, 1 / math.sqrt(t))
        alpha = max(1e-3, w.pow(2).mean().sqrt().item()) * rho
        v = (1 - t**c) * v + t**c * g * g
        U = g / v.clamp(min=eps1**2).sqrt()
        w = w - alpha * U / max(1.0, U.pow(2).mean().sqrt().item())
    close(run(adaptive.Adafactor(adaptive.Adafactor.Params(lr=lr, beta2_decay=c)))[0], w)


# --------------------------------------------------------------------------- common
CLASSES = [adaptive.Adagrad, adaptive.RMSprop, adaptive.Adadelta, adaptive.AdamW, adaptive.AMSGrad, adaptive.NAdam,
           adaptive.RAdam, adaptive.Adamax, adaptive.Adafactor, Momentum, Nesterov]


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_defaults_build_over_a_generator_of_params_and_groups(cls):
    model = torch.nn.Linear(3, 2)
    opt = cls().build(model.parameters(), CPU)
    assert sum(len(g["params"]) for g in opt.param_groups) == 2
    groups = [{"params": [model.weight]}, {"params": [model.bias], "weight_decay": 0.0, "lr": 1e-4}]
    opt = cls().build(groups, CPU)
    assert opt.param_groups[1]["weight_decay"] == 0.0 and opt.param_groups[1]["lr"] == 1e-4
    assert "weight_decay" in opt.defaults  # param_groups may override it (check_group_options)


@pytest.mark.parametrize("cls, fused", [(adaptive.Adagrad, True), (adaptive.AdamW, True), (adaptive.AMSGrad, True),
                                        (adaptive.RMSprop, False), (adaptive.NAdam, False), (adaptive.Adafactor, False),
                                        (Momentum, True), (Nesterov, True)],
                         ids=lambda v: getattr(v, "__name__", str(v)))
def test_fused_kernel_on_cpu_where_torch_has_one(cls, fused):
    opt = cls().build(torch.nn.Linear(3, 2).parameters(), CPU)
    assert bool(opt.defaults.get("fused")) is fused


def test_radam_uses_foreach_on_cpu():
    assert adaptive.RAdam().build(torch.nn.Linear(3, 2).parameters(), CPU).defaults["foreach"] is True


@pytest.mark.parametrize("cls, params", [
    (adaptive.Adagrad, {"eps": 0.0}), (adaptive.RMSprop, {"alpha": 1.0}), (adaptive.Adadelta, {"rho": -0.1}),
    (adaptive.AdamW, {"betas": [0.9, 1.0]}), (adaptive.AMSGrad, {"betas": [0.9]}), (adaptive.NAdam, {"momentum_decay": -1}),
    (adaptive.RAdam, {"weight_decay": -0.1}), (adaptive.Adamax, {"lr": 0.0}), (adaptive.Adafactor, {"beta2_decay": 0.5}),
    (adaptive.Adafactor, {"d": 0.0}),
])
def test_adaptive_params_out_of_range(cls, params):
    with pytest.raises(ValidationError):
        cls.Params(**params)


FAMILY_CLI = {
    "momentum": "{name: momentum, lr: 0.05, form: torch, momentum: 0.9}",
    "adaptive": "{name: adamw, lr: 0.01, weight_decay: 0.01}",
}


@pytest.mark.parametrize("family", sorted(FAMILY_CLI))
def test_cli_runs_a_pipeline_of_the_family(family, invoke, write_pipeline, store):
    path = write_pipeline(f"""
        name: first-order-{family}
        seed: 0
        device: cpu
        data: {{name: synthetic, task: gaussian_mixture, dim: 4, n_train: 64, n_test: 32, batch_size: 16}}
        model: {{arch: {{name: mlp, widths: [8]}}}}
        loss: cross_entropy
        stages:
          fit: {{kind: train, optimizer: {FAMILY_CLI[family]}, epochs: 2}}
    """)
    result = invoke("run", path, "--json", "--store", store)
    assert result.exit_code == 0, result.stderr


# --------------------------------------------------------------------------- Reddi et al.'s counterexample
def _online_run(component, steps=900, c=3.0):
    """The online problem of Reddi et al. 2018 through the `online` data and `scalar` model
    (classes used directly: they need no registration), projected onto [−1, 1], α_t = 0.5/√t."""
    from nnopt.plugins.architectures.scalar import Scalar
    from nnopt.plugins.datasets.online import Online
    from nnopt.plugins.losses.mse import MSE

    data = Online(Online.Params(c=c)).prepare(0)
    model = Scalar(Scalar.Params(init=0.0, offset=10.0)).build(data.input_shape, data.output_dim, None)
    loss_fn = MSE().build()
    opt = component.build(model.parameters(), CPU)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: (1 + t) ** -0.5)
    grads = []
    for t in range(steps):
        i = t % data.n_train
        opt.zero_grad()
        loss_fn(model(data.x_train[i : i + 1]), data.y_train[i : i + 1]).backward()
        grads.append(model.x.grad.item())
        opt.step()
        sched.step()
        with torch.no_grad():
            model.x.clamp_(-1.0, 1.0)
    return model.x.item(), grads


def test_scalar_model_under_mse_gives_the_linear_online_losses():
    from nnopt.plugins.architectures.scalar import Scalar
    from nnopt.plugins.datasets.online import Online
    from nnopt.plugins.losses.mse import MSE

    data = Online(Online.Params(c=4.0, period=3)).prepare(0)
    assert data.x_train[:, 0].tolist() == [4.0, -1.0, -1.0] and data.y_train.abs().sum() == 0
    model = Scalar(Scalar.Params(init=0.3, offset=10.0)).build((1,), 1, None)
    loss = MSE().build("none")(model(data.x_test), data.y_test)
    torch.testing.assert_close(loss, torch.tensor([4.0 * 0.3 + 10, -0.3 + 10, -0.3 + 10]))
    _, grads = _online_run(adaptive.AMSGrad(adaptive.AMSGrad.Params(lr=0.5, betas=[0.0, 0.1])), steps=6, c=4.0)
    assert grads == pytest.approx([4.0, -1.0, -1.0] * 2, rel=1e-6)  # ∂f_t/∂x = a_t exactly


def test_adam_goes_to_the_worst_point_and_amsgrad_to_the_optimum():
    from nnopt.plugins.optimizers.adam import Adam

    beta2 = 1 / (1 + 3.0**2)
    x_adam, _ = _online_run(Adam(Adam.Params(lr=0.5, betas=[0.0, beta2])))
    x_ams, _ = _online_run(adaptive.AMSGrad(adaptive.AMSGrad.Params(lr=0.5, betas=[0.0, beta2])))
    assert x_adam > 0.9 and x_ams < -0.9
