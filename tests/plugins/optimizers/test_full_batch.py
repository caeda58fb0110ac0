"""gd takes the exact full-batch gradient step, whatever the chunking, and resumes exactly."""

from __future__ import annotations


import pytest
import torch
from torch import nn

from nnopt.core.errors import StageError
from nnopt.core.kinds import DataSplit
from nnopt.core.loop import TrainLoop
from nnopt.plugins.optimizers.full_batch import GD

from loop_helpers import RecordingCtx as _Ctx

CPU = torch.device("cpu")
D = torch.float64


def _data(n=37, dim=3):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, dim, generator=g, dtype=D)
    y = x @ torch.tensor([[1.0], [-2.0], [0.5]], dtype=D) + 0.1 * torch.randn(n, 1, generator=g, dtype=D)
    return DataSplit(x, y, x[:5], y[:5], "regression", (dim,), 1)


def _loop(component, total, batch_size=None, data=None, checkpoint_due=lambda s: False):
    data = data or _data()
    torch.manual_seed(0)
    model = nn.Linear(3, 1).double()
    opt = component.build(model.parameters(), CPU)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 1.0)
    ctx = _Ctx()
    loop = TrainLoop(ctx, model, opt, sched, nn.functional.mse_loss, data, total=total,
                     batch_size=batch_size or data.n_train, shuffle_seed=0, evaluate=lambda m: {"loss": 0.0},
                     log_every=1, checkpoint_due=checkpoint_due, step_rule=component.step_rule())
    return loop, ctx


def _full_gradient(w, b, x, y):
    """∇ of L(w, b) = (1/n) Σ_i (wᵀx_i + b − y_i)², by hand."""
    r = x @ w + b - y[:, 0]
    return 2 * x.T @ r / len(r), 2 * r.mean(), (r * r).mean()


@pytest.mark.parametrize("chunk_size", [37, 5, 1])
def test_gd_steps_are_exact_full_gradient_steps_whatever_the_chunks(chunk_size):
    lr, steps = 0.1, 3
    loop, ctx = _loop(GD(GD.Params(lr=lr, chunk_size=chunk_size)), steps)
    w, b = loop.model.weight.detach()[0].clone(), loop.model.bias.detach()[0].clone()
    data = loop.data
    losses = []
    for _ in range(steps):
        gw, gb, loss = _full_gradient(w, b, data.x_train, data.y_train)
        losses.append(loss.item())
        w, b = w - lr * gw, b - lr * gb
    assert loop.run().status == "ok"
    torch.testing.assert_close(loop.model.weight.detach()[0], w, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(loop.model.bias.detach()[0], b, rtol=1e-10, atol=1e-12)
    logged = [r["loss"] for r in ctx.lines if "loss" in r and "step" in r and "test_loss" not in r]
    assert logged == pytest.approx(losses, rel=1e-10)  # the full-batch loss before each update
    assert [r["epoch"] for r in ctx.lines if "test_loss" not in r] == [1.0, 2.0, 3.0]  # an epoch is one step


def test_gd_with_momentum_and_weight_decay_is_heavy_ball_on_the_full_gradient():
    lr, mu, wd, steps = 0.05, 0.9, 0.01, 3
    loop, _ = _loop(GD(GD.Params(lr=lr, momentum=mu, weight_decay=wd, chunk_size=8)), steps)
    w, b = loop.model.weight.detach()[0].clone(), loop.model.bias.detach()[0].clone()
    bw = bb = None
    for _ in range(steps):
        gw, gb, _ = _full_gradient(w, b, loop.data.x_train, loop.data.y_train)
        gw, gb = gw + wd * w, gb + wd * b
        bw, bb = (gw, gb) if bw is None else (mu * bw + gw, mu * bb + gb)
        w, b = w - lr * bw, b - lr * bb
    loop.run()
    torch.testing.assert_close(loop.model.weight.detach()[0], w, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(loop.model.bias.detach()[0], b, rtol=1e-10, atol=1e-12)


def test_gd_refuses_an_epoch_of_several_steps():
    loop, _ = _loop(GD(), 2, batch_size=10)
    with pytest.raises(StageError, match="batch_size to at least 37"):
        loop.run()


def test_gd_resumes_bitwise_through_the_optimizer_state_dict():
    component = GD(GD.Params(lr=0.05, momentum=0.9, chunk_size=10))
    straight, _ = _loop(component, 6)
    straight.run()
    first, ctx = _loop(component, 6, checkpoint_due=lambda step: step == 3)
    first.run()
    state = ctx.checkpoints[0]
    assert state["step"] == 3 and state["optimizer"]["state"]  # the momentum buffers are in it
    resumed, _ = _loop(component, 6)
    resumed.load_state_dict(state)
    resumed.run()
    for a, b in zip(straight.model.parameters(), resumed.model.parameters()):
        assert torch.equal(a, b)


def test_cli_runs_a_gd_pipeline(invoke, write_pipeline, store):
    path = write_pipeline("""
        name: gd-cli
        seed: 0
        device: cpu
        data: {name: synthetic, task: least_squares, dim: 4, n_train: 50, n_test: 20, batch_size: 50}
        model: {arch: {name: linear, widths: []}}
        loss: mse
        stages:
          fit: {kind: train, optimizer: {name: gd, lr: 0.2, chunk_size: 16}, epochs: 5}
    """)
    result = invoke("run", path, "--json", "--store", store)
    assert result.exit_code == 0, result.stderr
    assert '"steps": 5' in result.stdout
