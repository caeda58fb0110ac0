"""Dual activations: closed forms against Gauss–Hermite quadrature, Monte Carlo and their own
derivative (K̇ = ∂K/∂Σ₁₂ by autograd), and the choice of a dual for a registered activation."""

from __future__ import annotations

import math

import pytest
import torch

from nnopt.core.registry import Registry
from nnopt.plugins.kernels.dual_activations import (
    CLOSED_FORMS,
    GELUDual,
    IdentityDual,
    QuadratureDual,
    ReLUDual,
    closed_form,
    dual_of,
)

F64 = torch.float64
FUNCTIONS = {
    "relu": torch.relu,
    "leaky_relu": lambda x: torch.nn.functional.leaky_relu(x, 0.2),
    "abs": torch.abs,
    "erf": torch.special.erf,
    "identity": lambda x: x,
    "gelu": torch.nn.functional.gelu,
}
SMOOTH = {"erf", "identity", "gelu"}  # quadrature converges fast; the kinked ones more slowly


def grid():
    """(cov, q1, q2) over variances 0.3..2.5 and correlations −1..1, both ends included."""
    q1 = torch.tensor([0.3, 1.0, 2.5], dtype=F64)[:, None, None]
    q2 = torch.tensor([0.5, 1.7], dtype=F64)[None, :, None]
    rho = torch.tensor([-1.0, -0.6, 0.0, 0.35, 0.9, 1.0], dtype=F64)[None, None, :]
    cov = rho * torch.sqrt(q1 * q2)
    shape = torch.broadcast_shapes(cov.shape, q1.shape, q2.shape)
    return cov.expand(shape), q1.expand(shape), q2.expand(shape)


def dual(name):
    return closed_form(name, slope=0.2)


@pytest.mark.parametrize("name", CLOSED_FORMS)
def test_closed_forms_match_gauss_hermite_quadrature(name):
    cov, q1, q2 = grid()
    k, kdot = dual(name)(cov, q1, q2)
    kq, kdotq = QuadratureDual(FUNCTIONS[name], points=120)(cov, q1, q2)
    # a kinked φ (and K̇'s step functions) is integrated by Gauss–Hermite with algebraic, not
    # spectral, convergence: ~1% at 120 nodes (Monte Carlo below checks those tightly)
    tol_k = 1e-9 if name in SMOOTH else 2e-2
    tol_kdot = 1e-9 if name in SMOOTH else 5e-2
    assert torch.allclose(k, kq, rtol=tol_k, atol=tol_k), (k - kq).abs().max()
    assert torch.allclose(kdot, kdotq, rtol=tol_kdot, atol=tol_kdot), (kdot - kdotq).abs().max()


@pytest.mark.parametrize("name", CLOSED_FORMS)
def test_closed_forms_match_monte_carlo(name):
    g = torch.Generator().manual_seed(0)
    m = 400_000
    q1, q2, rho = 1.3, 0.7, 0.45
    z1, z2 = torch.randn(m, generator=g, dtype=F64), torch.randn(m, generator=g, dtype=F64)
    u = math.sqrt(q1) * z1
    v = math.sqrt(q2) * (rho * z1 + math.sqrt(1 - rho**2) * z2)
    fn = FUNCTIONS[name]
    mc_k = (fn(u) * fn(v)).mean()
    ug, vg = u.clone().requires_grad_(), v.clone().requires_grad_()
    du, = torch.autograd.grad(fn(ug).sum(), ug)
    dv, = torch.autograd.grad(fn(vg).sum(), vg)
    mc_kdot = (du * dv).mean()
    c = torch.tensor(rho * math.sqrt(q1 * q2), dtype=F64)
    k, kdot = dual(name)(c, torch.tensor(q1, dtype=F64), torch.tensor(q2, dtype=F64))
    assert abs(float(k) - float(mc_k)) < 0.01, (float(k), float(mc_k))
    assert abs(float(kdot) - float(mc_kdot)) < 0.01, (float(kdot), float(mc_kdot))


@pytest.mark.parametrize("name", CLOSED_FORMS)
def test_kdot_is_the_derivative_of_k_in_the_covariance(name):
    """Price's theorem: E[φ'(u)φ'(v)] = ∂E[φ(u)φ(v)]/∂Σ₁₂ (autograd of the closed form)."""
    q1, q2 = torch.tensor(1.2, dtype=F64), torch.tensor(0.8, dtype=F64)
    for rho in (-0.7, 0.1, 0.6):
        c = torch.tensor(rho * math.sqrt(1.2 * 0.8), dtype=F64, requires_grad=True)
        k, kdot = dual(name)(c, q1, q2)
        (grad,) = torch.autograd.grad(k, c)
        assert float(grad) == pytest.approx(float(kdot.detach()), rel=1e-9, abs=1e-12)


def test_quadrature_kdot_is_the_derivative_of_its_k_for_a_smooth_activation():
    """K̇ (E[φ'φ'] with φ' by autograd) against a central difference of the quadrature's K in Σ₁₂."""
    quad = QuadratureDual(torch.tanh, points=60)
    q1, q2 = torch.tensor(0.9, dtype=F64), torch.tensor(1.6, dtype=F64)
    h = 1e-5
    k_plus, kdot = quad(torch.tensor(0.5 + h, dtype=F64), q1, q2)
    k_minus, _ = quad(torch.tensor(0.5 - h, dtype=F64), q1, q2)
    _, kdot = quad(torch.tensor(0.5, dtype=F64), q1, q2)
    assert float(kdot) == pytest.approx(float((k_plus - k_minus) / (2 * h)), rel=1e-7)


@pytest.mark.parametrize("name", CLOSED_FORMS)
def test_diag_is_the_kernel_at_perfect_correlation(name):
    q = torch.tensor([0.2, 1.0, 3.0], dtype=F64)
    d = dual(name)
    k, _ = d(q, q, q)
    assert torch.allclose(d.diag(q), k, rtol=1e-12, atol=1e-14)


def test_relu_is_the_arc_cosine_kernel_written_out():
    q1, q2, c = 2.0, 0.5, 0.3
    theta = math.acos(c / math.sqrt(q1 * q2))
    k, kdot = ReLUDual()(torch.tensor(c, dtype=F64), torch.tensor(q1, dtype=F64), torch.tensor(q2, dtype=F64))
    assert float(k) == pytest.approx(math.sqrt(q1 * q2) / (2 * math.pi) * (math.sin(theta) + (math.pi - theta) * math.cos(theta)))
    assert float(kdot) == pytest.approx((math.pi - theta) / (2 * math.pi))


def test_zero_variance_inputs_give_finite_kernels():
    zero = torch.zeros(3, dtype=F64)
    for name in CLOSED_FORMS:
        k, kdot = dual(name)(zero, zero, torch.ones(3, dtype=F64))
        assert torch.isfinite(k).all() and torch.isfinite(kdot).all(), name


def activation(name, **params):
    cls, _ = Registry().load("activations", name)
    return cls(cls.Params(**params))


def test_dual_of_picks_closed_forms_by_class_and_quadrature_otherwise():
    assert isinstance(dual_of(activation("relu")), ReLUDual)
    assert isinstance(dual_of(activation("linear")), IdentityDual)
    assert isinstance(dual_of(activation("identity")), IdentityDual)
    assert isinstance(dual_of(activation("gelu")), GELUDual)
    assert isinstance(dual_of(activation("gelu", approximate="tanh")), QuadratureDual)
    assert dual_of(activation("leaky_relu", negative_slope=0.3)).slope == 0.3
    tanh = dual_of(activation("tanh"), quadrature_points=40)
    assert isinstance(tanh, QuadratureDual) and tanh.points == 40


def test_quadrature_of_a_registered_activation_matches_monte_carlo():
    quad = dual_of(activation("tanh"), quadrature_points=48)
    g = torch.Generator().manual_seed(1)
    z1, z2 = torch.randn(400_000, generator=g, dtype=F64), torch.randn(400_000, generator=g, dtype=F64)
    u, v = 1.1 * z1, 0.8 * (0.3 * z1 + math.sqrt(1 - 0.09) * z2)
    k, kdot = quad(torch.tensor(0.3 * 1.1 * 0.8, dtype=F64), torch.tensor(1.21, dtype=F64), torch.tensor(0.64, dtype=F64))
    assert float(k) == pytest.approx(float((torch.tanh(u) * torch.tanh(v)).mean()), abs=5e-3)
    assert float(kdot) == pytest.approx(float(((1 - torch.tanh(u) ** 2) * (1 - torch.tanh(v) ** 2)).mean()), abs=5e-3)
