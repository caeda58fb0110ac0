"""SGD, heavy-ball/Nesterov momentum and Adam follow their update equations (survey §5.1–5.4)."""

import pytest
import torch
from pydantic import ValidationError

from nnopt.plugins.optimizers.adam import Adam
from nnopt.plugins.optimizers.fused import build_fused_if_supported
from nnopt.plugins.optimizers.sgd import SGD

CPU = torch.device("cpu")
A = torch.tensor([[3.0, 1.0], [1.0, 2.0]])  # F(w) = ½ wᵀAw − bᵀw, ∇F = Aw − b
B = torch.tensor([1.0, -1.0])


def grad(w):
    return A @ w - B


def run(component, w0, steps):
    w = torch.nn.Parameter(w0.clone())
    opt = component.build([w], CPU)
    for _ in range(steps):
        opt.zero_grad()
        (0.5 * w @ A @ w - B @ w).backward()
        opt.step()
    return w.detach()


W0 = torch.tensor([1.0, 2.0])


def test_sgd_step_is_w_minus_lr_grad():
    w1 = run(SGD(SGD.Params(lr=0.1)), W0, 1)
    torch.testing.assert_close(w1, W0 - 0.1 * grad(W0))


def test_weight_decay_adds_lambda_w_to_the_gradient():
    w1 = run(SGD(SGD.Params(lr=0.1, weight_decay=0.5)), W0, 1)
    torch.testing.assert_close(w1, W0 - 0.1 * (grad(W0) + 0.5 * W0))


def test_heavy_ball_two_steps():
    lr, mu = 0.1, 0.9
    b1 = grad(W0)
    w1 = W0 - lr * b1
    b2 = mu * b1 + grad(w1)
    w2 = w1 - lr * b2
    torch.testing.assert_close(run(SGD(SGD.Params(lr=lr, momentum=mu)), W0, 2), w2)


def test_dampened_momentum_is_the_surveys_average():
    lr, beta = 0.1, 0.9  # m_t = β m_{t−1} + (1−β) g_t from step 2 on; torch starts the buffer at g_1
    m1 = grad(W0)
    w1 = W0 - lr * m1
    m2 = beta * m1 + (1 - beta) * grad(w1)
    torch.testing.assert_close(run(SGD(SGD.Params(lr=lr, momentum=beta, dampening=beta)), W0, 2), w1 - lr * m2)


def test_nesterov_two_steps():
    lr, mu = 0.1, 0.9
    g1 = grad(W0)
    w1 = W0 - lr * (g1 + mu * g1)
    g2 = grad(w1)
    b2 = mu * g1 + g2
    torch.testing.assert_close(run(SGD(SGD.Params(lr=lr, momentum=mu, nesterov=True)), W0, 2), w1 - lr * (g2 + mu * b2))


@pytest.mark.parametrize(
    "params",
    [{"lr": 0}, {"momentum": 1.0}, {"momentum": -0.1}, {"weight_decay": -1}, {"nesterov": True}, {"nesterov": True, "momentum": 0.9, "dampening": 0.1}],
)
def test_sgd_params_out_of_range(params):
    with pytest.raises(ValidationError):
        SGD.Params(**params)


def test_adam_first_step_has_magnitude_lr_in_every_coordinate():
    w1 = run(Adam(Adam.Params(lr=0.01)), W0, 1)
    torch.testing.assert_close(w1, W0 - 0.01 * torch.sign(grad(W0)))


def test_adam_two_steps_match_the_bias_corrected_recursion():
    lr, (b1, b2), eps = 0.01, (0.8, 0.99), 1e-8
    w, m, v = W0.clone(), torch.zeros(2), torch.zeros(2)
    for t in (1, 2):
        g = grad(w)
        m, v = b1 * m + (1 - b1) * g, b2 * v + (1 - b2) * g * g
        w = w - lr * (m / (1 - b1**t)) / ((v / (1 - b2**t)).sqrt() + eps)
    torch.testing.assert_close(run(Adam(Adam.Params(lr=lr, betas=[b1, b2])), W0, 2), w)


@pytest.mark.parametrize("params", [{"betas": [0.9, 1.0]}, {"betas": [0.9]}, {"lr": -1e-3}, {"eps": 0}])
def test_adam_params_out_of_range(params):
    with pytest.raises(ValidationError):
        Adam.Params(**params)


@pytest.mark.parametrize("component, fused_on_cpu", [(SGD(), False), (Adam(), True)])
def test_fused_kernels_where_they_are_faster_and_params_may_be_a_generator(component, fused_on_cpu):
    # on a CPU shared with other work, fused SGD was slower than foreach, fused Adam faster
    model = torch.nn.Linear(3, 2)
    opt = component.build(model.parameters(), CPU)
    assert bool(opt.defaults.get("fused")) is fused_on_cpu
    assert sum(len(g["params"]) for g in opt.param_groups) == 2


def test_falls_back_when_torch_refuses_to_fuse():
    class NoFused(torch.optim.SGD):
        def __init__(self, params, fused=None, **kw):
            if fused:
                raise RuntimeError("fused not supported here")
            super().__init__(params, **kw)

    opt = build_fused_if_supported(NoFused, iter([torch.nn.Parameter(torch.ones(2))]), CPU, lr=0.1)
    assert not opt.defaults.get("fused") and len(opt.param_groups[0]["params"]) == 1


def test_no_fused_kernel_on_device_types_not_listed():
    opt = build_fused_if_supported(torch.optim.Adam, [torch.nn.Parameter(torch.ones(2))], CPU, fused_on=("cuda",))
    assert not opt.defaults.get("fused")
