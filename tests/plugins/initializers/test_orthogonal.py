"""Orthogonal (Saxe et al. 2014): W = gain·Q, WᵀW = gain²·I (tall) or WWᵀ = gain²·I (wide)."""

import math

import pytest
import torch
from torch import nn

from nnopt.plugins.initializers.orthogonal import Orthogonal


def init(model, seed=0, activation=None, **params):
    Orthogonal(Orthogonal.Params(**params)).initialize(
        model, lambda: None, torch.Generator().manual_seed(seed), activation=activation)
    return model


@pytest.mark.parametrize("params, gain", [({}, 1.0), ({"nonlinearity": "relu"}, math.sqrt(2)),
                                          ({"nonlinearity": "tanh"}, 5 / 3)])
@pytest.mark.parametrize("in_features, out_features", [(256, 512), (512, 256), (300, 300)])
def test_orthogonal_up_to_gain(in_features, out_features, params, gain):
    w = init(nn.Linear(in_features, out_features), **params).weight.double()  # (out, in)
    gram = w.T @ w if out_features >= in_features else w @ w.T
    assert torch.allclose(gram, gain**2 * torch.eye(gram.shape[0], dtype=torch.float64), atol=1e-5)


def test_conv_kernels_flattened_to_out_by_in_times_k():
    w = init(nn.Conv2d(8, 128, kernel_size=3)).weight.reshape(128, -1).double()  # tall: 128 × 72
    assert torch.allclose(w.T @ w, torch.eye(72, dtype=torch.float64), atol=1e-5)
    w = init(nn.Conv1d(16, 8, kernel_size=5)).weight.reshape(8, -1).double()  # wide: 8 × 80
    assert torch.allclose(w @ w.T, torch.eye(8, dtype=torch.float64), atol=1e-5)


def test_sign_correction_makes_entries_unbiased():
    # without the sign correction, Householder QR gives a biased diagonal; with it, Haar
    diags = torch.stack([init(nn.Linear(16, 16), seed=s).weight.diagonal() for s in range(200)])
    assert abs(diags.mean().item()) < 4 * math.sqrt(1 / 16 / diags.numel())


def test_auto_follows_the_activation():
    from nnopt.core.registry import Registry

    cls, _ = Registry().load("activations", "tanh")
    w = init(nn.Linear(64, 64), activation=cls(cls.Params()), nonlinearity="auto").weight.double()
    assert torch.allclose(w.T @ w, (5 / 3) ** 2 * torch.eye(64, dtype=torch.float64), atol=1e-5)
    assert Orthogonal(Orthogonal.Params(nonlinearity="auto")).gain(None) == 1.0


def test_seed_bias_and_global_rng():
    a = init(nn.Linear(20, 30), seed=3)
    torch.manual_seed(123)
    b = init(nn.Linear(20, 30), seed=3)
    assert torch.equal(a.weight, b.weight)
    assert not torch.equal(a.weight, init(nn.Linear(20, 30), seed=4).weight)
    assert (a.bias == 0).all()
    layer = nn.Linear(5, 5)
    kept = layer.bias.detach().clone()
    assert torch.equal(init(layer, bias="keep").bias, kept)
