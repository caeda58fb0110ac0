"""Kaiming uniform: U(−b, b), b = gain·√(3/fan), the variance of kaiming_normal (He et al. 2015)."""

import math

import pytest
import torch
from torch import nn
from torch.nn.utils.parametrizations import weight_norm

from nnopt.plugins.initializers.kaiming import KaimingNormal, KaimingUniform


def init(model, seed=0, cls=KaimingUniform, **params):
    cls(cls.Params(**params)).initialize(model, lambda: None, torch.Generator().manual_seed(seed))
    return model


@pytest.mark.parametrize("params, variance", [
    ({}, 2 / 512), ({"mode": "fan_out"}, 2 / 256), ({"nonlinearity": "tanh"}, (5 / 3) ** 2 / 512),
])
def test_variance_and_bounds(params, variance):
    w = init(nn.Linear(512, 256), **params).weight
    assert w.var().item() == pytest.approx(variance, rel=0.03)
    bound = math.sqrt(3 * variance)
    assert w.abs().max().item() <= bound * (1 + 1e-6)
    assert w.max().item() > 0.99 * bound and w.min().item() < -0.99 * bound


def test_same_variance_as_kaiming_normal_and_conv_fan():
    conv = init(nn.Conv2d(64, 128, kernel_size=3))
    assert conv.weight.var().item() == pytest.approx(2 / (64 * 9), rel=0.03)
    normal = init(nn.Conv2d(64, 128, kernel_size=3), cls=KaimingNormal)
    assert conv.weight.var().item() == pytest.approx(normal.weight.var().item(), rel=0.04)


def test_bias_seed_and_parametrized_weights():
    layer = nn.Linear(10, 10)
    kept = layer.bias.detach().clone()
    assert torch.equal(init(layer, bias="keep").bias, kept)
    assert (init(layer).bias == 0).all()
    a = init(nn.Linear(20, 30), seed=3)
    torch.manual_seed(1)
    assert torch.equal(a.weight, init(nn.Linear(20, 30), seed=3).weight)
    wn = init(weight_norm(nn.Linear(300, 300)))
    assert wn.weight.var().item() == pytest.approx(2 / 300, rel=0.03)
