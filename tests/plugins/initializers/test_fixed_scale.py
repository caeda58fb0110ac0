"""Normal(std), uniform(a) and sparse (Martens 2010): fixed scales, whatever the fans."""

import math

import pytest
import torch
from torch import nn

from nnopt.plugins.initializers.fixed_scale import Normal, Sparse, Uniform


def init(cls, model, seed=0, **params):
    cls(cls.Params(**params)).initialize(model, lambda: None, torch.Generator().manual_seed(seed))
    return model


def test_normal_variance_is_std_squared():
    w = init(Normal, nn.Linear(512, 256), std=0.1).weight
    assert abs(w.mean().item()) < 4 * 0.1 / math.sqrt(w.numel())
    assert w.var().item() == pytest.approx(0.01, rel=0.03)


def test_uniform_bounds_and_variance():
    w = init(Uniform, nn.Linear(512, 256), a=0.2).weight
    assert w.abs().max().item() <= 0.2
    assert w.max().item() > 0.199 and w.min().item() < -0.199
    assert w.var().item() == pytest.approx(0.2**2 / 3, rel=0.03)


@pytest.mark.parametrize("fraction, expected", [(0.1, 52), (0.25, 128), (1.0, 512), (0.001, 1)])
def test_sparse_exact_count_of_nonzeros_per_column(fraction, expected):
    w = init(Sparse, nn.Linear(256, 512), fraction=fraction).weight  # weight (512, 256): columns of 512
    assert ((w != 0).sum(dim=0) == expected).all()


def test_sparse_nonzeros_are_normal_with_std():
    w = init(Sparse, nn.Linear(256, 2048), fraction=0.25, std=0.5).weight
    nz = w[w != 0]
    assert nz.numel() == 512 * 256
    assert nz.var().item() == pytest.approx(0.25, rel=0.03)
    rows_hit = (w != 0).float().mean(dim=1)  # positions spread over the rows
    assert rows_hit.min().item() > 0.1 and rows_hit.max().item() < 0.45


def test_sparse_conv_kernels_flattened_to_columns():
    w = init(Sparse, nn.Conv2d(8, 40, kernel_size=3), fraction=0.1).weight.reshape(40, -1)
    assert ((w != 0).sum(dim=0) == 4).all()


@pytest.mark.parametrize("cls, params", [(Normal, {}), (Uniform, {}), (Sparse, {"fraction": 0.5})])
def test_seed_reproducible_independent_of_the_global_rng_and_bias(cls, params):
    a = init(cls, nn.Linear(20, 30), seed=3, **params)
    torch.manual_seed(123)
    b = init(cls, nn.Linear(20, 30), seed=3, **params)
    c = init(cls, nn.Linear(20, 30), seed=4, **params)
    assert torch.equal(a.weight, b.weight)
    assert not torch.equal(a.weight, c.weight)
    assert (a.bias == 0).all()
    layer = nn.Linear(5, 5)
    kept = layer.bias.detach().clone()
    assert torch.equal(init(cls, layer, bias="keep", **params).bias, kept)


def test_scale_does_not_depend_on_the_fans():
    small = init(Normal, nn.Linear(64, 2048), std=0.1).weight.var().item()
    assert small == pytest.approx(0.01, rel=0.03)
