"""measure_at_init / plot_at_init: signal, gradients, units and loss of a network before training
(survey §4.1–4.2)."""

import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from nnopt.core.kinds import AnalysisContext, DataSplit
from nnopt.plugins.diagnosis.at_init import measure_at_init, plot_at_init
from nnopt.plugins.diagnosis.mean_field import phase

DIM, CLASSES, WIDTH = 32, 4, 64


def data(n=256, task="classification", seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, DIM, generator=g)
    if task == "classification":
        y = torch.randint(0, CLASSES, (n,), generator=g)
        return DataSplit(x, y, x[:0], y[:0], task, (DIM,), CLASSES, num_classes=CLASSES)
    y = torch.tanh(x[:, :2]) + 3.0
    return DataSplit(x, y, x[:0], y[:0], task, (DIM,), 2)


def mlp(act, depth=10, sigma_w2=None, sigma_b2=0.0, out=CLASSES, seed=0):
    """depth Linear layers of width 64; W ~ N(0, σ_w²/fan_in), b ~ N(0, σ_b²) (PyTorch's default init if σ_w² is None)."""
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    mods, fan = [], DIM
    for i in range(depth):
        width = out if i == depth - 1 else WIDTH
        lin = nn.Linear(fan, width)
        if sigma_w2 is not None:
            with torch.no_grad():
                lin.weight.copy_(torch.randn(width, fan, generator=g) * math.sqrt(sigma_w2 / fan))
                lin.bias.copy_(torch.randn(width, generator=g) * math.sqrt(sigma_b2))
        mods.append(lin)
        if i < depth - 1:
            mods.append(act())
        fan = width
    return nn.Sequential(*mods).eval()


def measure(model, split=None, loss=F.cross_entropy, samples=256):
    split = split or data()
    return measure_at_init(AnalysisContext(model, loss, split, torch.device("cpu"), torch.Generator().manual_seed(0)),
                           samples)


def test_tanh_chaotic_saturates_critical_does_not():
    chaotic, critical = measure(mlp(nn.Tanh, sigma_w2=4.0)), measure(mlp(nn.Tanh, sigma_w2=1.0))
    assert chaotic["phase"]["phase"] == "chaotic" and chaotic["phase"]["chi1"] > 1.05
    assert critical["phase"]["phase"] == "critical"
    # the measured σ_w² enter the phase: medians of the hidden layers' fan_in·mean(W²)
    assert chaotic["phase"]["sigma_w2"] == pytest.approx(4.0, rel=0.1)
    # q* ≈ 2.1 puts a large part of h beyond |h| ≈ 2.29 (|tanh'| < 5% of its max); q* → 0 does not
    assert chaotic["units"]["kind"] == ["saturating"] * 9
    assert chaotic["units"]["max_saturated_fraction"] > 0.15
    assert critical["units"]["max_saturated_fraction"] < 0.1
    assert chaotic["units"]["max_dead_fraction"] is None


def test_relu_tiny_init_vanishes_kaiming_propagates():
    tiny, he = measure(mlp(nn.ReLU, sigma_w2=2e-4)), measure(mlp(nn.ReLU, sigma_w2=2.0))
    # q̂ shrinks by σ_w²/2 = 1e-4 per layer over 8 layers
    assert tiny["forward"]["q_ratio"] < 1e-10 and tiny["forward"]["log10_growth_per_layer"] < -3
    assert 0.1 <= he["forward"]["q_ratio"] <= 10
    assert tiny["phase"]["phase"] == "ordered" and he["phase"]["phase"] == "critical"
    # bias-free ReLU is homogeneous: every g_l carries the same factor s^{K−1} (s = 0.01), so
    # all weight gradients vanish together rather than along depth (the biases' do not)
    assert max(tiny["gradients"]["weights"]) < 1e-12 * min(he["gradients"]["weights"])
    assert len(he["gradients"]["weights"]) == 10 and 0.1 <= he["gradients"]["first_last_ratio"] <= 10


def test_ordered_tanh_gradients_vanish_along_depth():
    # χ₁ ≈ 0.43: ‖δ‖² shrinks by χ₁ per layer backwards, g_1/g_K ≈ χ₁^{(K−1)/2} ≈ 0.02 up to O(1) factors
    r = measure(mlp(nn.Tanh, sigma_w2=0.5, sigma_b2=0.05))
    assert r["phase"]["phase"] == "ordered"
    assert r["gradients"]["first_last_ratio"] < 0.1
    edge = phase(nn.Tanh(), 1.0, 0.05)["critical_sigma_w2"]
    at_edge = measure(mlp(nn.Tanh, sigma_w2=edge, sigma_b2=0.05))
    assert 0.1 <= at_edge["gradients"]["first_last_ratio"] <= 10


def test_dead_relu_layer():
    model = mlp(nn.ReLU, depth=3, sigma_w2=2.0)
    with torch.no_grad():
        model[2].bias.fill_(-10.0)  # second hidden layer: h = Wz − 10 < 0 for every example
    u = measure(model)["units"]
    assert u["layers"] == ["1", "3"] and u["kind"] == ["relu", "relu"]
    assert u["dead_fraction"][1] == 1.0 and u["max_dead_fraction"] == 1.0
    assert u["dead_fraction"][0] < 0.2


def test_loss_ratio_scaled_last_layer_vs_default():
    default = mlp(nn.ReLU, depth=3)
    r = measure(default)["output"]
    assert r["reference_loss"] == pytest.approx(math.log(CLASSES)) and r["log_classes"] == pytest.approx(math.log(CLASSES))
    assert 0.5 <= r["loss_ratio"] <= 2 and r["task"] == "classification"
    with torch.no_grad():
        default[-1].weight.mul_(1000.0)  # logits of std ≫ 1: CE ≈ the gap to the largest logit
    big = measure(default)["output"]
    assert big["loss_ratio"] > 10 and big["logit_std"] > 10 * r["logit_std"]


def test_regression_reference_is_predicting_the_mean():
    split = data(task="regression")
    r = measure(mlp(nn.Tanh, depth=3, out=2), split, loss=F.mse_loss)["output"]
    y = split.y_train
    assert r["reference_loss"] == pytest.approx(float((y - y.mean(0)).square().mean()), rel=1e-5)
    # outputs near 0 against targets near 3: far worse than the mean
    assert r["loss_ratio"] > 10 and r["task"] == "regression" and r["log_classes"] is None


def test_batchnorm_has_no_phase():
    model = nn.Sequential(nn.Linear(DIM, WIDTH), nn.BatchNorm1d(WIDTH), nn.ReLU(), nn.Linear(WIDTH, WIDTH), nn.ReLU(),
                          nn.Linear(WIDTH, CLASSES)).eval()
    r = measure(model)
    assert r["phase"] is None and "BatchNorm1d" in r["phase_skipped"]
    mixed = measure(nn.Sequential(nn.Linear(DIM, 8), nn.Tanh(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, CLASSES)))
    assert mixed["phase"] is None and "mixed" in mixed["phase_skipped"]
    assert mixed["forward"]["q_ratio"] is not None


def test_json_safe_weights_unchanged_and_plot(tmp_path):
    model = nn.Sequential(nn.Linear(DIM, WIDTH), nn.BatchNorm1d(WIDTH), nn.Tanh(), nn.Linear(WIDTH, CLASSES))
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    r = measure(model)
    assert model.training  # its mode is restored
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # running statistics included
    text = json.dumps(r, allow_nan=True)
    assert json.loads(text)["forward"]["layers"] == ["0", "3"]
    assert r["forward"]["q_ratio"] is None  # fewer than 3 weight layers
    assert set(r["jacobian"]) >= {"mean_sq", "std_sq", "max", "min", "max_min_ratio"}
    assert r["seconds"] > 0
    files = plot_at_init(measure(mlp(nn.Tanh, sigma_w2=4.0)), tmp_path)
    assert files == [tmp_path / "init_signals.png"] and files[0].stat().st_size > 1000
    assert plot_at_init(r, tmp_path / "small")[0].stat().st_size > 1000


def test_large_jacobian_is_skipped():
    d = 2048
    x = torch.randn(16, d, generator=torch.Generator().manual_seed(0))
    y = torch.randint(0, 600, (16,))
    split = DataSplit(x, y, x[:0], y[:0], "classification", (d,), 600, num_classes=600)
    r = measure(nn.Sequential(nn.Linear(d, 600)), split, samples=16)
    assert "skipped" in r["jacobian"] and "entries" in r["jacobian"]["skipped"]
    assert r["phase"] is None and r["units"]["layers"] == []
