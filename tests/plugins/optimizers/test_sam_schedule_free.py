"""SAM's two-pass step and schedule-free's y/z/x sequences, by hand, in float64."""

import contextlib
import copy
from types import SimpleNamespace

import pytest
import torch
from pydantic import ValidationError

from nnopt.plugins.optimizers.sam import SAM
from nnopt.plugins.optimizers.schedule_free import ScheduleFree, ScheduleFreeSwap

CPU = torch.device("cpu")
G = torch.Generator().manual_seed(1)
X = torch.randn(16, 3, generator=G, dtype=torch.float64)
Y = torch.randn(16, 1, generator=G, dtype=torch.float64)


def model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1)).double()


def mse(out, y):
    return ((out - y) ** 2).mean()


def flat_grad(m, at):
    """∇L at the flat parameter vector ``at`` (the model's weights are left as they were)."""
    saved = torch.nn.utils.parameters_to_vector(m.parameters()).detach().clone()
    with torch.no_grad():
        torch.nn.utils.vector_to_parameters(at, m.parameters())
    m.zero_grad()
    mse(m(X), Y).backward()
    g = torch.cat([p.grad.flatten() for p in m.parameters()]).clone()
    with torch.no_grad():
        torch.nn.utils.vector_to_parameters(saved, m.parameters())
    return g


def fake_loop(m, optimizer, after_backward=()):
    return SimpleNamespace(model=m, optimizer=optimizer, loss_fn=mse, forward=contextlib.nullcontext,
                           hooks=SimpleNamespace(after_backward=list(after_backward)))


def test_sam_update_is_the_gradient_at_the_ascended_point():
    lr, rho = 0.1, 0.05
    m = model()
    theta = torch.nn.utils.parameters_to_vector(m.parameters()).detach().clone()
    g = flat_grad(m, theta)
    expected = theta - lr * flat_grad(m, theta + rho * g / g.norm())
    component = SAM(SAM.Params(lr=lr, rho=rho))
    seen = []
    loop = fake_loop(m, component.build(m.parameters(), CPU),
                     [lambda lp: seen.append(torch.cat([p.grad.flatten() for p in lp.model.parameters()]).clone())])
    loss = component.step_rule().step(loop, X, Y)
    got = torch.nn.utils.parameters_to_vector(m.parameters()).detach()
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-7)  # the library takes ‖g‖ in float32
    with torch.no_grad():
        assert float(loss) == pytest.approx(float(mse(model()(X), Y)), rel=1e-12)  # the loss at θ, before the step
    assert len(seen) == 1  # the hooks ran on the second gradient, the update's
    torch.testing.assert_close(seen[0], flat_grad(model(), theta + rho * g / g.norm()), rtol=1e-6, atol=1e-7)


def test_asam_scales_the_ascent_by_the_weights():
    lr, rho = 0.1, 0.5
    m = model()
    theta = torch.nn.utils.parameters_to_vector(m.parameters()).detach().clone()
    g = flat_grad(m, theta)
    eps = rho * theta**2 * g / (theta.abs() * g).norm()
    expected = theta - lr * flat_grad(m, theta + eps)
    component = SAM(SAM.Params(lr=lr, rho=rho, adaptive=True))
    component.step_rule().step(fake_loop(m, component.build(m.parameters(), CPU)), X, Y)
    torch.testing.assert_close(torch.nn.utils.parameters_to_vector(m.parameters()).detach(), expected, rtol=1e-6, atol=1e-7)


def test_sam_momentum_is_in_the_state_dict_and_resumes_bitwise():
    component = SAM(SAM.Params(lr=0.05, momentum=0.9))
    m = model()
    loop = fake_loop(m, component.build(m.parameters(), CPU))
    for _ in range(2):
        component.step_rule().step(loop, X, Y)
    # a checkpoint is a copy on disk; state_dict() alone shares the live tensors
    saved_model, saved_opt = copy.deepcopy(m.state_dict()), copy.deepcopy(loop.optimizer.state_dict())
    assert any("momentum_buffer" in s for s in saved_opt["state"].values())
    for _ in range(2):
        component.step_rule().step(loop, X, Y)
    m2 = model()
    m2.load_state_dict(saved_model)
    loop2 = fake_loop(m2, component.build(m2.parameters(), CPU))
    loop2.optimizer.load_state_dict(saved_opt)
    for _ in range(2):
        component.step_rule().step(loop2, X, Y)
    assert all(torch.equal(a, b) for a, b in zip(m.state_dict().values(), m2.state_dict().values()))


def test_sam_params():
    assert SAM.Params(base="adam").lr == 1e-3 and SAM.Params().lr == 0.1
    with pytest.raises(ValidationError):
        SAM.Params(base="adam", momentum=0.9)
    with pytest.raises(ValidationError):
        SAM.Params(rho=0.0)


# ------------------------------------------------------------------ schedule-free
def sf_steps(opt, m, steps):
    for _ in range(steps):
        opt.zero_grad()
        mse(m(X), Y).backward()
        opt.step()


def test_schedule_free_sgd_sequences_by_hand():
    lr, beta, steps = 0.2, 0.9, 4
    m = model()
    z = x = torch.nn.utils.parameters_to_vector(m.parameters()).detach().clone()
    for t in range(steps):
        y = (1 - beta) * z + beta * x
        z = z - lr * flat_grad(m, y)
        c = 1.0 / (t + 1)  # r = 0, no warmup: x is the running mean of z_1..z_{t+1}
        x = (1 - c) * x + c * z
    y = (1 - beta) * z + beta * x
    component = ScheduleFree(ScheduleFree.Params(lr=lr, momentum=beta))
    opt = component.build(m.parameters(), CPU)
    swap = component.callbacks(opt, m)[0]
    assert isinstance(swap, ScheduleFreeSwap)
    swap.on_train_start(None)
    sf_steps(opt, m, steps)
    vec = lambda: torch.nn.utils.parameters_to_vector(m.parameters()).detach().clone()  # noqa: E731
    torch.testing.assert_close(vec(), y, rtol=1e-10, atol=1e-12)  # training holds y
    with swap.evaluate_context(None):
        torch.testing.assert_close(vec(), x, rtol=1e-10, atol=1e-12)  # the result is x
    torch.testing.assert_close(vec(), y, rtol=1e-10, atol=1e-12)  # and training continues from y
    sf_steps(opt, m, 1)  # still in train mode: step() would raise otherwise


def test_schedule_free_resumes_bitwise_from_its_state_dict():
    component = ScheduleFree(ScheduleFree.Params(base="adamw", lr=0.01, warmup_steps=2))
    m = model()
    opt = component.build(m.parameters(), CPU)
    component.callbacks(opt, m)[0].on_train_start(None)
    sf_steps(opt, m, 3)
    with component.callbacks(opt, m)[0].evaluate_context(None):  # a checkpoint taken after an evaluation
        pass
    saved_model, saved_opt = copy.deepcopy(m.state_dict()), copy.deepcopy(opt.state_dict())
    sf_steps(opt, m, 3)
    m2 = model()
    m2.load_state_dict(saved_model)
    opt2 = component.build(m2.parameters(), CPU)
    opt2.load_state_dict(saved_opt)
    component.callbacks(opt2, m2)[0].on_train_start(None)
    sf_steps(opt2, m2, 3)
    assert all(torch.equal(a, b) for a, b in zip(m.state_dict().values(), m2.state_dict().values()))


def test_schedule_free_params():
    assert ScheduleFree.Params().lr == 1.0 and ScheduleFree.Params(base="adamw").lr == 0.0025
    with pytest.raises(ValidationError):
        ScheduleFree.Params(beta2=0.99)  # adamw's
    with pytest.raises(ValidationError):
        ScheduleFree.Params(momentum=1.0)
