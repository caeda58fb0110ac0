"""SVRG (Johnson & Zhang 2013): the variance-reduced gradient, its snapshot, its convergence, resumption."""

import io

import pytest
import torch
from pydantic import ValidationError

from nnopt.core.kinds import DataSplit
from nnopt.core.loop import LoopCallback, TrainLoop
from nnopt.plugins.optimizers.sgd import SGD
from nnopt.plugins.optimizers.svrg import SVRG

from loop_helpers import LoopCtx as Ctx

N, D, BATCH = 32, 3, 4




def problem(noise=0.5):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(N, D, generator=g, dtype=torch.float64)
    y = x @ torch.tensor([[1.0], [-2.0], [0.5]], dtype=torch.float64) + noise * torch.randn(N, 1, generator=g, dtype=torch.float64)
    return DataSplit(x, y, x[:4], y[:4], "regression", (D,), 1)


def model():
    m = torch.nn.Linear(D, 1, bias=False).double()
    with torch.no_grad():
        m.weight.copy_(torch.tensor([[0.3, 0.1, -0.4]], dtype=torch.float64))
    return m


def loop_of(component, data, total, callbacks=(), ctx=None, checkpoint_due=lambda s: False):
    net = model()
    opt = component.build(net.parameters(), torch.device("cpu"))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    return TrainLoop(ctx or Ctx(), net, opt, sched, torch.nn.functional.mse_loss, data, total=total, batch_size=BATCH,
                     shuffle_seed=0, evaluate=lambda m: {}, log_every=1, callbacks=list(callbacks),
                     step_rule=component.step_rule(), checkpoint_due=checkpoint_due)


def grad_ls(w, x, y):  # ∇ of mean((xw − y)²) for w of shape (1, D)
    return (2.0 / x.shape[0]) * ((x @ w.T - y).T @ x)


class Record(LoopCallback):
    """θ, the batch and the gradient handed to the optimizer, at every step."""

    def __init__(self):
        self.rows = []

    def after_backward(self, loop):
        w = loop.model.weight
        self.rows.append((loop.step, w.detach().clone(), *loop.batch, w.grad.detach().clone()))


def test_variance_reduced_gradient_is_the_formula_and_equals_mu_at_the_snapshot():
    data, rec = problem(), Record()
    loop_of(SVRG(SVRG.Params(lr=0.05)), data, total=20, callbacks=[rec]).run()
    per_epoch = N // BATCH
    snapshot = mu = None
    for step, w, xb, yb, used in rec.rows:
        if step % per_epoch == 0:  # the snapshot is taken at the weights of the epoch's first step
            snapshot, mu = w, grad_ls(w, data.x_train, data.y_train)
            assert torch.equal(used, mu), "at θ = θ̃ the variance-reduced gradient is μ exactly"
        expected = grad_ls(w, xb, yb) - grad_ls(snapshot, xb, yb) + mu
        torch.testing.assert_close(used, expected, rtol=1e-10, atol=1e-12)
    assert len(rec.rows) == 20


def distance_to_optimum(component, data, epochs):
    loop = loop_of(component, data, total=epochs * (N // BATCH))
    loop.run()
    w_opt = torch.linalg.lstsq(data.x_train, data.y_train).solution.T
    return float(torch.linalg.norm(loop.model.weight.detach() - w_opt))


def test_linear_convergence_where_constant_step_sgd_stalls_at_a_noise_floor():
    data, lr = problem(noise=0.5), 0.1
    svrg = [distance_to_optimum(SVRG(SVRG.Params(lr=lr)), data, e) for e in (10, 20)]
    sgd = [distance_to_optimum(SGD(SGD.Params(lr=lr)), data, e) for e in (10, 20)]
    assert svrg[1] < 1e-3 * svrg[0]  # linear: ten more epochs divide the error by over 1000
    assert svrg[1] < 1e-9
    assert sgd[1] > 1e-2 and sgd[1] > 0.3 * sgd[0]  # SGD's error hardly shrinks: a noise floor ∝ η


def test_resumed_run_is_bitwise_the_uninterrupted_one():
    data = problem()
    whole = loop_of(SVRG(SVRG.Params(lr=0.05)), data, total=21)
    whole.run()
    ctx = Ctx()
    first = loop_of(SVRG(SVRG.Params(lr=0.05)), data, total=21, ctx=ctx, checkpoint_due=lambda s: s == 11)
    first.run()
    resumed = loop_of(SVRG(SVRG.Params(lr=0.05)), data, total=21)
    resumed.load_state_dict(torch.load(io.BytesIO(ctx.saved), weights_only=False))
    assert resumed.step == 11 and "snapshot" in resumed.optimizer.state[resumed.model.weight]
    resumed.run()
    assert torch.equal(resumed.model.weight, whole.model.weight)


@pytest.mark.parametrize("params", [{"lr": 0}, {"snapshot_epochs": 0}, {"weight_decay": -1}])
def test_params_out_of_range(params):
    with pytest.raises(ValidationError):
        SVRG.Params(**params)
