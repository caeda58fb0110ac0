"""probe_callbacks.py driven by a real TrainLoop: the update-to-weight ratio of plain SGD is
η‖g‖/‖θ‖, the loss watch sees an easy regression fall, and NormStats reads the scale of the
input a BatchNorm receives."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from nnopt.core.kinds import DataSplit
from nnopt.core.loop import LoopCallback, TrainLoop
from nnopt.plugins.diagnosis.probe_callbacks import LossWatch, NormStats, UpdateRatio


class Ctx:
    def log_metrics(self, record):
        pass

    def save_checkpoint(self, state):
        pass


def split(x, y):
    return DataSplit(x_train=x, y_train=y, x_test=x[:0], y_test=y[:0], task="regression",
                     input_shape=tuple(x.shape[1:]), output_dim=y.shape[1])


def regression(n=256, d=8, scale=1.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = scale * torch.randn(n, d, generator=g)
    y = torch.tanh(x @ torch.randn(d, 2, generator=g) / scale)
    return x, y


def run(model, opt, data, callbacks, total, batch_size=32, log_every=10):
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    loop = TrainLoop(Ctx(), model, opt, sched, nn.functional.mse_loss, data, total=total, batch_size=batch_size,
                     shuffle_seed=0, evaluate=lambda m: {}, log_every=log_every, callbacks=callbacks)
    return loop, loop.run()


class GradNorms(LoopCallback):
    """The test's own record of ‖g‖ and ‖θ‖ per weight matrix, before each update."""

    def __init__(self, model):
        self.params = [(n, p) for n, p in model.named_parameters() if p.dim() >= 2]
        self.at = {}

    def after_backward(self, loop):
        self.at[loop.step] = {n: (float(p.grad.norm()), float(p.detach().norm())) for n, p in self.params}


def mlp(d=8, width=32, out=2, seed=0):
    with torch.random.fork_rng():  # seeded init without moving the global generator
        torch.manual_seed(seed)
        return nn.Sequential(nn.Linear(d, width), nn.Tanh(), nn.Linear(width, width), nn.Tanh(), nn.Linear(width, out))


def test_update_ratio_of_plain_sgd_is_lr_times_grad_over_weight_norm():
    model, lr = mlp(), 0.05
    x, y = regression()
    ratio, grads = UpdateRatio(model, every=5), GradNorms(model)
    loop, res = run(model, torch.optim.SGD(model.parameters(), lr=lr), split(x, y), [ratio, grads], total=23)
    assert res.status == "ok"
    assert [r["step"] for r in ratio.records] == [0, 5, 10, 15, 20]
    for rec in ratio.records:
        assert set(rec["ratios"]) == {"0.weight", "2.weight", "4.weight"}  # biases left out
        for name, r in rec["ratios"].items():
            g, w = grads.at[rec["step"]][name]
            assert r == pytest.approx(lr * g / w, rel=1e-4)
    s = ratio.summary()
    assert s["names"] == ["0.weight", "2.weight", "4.weight"] and s["records"] == 5
    for name in s["names"]:
        vals = [rec["ratios"][name] for rec in ratio.records]
        assert min(vals) <= s["median_ratio"][name] <= s["max_ratio"][name] == max(vals)
    json.dumps(s)


def test_update_ratio_resumes_its_records():
    model = mlp()
    x, y = regression()
    first = UpdateRatio(model, every=4)
    run(model, torch.optim.SGD(model.parameters(), lr=0.05), split(x, y), [first], total=10)
    state = json.loads(json.dumps(first.state_dict()))  # plain data
    second = UpdateRatio(model, every=4)
    second.load_state_dict(state)
    assert second.records == first.records and len(second.records) == 3
    second.records.append({"step": 99, "ratios": {}})
    assert len(first.records) == 3  # a copy, not the same lists


def test_loss_watch_sees_an_easy_regression_fall():
    model = mlp()
    x, y = regression()
    watch = LossWatch()
    loop, res = run(model, torch.optim.Adam(model.parameters(), lr=1e-2), split(x, y), [watch], total=300)
    s = watch.summary(300)
    assert s["steps"] == 300 and s["completed"] and s["non_finite"] == 0
    assert s["relative_decrease"] > 0.5 and s["last_loss"] < s["first_loss"]
    assert s["min_loss"] <= s["last_loss"]
    assert len(s["curve"]) <= 200 and [p[0] for p in s["curve"]] == sorted({p[0] for p in s["curve"]})
    # the per-step losses are those the loop logged: each window's mean is its train_curve point
    for step, mean in loop.train_curve:
        window = watch.losses[step - 10 : step]
        assert sum(window) / len(window) == pytest.approx(mean, rel=1e-6)
    json.dumps(s)


def test_loss_watch_counts_spikes_and_resumes():
    watch = LossWatch()
    watch.load_state_dict({"steps": [1, 2, 3, 4, 5, 6], "losses": [4.0, 2.0, 1.0, 3.0, 0.9, 0.8]})
    s = watch.summary(10)
    assert s["spikes"] == 1  # 3.0 > 2 × 1.0; nothing else exceeds twice the minimum before it
    assert s["first_loss"] == 4.0 and s["last_loss"] == 0.8 and s["relative_decrease"] == pytest.approx(0.8)
    assert not s["completed"] and s["curve"] == [[i + 1, v] for i, v in enumerate(watch.losses)]
    assert watch.state_dict() == {"steps": [1, 2, 3, 4, 5, 6], "losses": [4.0, 2.0, 1.0, 3.0, 0.9, 0.8]}


def test_norm_stats_reads_the_scale_of_a_batchnorm_input():
    x, y = regression(n=512, scale=3.0)  # inputs N(0, 9)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = nn.Sequential(nn.BatchNorm1d(8), nn.Linear(8, 16), nn.LayerNorm(16), nn.Tanh(), nn.Linear(16, 2))
    stats = NormStats(model, every=10)
    run(model, torch.optim.SGD(model.parameters(), lr=0.01), split(x, y), [stats], total=50, batch_size=128)
    assert [r["step"] for r in stats.records] == [0, 10, 20, 30, 40]
    s = stats.summary()
    assert set(s) == {"0", "2"}
    assert s["0"]["input_std_median"] == pytest.approx(3.0, rel=0.1)
    assert s["0"]["input_mean_abs_median"] < 0.3 * 3.0
    assert all(not m._forward_pre_hooks for m in model.modules())  # hooks only while sampling
    restored = NormStats(model, every=10)
    restored.load_state_dict(json.loads(json.dumps(stats.state_dict())))
    assert restored.summary() == s


def test_norm_stats_empty_without_normalization():
    model = mlp()
    x, y = regression()
    stats = NormStats(model, every=5)
    run(model, torch.optim.SGD(model.parameters(), lr=0.01), split(x, y), [stats], total=12)
    assert stats.summary() == {} and stats.records == []
