"""mean_field.phase: the ordered / critical / chaotic phase of the length and correlation maps
(Poole et al. 2016; Schoenholz et al. 2017; survey §4.2)."""

import math

import pytest
import torch
from torch import nn

from nnopt.plugins.diagnosis.mean_field import phase
from nnopt.plugins.initializers.critical import _moments


def test_tanh_without_bias_is_critical_at_unit_weight_variance():
    r = phase(nn.Tanh(), 1.0, 0.0)
    # q* → 0 and χ₁ = σ_w² φ'(0)² = 1: the edge of chaos of an odd φ
    assert r["phase"] == "critical" and r["q_star"] == 0.0
    assert abs(r["chi1"] - 1.0) < 1e-6 and r["depth_scale"] > 1e5


def test_tanh_chaotic_at_large_weight_variance_with_a_true_fixed_point():
    r = phase(nn.Tanh(), 4.0, 0.0)
    assert r["phase"] == "chaotic" and r["chi1"] > 1.0 + 0.05 and r["log_chi1"] > 0
    q = r["q_star"]
    assert q > 0.1
    assert abs(4.0 * _moments(nn.Tanh(), q)[0] - q) < 1e-6  # F(q*) = q*
    # an odd φ without bias: c* = 0 in the chaotic phase, and it is stable (χ_c < 1)
    assert abs(r["c_star"]) < 1e-6 and r["chi_c"] < 1.0 and r["correlation_depth_scale"] > 0
    assert r["depth_scale"] == pytest.approx(1.0 / math.log(r["chi1"]))


def test_tanh_ordered_at_small_weight_variance():
    r = phase(nn.Tanh(), 0.5, 0.0)
    assert r["phase"] == "ordered" and r["chi1"] < 0.95 and r["log_chi1"] < 0
    biased = phase(nn.Tanh(), 0.5, 0.05)
    # ordered with biases: c* = 1 and its slope there is χ₁ itself
    assert biased["phase"] == "ordered" and 0 < biased["q_star"] < 1 and biased["c_star"] == 1.0
    assert biased["correlation_depth_scale"] == pytest.approx(-1.0 / math.log(biased["chi1"]))


@pytest.mark.parametrize("sigma_w2,sigma_b2", [(1.0, 0.0), (2.0, 0.0), (3.0, 0.0), (1.5, 0.1), (2.5, 0.1)])
def test_relu_chi1_is_half_the_weight_variance(sigma_w2, sigma_b2):
    r = phase(nn.ReLU(), sigma_w2, sigma_b2)
    assert r["positively_homogeneous"]
    assert r["chi1"] == pytest.approx(sigma_w2 / 2, rel=1e-12)
    a = sigma_w2 / 2  # F(q) = a q + σ_b²
    if a < 1:
        assert r["q_star"] == pytest.approx(sigma_b2 / (1 - a), abs=1e-12)
    elif a > 1:
        assert r["q_star"] == math.inf
    else:
        assert r["q_star"] == 1.0 and r["phase"] == "critical"
    assert r["phase"] == ("ordered" if a < 0.95 else "chaotic" if a > 1.05 else "critical")


def test_relu_with_bias_at_he_variance_diverges():
    r = phase(nn.ReLU(inplace=True), 2.0, 0.1)  # q grows by σ_b² per layer forever
    assert r["q_star"] == math.inf and r["critical_sigma_w2"] is None and r["chi1"] == pytest.approx(1.0)


@pytest.mark.parametrize("act,sigma_w2,sigma_b2", [(nn.Tanh(), 4.0, 0.0), (nn.Tanh(), 1.5, 0.05), (nn.Sigmoid(), 8.0, 0.1)])
def test_chi1_matches_monte_carlo(act, sigma_w2, sigma_b2):
    r = phase(act, sigma_w2, sigma_b2)
    g = torch.Generator().manual_seed(0)
    z = torch.randn(200_000, generator=g, dtype=torch.float64)
    h = (math.sqrt(r["q_star"]) * z).requires_grad_(True)
    (d,) = torch.autograd.grad(act(h).sum(), h)
    assert r["chi1"] == pytest.approx(sigma_w2 * float(d.square().mean()), rel=0.01)


def test_critical_sigma_w2_fed_back_is_on_the_edge_of_chaos():
    r = phase(nn.Tanh(), 1.0, 0.05)
    w2 = r["critical_sigma_w2"]
    assert w2 is not None and w2 > 1.0
    back = phase(nn.Tanh(), w2, 0.05)
    assert abs(back["chi1"] - 1.0) < 1e-3 and back["phase"] == "critical" and back["q_star"] > 0


def test_chaotic_tanh_with_bias_has_a_stable_correlation_below_one():
    r = phase(nn.Tanh(), 4.0, 0.1)
    assert 0 < r["c_star"] < 1 and r["chi_c"] < 1.0
