"""weight_paths: batched (vmap) evaluation of many weight vectors equals the one-at-a-time loop;
losses over unequal batches are weighted by size; BatchNorm statistics recomputed per point."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from geometry_helpers import blobs, mlp
from nnopt.plugins.analyzers.weight_paths import PointEvaluator, float_state, recompute_bn, stack_lerp


def test_vmap_equals_the_loop_and_the_plain_evaluation():
    data = blobs(n_train=37, dtype=torch.float64)
    model = mlp(0, bn=True)
    model.train()
    model(data.x_train)  # non-trivial running statistics
    a = float_state(model)
    b = {k: v + 0.5 * torch.randn_like(v) for k, v in a.items()}
    alphas = torch.linspace(-0.5, 1.5, 9, dtype=torch.float64)
    splits = {"train": (data.x_train, data.y_train)}
    out = {}
    for method in ("vmap", "loop"):
        ev = PointEvaluator(model, F.cross_entropy, splits, True, method=method, chunk=4, batch_size=10)
        out[method] = ev.evaluate(9, lambda i, j: stack_lerp(a, b, alphas[i:j]))["train"]
    assert out["vmap"]["loss"] == pytest.approx(out["loop"]["loss"], abs=1e-10)
    assert out["vmap"]["accuracy"] == out["loop"]["accuracy"]
    # by hand, at α = 0.75: the full-batch mean loss (37 examples in batches of 10, 10, 10, 7)
    probe = mlp(0, bn=True)
    probe.load_state_dict({**model.state_dict(), **{k: (1 - 0.75) * a[k] + 0.75 * b[k] for k in a}})
    with torch.no_grad():
        expected = F.cross_entropy(probe.eval()(data.x_train), data.y_train).item()
    assert out["vmap"]["loss"][5] == pytest.approx(expected, rel=1e-12)
    assert model.training  # the mode is restored


def test_unequal_batches_are_weighted_by_size():
    """Two examples of loss 0 and 1 in batches of 1 and 1... and one of 4: batch means 0 and 1
    would average to 0.5; weighted by size the mean over all 5 examples is 4/5."""
    model = nn.Linear(1, 1, bias=False).double()
    with torch.no_grad():
        model.weight.fill_(1.0)
    x = torch.tensor([[0.0], [1.0], [1.0], [1.0], [1.0]], dtype=torch.float64)
    y = torch.tensor([[0.0], [0.0], [0.0], [0.0], [0.0]], dtype=torch.float64)
    for method in ("vmap", "loop"):
        ev = PointEvaluator(model, F.mse_loss, {"s": (x, y)}, False, method=method, batch_size=4)
        got = ev.evaluate(1, lambda i, j: {"weight": model.weight.detach().unsqueeze(0)})["s"]
        assert got["loss"] == [pytest.approx(4 / 5)] and got["accuracy"] is None


def test_recompute_bn_gives_the_size_weighted_statistics_of_each_point():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4)).double()
    x = torch.randn(23, 3, dtype=torch.float64)
    recompute_bn(model, x, batch_size=10)  # batches of 10, 10, 3
    with torch.no_grad():
        h = model[0](x)
    torch.testing.assert_close(model[1].running_mean, h.mean(0))  # exact: the size-weighted mean of batch means
    assert model[1].momentum == 0.1 and model.training  # momentum and mode restored (it was in train mode)
    means = []
    for scale in (1.0, 2.0):  # another point (weights), other statistics
        with torch.no_grad():
            model[0].weight.mul_(scale)
        recompute_bn(model, x, batch_size=23)
        with torch.no_grad():
            h = model[0](x)
        torch.testing.assert_close(model[1].running_mean, h.mean(0))
        torch.testing.assert_close(model[1].running_var, h.var(0, unbiased=True))
        means.append(model[1].running_mean.clone())
    assert not torch.allclose(means[0], means[1])


def test_recompute_mode_evaluates_one_point_at_a_time_with_fresh_statistics():
    data = blobs(n_train=40, dtype=torch.float64)
    model = mlp(1, bn=True)
    a = float_state(model)
    b = {k: v + torch.randn_like(v) for k, v in a.items()}
    ev = PointEvaluator(model, F.cross_entropy, {"train": (data.x_train, data.y_train)}, True, bn="recompute",
                        bn_inputs=data.x_train)
    assert ev.method == "loop"
    got = ev.evaluate(2, lambda i, j: stack_lerp(a, b, torch.tensor([0.0, 1.0], dtype=torch.float64)[i:j]))["train"]
    probe = mlp(1, bn=True)
    probe.load_state_dict({**probe.state_dict(), **b})
    recompute_bn(probe, data.x_train)
    with torch.no_grad():
        expected = F.cross_entropy(probe.eval()(data.x_train), data.y_train).item()
    assert got["loss"][1] == pytest.approx(expected, rel=1e-12)
    torch.testing.assert_close(model.state_dict()["1.running_mean"], a["1.running_mean"])  # restored


def test_auto_evaluates_one_point_at_a_time_on_a_cpu_and_batches_on_a_gpu():
    data = blobs(n_train=8, dtype=torch.float64)
    splits = {"train": (data.x_train, data.y_train)}
    assert PointEvaluator(mlp(0), F.cross_entropy, splits, True).method == "loop"
    if torch.cuda.is_available():  # GPU paths run on CPU too; this one only where there is a GPU
        assert PointEvaluator(mlp(0).cuda(), F.cross_entropy, splits, True).method == "vmap"
