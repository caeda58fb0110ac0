"""Edge-of-chaos (critical) initialization (Poole et al. 2016; Schoenholz et al. 2017; survey §4.2)."""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Any, Callable, ClassVar

import numpy as np
import torch
from pydantic import Field
from torch import nn

from nnopt.core.component import Params
from nnopt.core.errors import StageError
from nnopt.core.kinds import Activation, Initializer

from ._common import assign, empty_for, fans, weight_layers

QUADRATURE_POINTS = 128  # even: no node at z = 0, so a kink there (ReLU) is integrated by symmetry
_Q_MAX = 2.0**40
_Q_ZERO = 1e-24  # q → 0⁺: φ' there is the mean of its one-sided limits, not autograd's value at a kink


@lru_cache(maxsize=8)
def _hermegauss(points: int) -> tuple[np.ndarray, np.ndarray]:
    return np.polynomial.hermite_e.hermegauss(points)  # ∫ f(z) e^{−z²/2} dz ≈ Σ w_i f(z_i)


def _moments(phi: nn.Module, q: float, points: int = QUADRATURE_POINTS) -> tuple[float, float]:
    """(E_z[φ(√q z)²], E_z[φ'(√q z)²]) for z ~ N(0, 1): Gauss–Hermite quadrature, φ' by autograd."""
    nodes, weights = _hermegauss(points)
    x = torch.as_tensor(math.sqrt(q) * nodes, dtype=torch.float64).requires_grad_(True)
    with torch.enable_grad():
        y = phi(x)
        (dy,) = torch.autograd.grad(y.sum(), x)
    w = weights / math.sqrt(2 * math.pi)
    return float(np.sum(w * y.detach().numpy() ** 2)), float(np.sum(w * dy.numpy() ** 2))


def _as_module(activation: Any) -> nn.Module:
    return activation.build() if hasattr(activation, "build") else activation


def critical_point(activation: "Activation | nn.Module | Callable[[torch.Tensor], torch.Tensor]",
                   sigma_b2: float, points: int = QUADRATURE_POINTS) -> tuple[float, float]:
    """(σ_w², q*) on the edge of chaos of φ = ``activation`` with bias variance σ_b² = ``sigma_b2``.

    The mean-field length map of a wide network is q ↦ σ_w² E_z[φ(√q z)²] + σ_b², and χ =
    σ_w² E_z[φ'(√q* z)²] is the slope of its correlation map at c = 1 (Poole et al. 2016,
    Schoenholz et al. 2017). The point (σ_w², q*) with q* a fixed point and χ = 1 is found by
    parametrizing by q: χ = 1 gives σ_w²(q) = 1 / E[φ'(√q z)²], and the fixed point then
    holds iff b(q) = q − E[φ(√q z)²] / E[φ'(√q z)²] = σ_b². So q* is the root of b(q) − σ_b²,
    found by bisection on q ∈ (0, 2⁴⁰] (q = 0 is taken as the limit q → 0⁺, evaluated at q = 10⁻²⁴) (the upper end doubled from 1 until b exceeds σ_b²;
    bisected to machine precision), and σ_w² = σ_w²(q*). This is one scalar root instead of a
    bisection on σ_w² around an inner fixed-point iteration, whose convergence stalls as
    q* → 0. Both expectations are 128-point Gauss–Hermite quadratures (``hermegauss``) of
    the module, φ' by torch autograd, in float64: accurate to 1e-6 for tanh up to q* ≈ 1.5 (σ_b² = 0.3; 7e-6 at q* ≈ 3),
less so where φ' is sharply peaked at the scale of √q* (sigmoid's q* ≈ 48 at σ_b² = 0.05:
about 2% in E[φ'²]); ``points`` (even, ≤ 256) raises the order.

    Special cases: tanh (any odd φ with φ'(0) ≠ 0) at σ_b² = 0 has q* = 0 and σ_w² =
    1/φ'(0)² = 1. A positively homogeneous φ (ReLU, leaky ReLU, identity) has E[φ(√q z)²] =
    q·E[φ(z)²] and E[φ'²] constant, so b ≡ 0: χ = 1 only at σ_w² = 1/E[φ'(z)²] (ReLU: 2, He et
    al.'s value), where every q is a fixed point when σ_b² = 0 (q* = 1 is returned: the scale
    is free) and none is when σ_b² > 0 (q* = σ_b² / (1 − σ_w²/2) diverges): that raises.
    Raises ``StageError`` when b(q) − σ_b² changes sign nowhere in [0, 2⁴⁰].
    """
    if sigma_b2 < 0:
        raise StageError(f"critical: sigma_b2 must be ≥ 0, got {sigma_b2}")
    phi = _as_module(activation)
    name = type(phi).__name__

    def b(q: float) -> float:
        m2, d2 = _moments(phi, q, points)
        return q - m2 / d2 if d2 > 0 else float("nan")

    def result(q: float) -> tuple[float, float]:
        return 1.0 / _moments(phi, q, points)[1], q

    def is_root(q: float) -> bool:
        value = b(q)
        return math.isfinite(value) and abs(value - sigma_b2) <= 1e-12 * (1.0 + q)

    if is_root(1.0):  # a scale-free φ at σ_b² = 0 (every q is a fixed point), or a lucky root
        return result(1.0)
    if is_root(_Q_ZERO):
        return result(_Q_ZERO)[0], 0.0

    lo = _Q_ZERO
    if not (b(lo) < sigma_b2):
        raise StageError(f"critical: {name} has no edge-of-chaos point with sigma_b2 = {sigma_b2} "
                         f"(the fixed point of χ = 1 would have q* < {lo})")
    hi = 1.0
    while not (b(hi) > sigma_b2):
        hi *= 2.0
        if hi > _Q_MAX:
            homogeneous = abs(b(1.0)) <= 1e-9 and abs(b(4.0)) <= 1e-9
            hint = (f"{name} is positively homogeneous: χ = 1 only at σ_w² = {1.0 / _moments(phi, 1.0, points)[1]:.6g}, "
                    "where q* is finite only without biases; use sigma_b2: 0" if homogeneous
                    else "its fixed point diverges at χ = 1")
            raise StageError(f"critical: {name} has no edge-of-chaos point with sigma_b2 = {sigma_b2} ({hint})")
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if mid <= lo or mid >= hi:
            break
        if b(mid) > sigma_b2:
            hi = mid
        else:
            lo = mid
    return result(0.5 * (lo + hi))


class CriticalParams(Params):
    sigma_b2: float = Field(
        0.05, ge=0.0, description="bias variance σ_b² (biases ~ N(0, σ_b²)); σ_w² is then solved for χ = 1. "
        "Positively homogeneous activations (relu, leaky_relu, linear) need 0"
    )


class Critical(Initializer):
    """Edge-of-chaos initialization: Poole et al. 2016, "Exponential expressivity in deep
    neural networks through transient chaos", and Schoenholz et al. 2017, "Deep information
    propagation" (survey §4.2).

    In a wide network with W^l_ij ~ N(0, σ_w²/fan_in) and b^l_i ~ N(0, σ_b²), the second
    moment of the pre-activations follows q^l = σ_w² E_z[φ(√q^{l−1} z)²] + σ_b² (z ~ N(0, 1))
    to a fixed point q*, and the correlation of two inputs' pre-activations has slope
    χ = σ_w² E_z[φ'(√q* z)²] at c = 1. χ < 1 is the ordered phase (inputs' correlations
    converge to 1, gradients vanish), χ > 1 the chaotic one (correlations decorrelate,
    gradients explode); at χ = 1 both depth scales diverge, so signals and gradients
    propagate through arbitrarily deep networks.

    For the architecture's activation φ (required) and ``sigma_b2`` this solves q* =
    σ_w² E[φ(√q* z)²] + σ_b², χ = 1 for σ_w² (``critical_point``: Gauss–Hermite quadrature,
    φ' by autograd, a bisection on q), then draws every Linear/Conv weight W_ij ~ N(0,
    σ_w²/fan_in) (fan_in times the kernel size for convolutions) and every bias b_i ~ N(0,
    σ_b²). The default σ_b² = 0.05 is the bias variance of Schoenholz et al.'s trainability
    experiments; with tanh it gives σ_w² ≈ 1.761, q* ≈ 0.570 (σ_b² → 0 gives σ_w² → 1, q* → 0). ReLU-like
    (positively homogeneous) activations are critical only at σ_b² = 0, σ_w² = 1/E[φ'(z)²]
    (ReLU: 2, He initialization); any σ_b² > 0 is refused with that explanation.

    Randomness comes only from the given generator; tensors are drawn on the generator's
    device and copied to the layer's. A weight under a parametrization (weight / spectral
    normalization) is assigned through its ``right_inverse``.
    """

    cache_version: ClassVar[int] = 1
    Params = CriticalParams

    critical_point = staticmethod(critical_point)

    def initialize(
        self, model: nn.Module, sample_inputs: Callable[[], torch.Tensor], generator: torch.Generator,
        activation: Activation | None = None,
    ) -> None:
        if activation is None:
            raise StageError("initializer 'critical' needs the architecture's activation φ to solve for the edge of "
                             "chaos, and this architecture reports none (or more than one)")
        sigma_b2 = self.params.sigma_b2
        sigma_w2, _ = critical_point(activation, sigma_b2)
        for module in weight_layers(model):
            fan_in, _ = fans(module.weight.shape)
            w = empty_for(module.weight, generator).normal_(0.0, math.sqrt(sigma_w2 / fan_in), generator=generator)
            assign(module, "weight", w)
            if module.bias is not None:
                bias = empty_for(module.bias, generator)
                bias = bias.normal_(0.0, math.sqrt(sigma_b2), generator=generator) if sigma_b2 > 0 else bias.zero_()
                assign(module, "bias", bias)
