"""Critical (edge of chaos): q* = σ_w² E[φ(√q* z)²] + σ_b² with χ = σ_w² E[φ'(√q* z)²] = 1
(Poole et al. 2016; Schoenholz et al. 2017); W_ij ~ N(0, σ_w²/fan_in), b_i ~ N(0, σ_b²)."""

import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn.utils.parametrizations import weight_norm

from nnopt.core.errors import StageError
from nnopt.plugins.initializers.critical import Critical, critical_point


def _activation(name, **params):
    from nnopt.core.registry import Registry

    cls, _ = Registry().load("activations", name)
    return cls(cls.Params(**params))


def init(model, activation="tanh", seed=0, **params):
    Critical(Critical.Params(**params)).initialize(model, lambda: None, torch.Generator().manual_seed(seed),
                                                   activation=_activation(activation))
    return model


def tanh_moments(q):
    """E[tanh(√q z)²], E[sech⁴(√q z)] by a fine trapezoid rule (independent of the quadrature and autograd)."""
    z = np.linspace(-12.0, 12.0, 400001)
    pdf = np.exp(-z * z / 2) / math.sqrt(2 * math.pi)
    t = np.tanh(math.sqrt(q) * z)
    return np.trapezoid(pdf * t**2, z), np.trapezoid(pdf * (1 - t**2) ** 2, z)


@pytest.mark.parametrize("sigma_b2, tol", [(0.05, 1e-6), (0.3, 1e-6), (1.0, 1e-5)])  # q* ≈ 3: quadrature error ≈ 7e-6
def test_tanh_critical_point_satisfies_both_equations(sigma_b2, tol):
    sigma_w2, q = critical_point(_activation("tanh"), sigma_b2)
    m2, d2 = tanh_moments(q)
    assert sigma_w2 * d2 == pytest.approx(1.0, abs=tol)  # χ = 1
    assert sigma_w2 * m2 + sigma_b2 == pytest.approx(q, abs=tol)  # the fixed point


def test_tanh_without_bias_is_sigma_w2_one_and_q_zero_and_continuous():
    assert critical_point(_activation("tanh"), 0.0) == (pytest.approx(1.0, abs=1e-9), 0.0)
    sigma_w2, q = critical_point(_activation("tanh"), 1e-8)
    assert sigma_w2 == pytest.approx(1.0, abs=0.01) and 0 < q < 0.01
    curve = [critical_point(_activation("tanh"), s)[0] for s in (0.01, 0.05, 0.1, 0.5)]
    assert curve == sorted(curve)  # the critical line rises with σ_b²


@pytest.mark.parametrize("name, params, sigma_w2", [("relu", {}, 2.0), ("leaky_relu", {"negative_slope": 0.2}, 2 / 1.04),
                                                    ("linear", {}, 1.0)])
def test_homogeneous_activations_are_critical_only_without_bias(name, params, sigma_w2):
    w2, q = critical_point(_activation(name, **params), 0.0)
    assert w2 == pytest.approx(sigma_w2, rel=1e-12) and q == 1.0  # every q is a fixed point
    with pytest.raises(StageError, match="sigma_b2: 0"):
        critical_point(_activation(name, **params), 0.05)


def test_the_activation_is_required():
    with pytest.raises(StageError, match="activation"):
        Critical(Critical.Params()).initialize(nn.Linear(3, 3), lambda: None, torch.Generator().manual_seed(0))


@pytest.mark.parametrize("activation, sigma_b2", [("tanh", 0.05), ("relu", 0.0), ("erf", 0.3)])
def test_weight_and_bias_variances(activation, sigma_b2):
    sigma_w2, _ = critical_point(_activation(activation), sigma_b2)
    layer = init(nn.Linear(512, 2048), activation=activation, sigma_b2=sigma_b2)
    w, b = layer.weight, layer.bias
    assert abs(w.mean().item()) < 4 * math.sqrt(sigma_w2 / 512 / w.numel())
    assert w.var().item() == pytest.approx(sigma_w2 / 512, rel=0.02)  # 1M samples
    if sigma_b2 == 0:
        assert (b == 0).all()
    else:
        assert b.var().item() == pytest.approx(sigma_b2, rel=0.15)  # 2048 samples: std error ≈ 3%


def test_conv_fan_in_weight_norm_and_seed():
    conv = init(nn.Conv2d(64, 128, kernel_size=3))
    sigma_w2, _ = critical_point(_activation("tanh"), 0.05)
    assert conv.weight.var().item() == pytest.approx(sigma_w2 / (64 * 9), rel=0.03)
    wn = init(weight_norm(nn.Linear(400, 400)))
    assert wn.weight.var().item() == pytest.approx(sigma_w2 / 400, rel=0.03)
    a = init(nn.Linear(20, 30), seed=3)
    torch.manual_seed(123)
    b = init(nn.Linear(20, 30), seed=3)
    assert torch.equal(a.weight, b.weight) and torch.equal(a.bias, b.bias)
    assert not torch.equal(a.weight, init(nn.Linear(20, 30), seed=4).weight)


def test_deep_tanh_network_at_criticality_keeps_q_at_its_fixed_point():
    """The empirical check of the mean field: q^l of a wide deep net stays at q*."""
    sigma_w2, q = critical_point(_activation("tanh"), 0.05)
    layers = [nn.Linear(1000, 1000) for _ in range(20)]
    model = init(nn.Sequential(*[m for layer in layers for m in (layer, nn.Tanh())]))
    x = torch.randn(200, 1000, generator=torch.Generator().manual_seed(1)) * math.sqrt(q)
    outputs = []
    for layer in layers:
        layer.register_forward_hook(lambda m, i, o: outputs.append(o.pow(2).mean().item()))
    with torch.no_grad():
        model(x)
    assert outputs[-1] == pytest.approx(q, rel=0.1)
    assert Critical.critical_point(_activation("tanh"), 0.05) == (sigma_w2, q)
