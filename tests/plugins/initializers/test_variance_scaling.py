"""LeCun, Xavier and geometric: Var(W_ij) as their formulas (survey eqs. (15), (16))."""

import math

import pytest
import torch
from torch import nn

from nnopt.plugins.initializers.variance_scaling import Geometric, LeCunNormal, LeCunUniform, XavierNormal, XavierUniform


def init(cls, model, seed=0, activation=None, **params):
    cls(cls.Params(**params)).initialize(model, lambda: None, torch.Generator().manual_seed(seed), activation=activation)
    return model


FAN_IN, FAN_OUT = 512, 256  # nn.Linear(512, 256): weight (256, 512)
CASES = [
    (LeCunNormal, {}, 1 / FAN_IN),
    (LeCunNormal, {"nonlinearity": "tanh"}, (5 / 3) ** 2 / FAN_IN),
    (LeCunUniform, {}, 1 / FAN_IN),
    (LeCunUniform, {"nonlinearity": "relu"}, 2 / FAN_IN),
    (XavierNormal, {}, 2 / (FAN_IN + FAN_OUT)),
    (XavierNormal, {"nonlinearity": "leaky_relu", "negative_slope": 0.2}, 2 / (1 + 0.2**2) * 2 / (FAN_IN + FAN_OUT)),
    (XavierUniform, {}, 2 / (FAN_IN + FAN_OUT)),
    (XavierUniform, {"nonlinearity": "tanh"}, (5 / 3) ** 2 * 2 / (FAN_IN + FAN_OUT)),
    (Geometric, {}, 1 / math.sqrt(FAN_IN * FAN_OUT)),
    (Geometric, {"c": 2.0, "distribution": "uniform"}, 2 / math.sqrt(FAN_IN * FAN_OUT)),
]


@pytest.mark.parametrize("cls, params, variance", CASES)
def test_weight_variance_matches_the_formula(cls, params, variance):
    w = init(cls, nn.Linear(FAN_IN, FAN_OUT), **params).weight
    assert abs(w.mean().item()) < 4 * math.sqrt(variance / w.numel())
    assert w.var().item() == pytest.approx(variance, rel=0.03)  # 131k samples: std error ≈ 0.4%


@pytest.mark.parametrize("cls, params, variance", [c for c in CASES if c[0] in (LeCunUniform, XavierUniform)]
                         + [CASES[-1]])
def test_uniform_variants_fill_exactly_the_interval(cls, params, variance):
    w = init(cls, nn.Linear(FAN_IN, FAN_OUT), **params).weight
    bound = math.sqrt(3 * variance)
    assert w.abs().max().item() <= bound * (1 + 1e-6)
    assert w.abs().max().item() > 0.99 * bound
    assert w.min().item() < -0.99 * bound


def test_xavier_uniform_bound_is_the_papers():
    w = init(XavierUniform, nn.Linear(300, 100)).weight
    assert w.abs().max().item() == pytest.approx(math.sqrt(6) / math.sqrt(400), rel=0.01)


@pytest.mark.parametrize("cls, variance", [
    (LeCunNormal, 1 / (64 * 9)),
    (XavierNormal, 2 / (64 * 9 + 128 * 9)),
    (Geometric, 1 / math.sqrt(64 * 9 * 128 * 9)),
])
def test_conv_fans_include_the_receptive_field(cls, variance):
    conv = init(cls, nn.Conv2d(64, 128, kernel_size=3))
    assert conv.weight.var().item() == pytest.approx(variance, rel=0.03)


def _activation(name):
    from nnopt.core.registry import Registry

    act, _ = Registry().load("activations", name)
    return act(act.Params())


@pytest.mark.parametrize("cls", [LeCunNormal, XavierUniform])
def test_default_gain_is_linear_whatever_the_activation_and_auto_follows_it(cls):
    tanh = _activation("tanh")
    fixed = init(cls, nn.Linear(FAN_IN, FAN_OUT), activation=tanh).weight.var().item()
    auto = init(cls, nn.Linear(FAN_IN, FAN_OUT), activation=tanh, nonlinearity="auto").weight.var().item()
    assert auto / fixed == pytest.approx((5 / 3) ** 2, rel=1e-6)  # same seed: the draws differ by the gain only
    assert cls(cls.Params(nonlinearity="auto")).gain(None) == 1.0


@pytest.mark.parametrize("cls", [LeCunNormal, LeCunUniform, XavierNormal, XavierUniform, Geometric])
def test_biases_zeroed_or_kept(cls):
    layer = nn.Linear(10, 10)
    kept = layer.bias.detach().clone()
    assert torch.equal(init(cls, layer, bias="keep").bias, kept)
    assert (init(cls, layer).bias == 0).all()


@pytest.mark.parametrize("cls", [LeCunNormal, LeCunUniform, XavierNormal, XavierUniform, Geometric])
def test_same_seed_same_weights_independent_of_the_global_rng(cls):
    a = init(cls, nn.Linear(20, 30), seed=3)
    torch.manual_seed(123)
    b = init(cls, nn.Linear(20, 30), seed=3)
    c = init(cls, nn.Linear(20, 30), seed=4)
    assert torch.equal(a.weight, b.weight)
    assert not torch.equal(a.weight, c.weight)


def test_non_weight_layers_untouched():
    norm = nn.LayerNorm(8)
    init(XavierNormal, nn.Sequential(nn.Linear(8, 8), norm))
    assert torch.equal(norm.weight, torch.ones(8))
