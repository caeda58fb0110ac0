"""Randomized block coordinate descent: one block changes, by −η∇_B F (or −∇_B F/L_i), reproducibly."""

import io

import pytest
import torch
from pydantic import ValidationError

from nnopt.core.kinds import DataSplit
from nnopt.core.loop import LoopCallback, TrainLoop
from nnopt.plugins.optimizers.coordinate_descent import CoordinateDescent, CoordinateDescentOptimizer

from loop_helpers import LoopCtx as Ctx

CPU = torch.device("cpu")
N = 20




def data():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(N, 3, generator=g, dtype=torch.float64)
    y = torch.randn(N, 2, generator=g, dtype=torch.float64)
    return DataSplit(x, y, x[:4], y[:4], "regression", (3,), 2)


def net():
    m = torch.nn.Linear(3, 2).double()  # weight (2, 3) and bias (2,): d = 8 coordinates
    with torch.no_grad():
        m.weight.copy_(torch.arange(6, dtype=torch.float64).reshape(2, 3) / 10)
        m.bias.copy_(torch.tensor([0.5, -0.5], dtype=torch.float64))
    return m


def flat(model):
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def full_grad(model, split):
    model.zero_grad()
    torch.nn.functional.mse_loss(model(split.x_train), split.y_train).backward()
    return torch.cat([p.grad.reshape(-1) for p in model.parameters()])


class Record(LoopCallback):
    """The weights and the full-batch gradient before each update, and the weights after."""

    def __init__(self, split):
        self.split, self.before, self.grads, self.after = split, [], [], []

    def on_step_start(self, loop):
        self.before.append(flat(loop.model))
        self.grads.append(full_grad(loop.model, self.split))

    def after_step(self, loop):
        self.after.append(flat(loop.model))


def loop_of(params, split, total, seed=0, callbacks=(), ctx=None, checkpoint_due=lambda s: False):
    component = CoordinateDescent(CoordinateDescent.Params(**params))
    model = net()
    opt = component.build(model.parameters(), CPU)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    return TrainLoop(ctx or Ctx(seed), model, opt, sched, torch.nn.functional.mse_loss, split, total=total,
                     batch_size=5, shuffle_seed=0, evaluate=lambda m: {}, log_every=1, callbacks=list(callbacks),
                     step_rule=component.step_rule(), checkpoint_due=checkpoint_due)


@pytest.mark.parametrize("params,size", [({"block_size": 1}, 1), ({"block_size": 3}, 3), ({"blocks": "parameter"}, None)])
def test_only_the_chosen_block_changes_by_minus_lr_times_its_full_batch_gradient(params, size):
    split = data()
    rec = Record(split)
    loop_of({"lr": 0.1, **params}, split, 12, callbacks=[rec]).run()
    for before, g, after in zip(rec.before, rec.grads, rec.after):
        changed = (after != before).nonzero().flatten()
        if size is not None:
            assert changed.numel() == size
        else:  # a whole parameter: the weight's 6 coordinates or the bias's 2
            assert changed.tolist() in (list(range(6)), [6, 7])
        expected = before.clone()
        expected[changed] -= 0.1 * g[changed]
        torch.testing.assert_close(after, expected, rtol=1e-12, atol=1e-15)


def test_lipschitz_step_is_one_over_the_coordinates_curvature_and_minimizes_along_it():
    split = data()
    rec = Record(split)
    loop_of({"step": "lipschitz", "lr": 1e-6}, split, 8, callbacks=[rec]).run()
    x1 = torch.cat([split.x_train, torch.ones(N, 1, dtype=torch.float64)], 1)
    per_output = 2 * x1.T @ x1 / (N * 2)  # Hessian of the mean over n·k elements, per output row
    diag = torch.cat([per_output.diagonal()[:3], per_output.diagonal()[:3], per_output.diagonal()[3:].repeat(2)])
    for before, g, after in zip(rec.before, rec.grads, rec.after):
        (i,) = (after != before).nonzero().flatten().tolist()
        assert after[i] == pytest.approx(float(before[i] - g[i] / diag[i]), rel=1e-12)  # L_i = H_ii
    model = net()
    with torch.no_grad():
        for p, v in zip(model.parameters(), torch.split(rec.after[-1], [6, 2])):
            p.copy_(v.reshape(p.shape))
    assert abs(float(full_grad(model, split)[i])) < 1e-12  # exact minimization along that coordinate


def test_every_coordinate_is_drawn_with_probability_block_size_over_d():
    w = torch.nn.Parameter(torch.zeros(6))
    opt = CoordinateDescentOptimizer([w], lr=1.0, block_size=2, seed=5)
    counts = torch.zeros(6)
    for _ in range(1500):
        ((_, idx),) = opt.draw_block()
        assert idx.numel() == 2 and idx[0] != idx[1]
        counts[idx] += 1
    assert torch.all((counts - 500).abs() < 100)  # binomial(1500, 1/3): std ≈ 18
    # replaying the same draws as steps on a fixed gradient g: each step moves only its block by −ηg,
    # so the mean step is −η (counts/steps) g, whose expectation is −η (b/d) g
    opt.seed(5)
    w.grad = torch.arange(1.0, 7.0)
    for _ in range(1500):
        opt.step()
    torch.testing.assert_close(w.detach() / 1500, -(counts / 1500) * w.grad)


def test_the_draws_follow_the_stage_seed_and_resume_bitwise():
    split = data()
    runs = {}
    for seed in (0, 0, 1):
        loop = loop_of({"lr": 0.1}, split, 15, seed=seed)
        loop.run()
        runs.setdefault(seed, []).append(flat(loop.model))
    assert torch.equal(runs[0][0], runs[0][1])
    assert not torch.equal(runs[0][0], runs[1][0])
    ctx = Ctx(0)
    loop_of({"lr": 0.1}, split, 15, ctx=ctx, checkpoint_due=lambda s: s == 7).run()
    resumed = loop_of({"lr": 0.1}, split, 15)
    resumed.load_state_dict(torch.load(io.BytesIO(ctx.saved), weights_only=False))
    resumed.run()
    assert torch.equal(flat(resumed.model), runs[0][0])


@pytest.mark.parametrize(
    "params", [{"lr": 0}, {"block_size": 0}, {"blocks": "parameter", "block_size": 2}, {"step": "newton"}, {"blocks": "row"}]
)
def test_params_out_of_range(params):
    with pytest.raises(ValidationError):
        CoordinateDescent.Params(**params)


def test_a_block_larger_than_the_model_is_refused():
    with pytest.raises(ValueError, match="block_size 9"):
        CoordinateDescent(CoordinateDescent.Params(block_size=9)).build(net().parameters(), CPU)
