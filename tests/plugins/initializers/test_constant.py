"""Zeros and constant: every Linear/Conv weight set exactly."""

import torch
from torch import nn

from nnopt.plugins.initializers.constant import Constant, Zeros


def init(cls, model, **params):
    cls(cls.Params(**params)).initialize(model, lambda: None, torch.Generator().manual_seed(0))
    return model


def model():
    return nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Conv1d(5, 4, 3), nn.LayerNorm(4))


def test_zeros_exactly():
    m = init(Zeros, model())
    for layer in (m[0], m[2]):
        assert torch.equal(layer.weight, torch.zeros_like(layer.weight))
        assert torch.equal(layer.bias, torch.zeros_like(layer.bias))
    assert torch.equal(m[3].weight, torch.ones(4))


def test_constant_exactly_and_bias_kept():
    m = model()
    kept = m[0].bias.detach().clone()
    init(Constant, m, value=0.25, bias="keep")
    assert torch.equal(m[0].weight, torch.full((5, 6), 0.25))
    assert torch.equal(m[2].weight, torch.full((4, 5, 3), 0.25))
    assert torch.equal(m[0].bias, kept)
    init(Constant, m, value=-1.5)
    assert torch.equal(m[2].weight, torch.full((4, 5, 3), -1.5))
    assert (m[0].bias == 0).all()


def test_no_randomness_used():
    g = torch.Generator().manual_seed(0)
    state = g.get_state()
    Zeros(Zeros.Params()).initialize(model(), lambda: None, g)
    assert torch.equal(g.get_state(), state)
