"""Natural gradient: Fisher-vector products equal the dense Fisher, and a step solves (F + λI) d = g."""

import contextlib
import copy
from types import SimpleNamespace

import pytest
import torch
from torch import nn
from torch.func import functional_call, hessian, jacrev

from nnopt.core.errors import StageError
from nnopt.core.kinds import DataSplit
from nnopt.core.loop import TrainLoop
from nnopt.plugins.losses.mse import MSE
from nnopt.plugins.optimizers._curvature import BatchFunction, conjugate_gradient, flatten
from nnopt.plugins.optimizers.natural_gradient import NaturalGradient

CPU = torch.device("cpu")
CE = nn.functional.cross_entropy


class FakeLoop:
    """What a step rule reads of the loop: model, optimizer, loss, forward context, hooks."""

    def __init__(self, model, optimizer, loss_fn):
        self.model, self.optimizer, self.loss_fn = model, optimizer, loss_fn
        self.hooks = SimpleNamespace(after_backward=[])

    def forward(self):
        return contextlib.nullcontext()


def tiny(seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 3)).double()
    x = torch.randn(5, 3, dtype=torch.float64)
    y = torch.tensor([0, 2, 1, 2, 0])
    return model, x, y


def dense_gauss_newton(model, x, y, loss_fn):
    """Jᵀ H J with J = ∂z/∂θ and H = ∇²_z L formed explicitly."""
    names = [n for n, _ in model.named_parameters()]
    theta = flatten([p.detach() for p in model.parameters()])
    shapes = [p.shape for p in model.parameters()]

    def outputs(flat):
        parts, start = {}, 0
        for n, s in zip(names, shapes):
            k = s.numel()
            parts[n] = flat[start : start + k].view(s)
            start += k
        return functional_call(model, parts, (x,))

    z = outputs(theta).detach()
    J = jacrev(outputs)(theta).reshape(z.numel(), -1)
    H = hessian(lambda out: loss_fn(out.view_as(z), y))(z.reshape(-1))
    return J.T @ H @ J


def dense_empirical_fisher(model, x, y, loss_fn):
    rows = []
    for i in range(x.shape[0]):
        model.zero_grad()
        loss_fn(model(x[i : i + 1]), y[i : i + 1]).backward()
        rows.append(flatten([p.grad for p in model.parameters()]))
    G = torch.stack(rows)
    return G.T @ G / x.shape[0]


def test_gauss_newton_vector_product_equals_dense_fisher_times_v():
    model, x, y = tiny()
    v = torch.randn(sum(p.numel() for p in model.parameters()), dtype=torch.float64)
    product = BatchFunction(model, list(model.parameters()), CE, x, y).gauss_newton()
    torch.testing.assert_close(product(v), dense_gauss_newton(model, x, y, CE) @ v, rtol=1e-10, atol=1e-12)


def test_softmax_gauss_newton_is_the_fisher_of_the_predictive_distribution():
    # F = (1/n) Σ_i E_{ŷ∼p_i}[∇ log p(ŷ) ∇ log p(ŷ)ᵀ], summed over the classes in closed form
    model, x, y = tiny()
    n, rows = x.shape[0], []
    for i in range(n):
        p = torch.softmax(model(x[i : i + 1]), 1).detach()[0]
        for c in range(3):
            model.zero_grad()
            CE(model(x[i : i + 1]), torch.tensor([c])).backward()
            rows.append(p[c].sqrt() * flatten([q.grad for q in model.parameters()]))
    R = torch.stack(rows)
    torch.testing.assert_close(dense_gauss_newton(model, x, y, CE), R.T @ R / n, rtol=1e-9, atol=1e-12)


def test_empirical_fisher_vector_product_equals_dense_empirical_fisher_times_v():
    model, x, y = tiny()
    v = torch.randn(sum(p.numel() for p in model.parameters()), dtype=torch.float64)
    product = BatchFunction(model, list(model.parameters()), CE, x, y).empirical_fisher(10**9)
    torch.testing.assert_close(product(v), dense_empirical_fisher(model, x, y, CE) @ v, rtol=1e-10, atol=1e-12)


def test_conjugate_gradient_solves_a_dense_system():
    torch.manual_seed(1)
    M = torch.randn(6, 6, dtype=torch.float64)
    A = M @ M.T + 0.1 * torch.eye(6, dtype=torch.float64)
    b = torch.randn(6, dtype=torch.float64)
    result = conjugate_gradient(lambda v: A @ v, b, max_iters=50, tol=0.0)
    torch.testing.assert_close(result.x, torch.linalg.solve(A, b), rtol=1e-9, atol=1e-10)
    warm = conjugate_gradient(lambda v: A @ v, b, x0=torch.linalg.solve(A, b), max_iters=50, tol=1e-12)
    assert warm.iterations == 0  # started at the solution: no iteration needed


@pytest.mark.parametrize("fisher", ["true", "empirical"])
@pytest.mark.parametrize("loss", ["ce", "mse"])
def test_step_is_the_damped_natural_gradient_of_the_dense_system(fisher, loss):
    model, x, y = tiny()
    loss_fn = CE if loss == "ce" else MSE().build()
    if loss == "mse":
        y = torch.randn(5, 3, dtype=torch.float64)
    lr, damping = 0.3, 0.05
    F = (dense_gauss_newton if fisher == "true" else dense_empirical_fisher)(model, x, y, loss_fn)
    model.zero_grad()
    before = loss_fn(model(x), y)
    before.backward()
    g = flatten([p.grad for p in model.parameters()])
    d = torch.linalg.solve(F + damping * torch.eye(len(g), dtype=torch.float64), g)
    theta0 = flatten([p.detach() for p in model.parameters()]).clone()

    component = NaturalGradient(NaturalGradient.Params(lr=lr, damping=damping, fisher=fisher, cg_iters=200, cg_tol=0))
    opt = component.build(model.parameters(), CPU)
    loss0 = component.step_rule().step(FakeLoop(model, opt, loss_fn), x, y)
    theta1 = flatten([p.detach() for p in model.parameters()])
    torch.testing.assert_close(theta1, theta0 - lr * d, rtol=1e-6, atol=1e-8)
    assert loss0.dim() == 0 and float(loss0) == float(before)  # the loss at the weights before the update


def test_dropout_is_refused_with_a_message():
    model = nn.Sequential(nn.Linear(3, 4), nn.Dropout(0.5), nn.Linear(4, 3))
    opt = NaturalGradient().build(model.parameters(), CPU)
    with pytest.raises(StageError, match="Dropout"):
        NaturalGradient().step_rule().step(FakeLoop(model, opt, CE), torch.randn(4, 3), torch.tensor([0, 1, 2, 0]))


def test_batchnorm_running_stats_move_once_per_step_as_in_plain_training():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 3))
    x, y = torch.randn(8, 3), torch.randint(0, 3, (8,))
    reference = copy.deepcopy(model)
    reference(x)  # one training-mode forward updates the running averages once
    opt = NaturalGradient().build(model.parameters(), CPU)
    NaturalGradient().step_rule().step(FakeLoop(model, opt, CE), x, y)
    assert torch.equal(model[1].running_mean, reference[1].running_mean)
    assert int(model[1].num_batches_tracked) == 1


def test_empirical_fisher_refuses_batch_norm_and_oversized_batches():
    torch.manual_seed(0)
    bn = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 3))
    fn = BatchFunction(bn, list(bn.parameters()), CE, torch.randn(4, 3), torch.tensor([0, 1, 2, 0]))
    with pytest.raises(StageError, match="batch statistics"):
        fn.empirical_fisher(10**9)
    model, x, y = tiny()
    with pytest.raises(StageError, match="cap"):
        BatchFunction(model, list(model.parameters()), CE, x, y).empirical_fisher(10)


class _Ctx:
    def __init__(self):
        self.checkpoints = []

    def log_metrics(self, record):
        pass

    def save_checkpoint(self, state):
        self.checkpoints.append(copy.deepcopy(state))


def make_loop(component, total, init_seed=0, checkpoint_at=None):
    torch.manual_seed(init_seed)
    model = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 3))
    g = torch.Generator().manual_seed(0)
    x = torch.randn(24, 3, generator=g)
    data = DataSplit(x, torch.randint(0, 3, (24,), generator=g), x[:4], torch.zeros(4, dtype=torch.long),
                     "classification", (3,), 3, 3)
    opt = component.build(model.parameters(), CPU)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 1.0 / (1 + t))
    ctx = _Ctx()
    loop = TrainLoop(ctx, model, opt, sched, CE, data, total=total, batch_size=8, shuffle_seed=0,
                     evaluate=lambda m: {}, log_every=2, callbacks=component.callbacks(opt, model),
                     step_rule=component.step_rule(), checkpoint_due=lambda s: s == checkpoint_at)
    return loop, ctx


def resumed_equals_uninterrupted(component, total=6, at=2):
    straight, _ = make_loop(component, total)
    assert straight.run().status == "ok"
    first, ctx = make_loop(component, total, checkpoint_at=at)
    first.run()
    resumed, _ = make_loop(component, total, init_seed=1)  # other weights: everything must come from the checkpoint
    resumed.load_state_dict(ctx.checkpoints[0])
    assert resumed.run().status == "ok"
    for a, b in zip(straight.model.parameters(), resumed.model.parameters()):
        assert torch.equal(a, b)
    return straight, resumed


def test_resume_is_bitwise():
    resumed_equals_uninterrupted(NaturalGradient(NaturalGradient.Params(lr=0.5, cg_iters=5)))
