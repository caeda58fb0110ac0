"""The mean-field phase of a deep network at initialization: ordered, critical or chaotic
(Poole et al. 2016; Schoenholz et al. 2017, "Deep information propagation"; survey §4.2)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import nn

from nnopt.core.errors import StageError
from nnopt.plugins.analyzers.signal_propagation import _cpu_copy
from nnopt.plugins.initializers.critical import _Q_ZERO, _hermegauss, _moments, critical_point

Q_DIVERGED = 1e12  # q above this: the length map runs off to ∞
Q_COLLAPSED = 1e-12  # q below this: the length map collapses to 0
_ITERATIONS = 60  # plain iterations of the length map before bracketing its fixed point
_C_POINTS = 64  # Gauss–Hermite nodes per dimension of the 2-d correlation-map quadrature


def _length_map(phi: Any, sigma_w2: float, sigma_b2: float, q: float) -> float:
    """F(q) = σ_w² E_z[φ(√q z)²] + σ_b²."""
    return sigma_w2 * _moments(phi, max(q, _Q_ZERO))[0] + sigma_b2


def _is_homogeneous(phi: Any) -> bool:
    """φ(a x) = a φ(x) for a > 0 (ReLU, leaky ReLU, identity): E[φ(√q z)²] = q E[φ(z)²] and
    E[φ'(√q z)²] is constant in q."""
    m1, d1 = _moments(phi, 1.0)
    for q in (0.25, 4.0, 100.0):
        m, d = _moments(phi, q)
        if not (abs(m - q * m1) <= 1e-9 * q * max(m1, 1e-300) and abs(d - d1) <= 1e-9 * max(d1, 1e-300)):
            return False
    return True


def _fixed_point(phi: Any, sigma_w2: float, sigma_b2: float) -> tuple[float, int, str]:
    """q* reached by iterating q ← F(q) from q = 1: (q*, iterations, how).

    F is increasing in q for the usual φ (φ² increasing in |x|), so the iteration is
    monotone and tends to the nearest fixed point in the direction of F(1) − 1. It is
    iterated plainly first; where that has not converged (the approach to q* = 0 at the edge
    of chaos of an odd φ is only algebraic, q ~ 1/l), the fixed point is bracketed on a
    doubling/halving grid of G(q) = F(q) − q past the last iterate and bisected, and q* = 0
    (∞) when G keeps its sign down to 1e-12 (up to 1e12)."""
    q = 1.0
    for it in range(1, _ITERATIONS + 1):
        new = _length_map(phi, sigma_w2, sigma_b2, q)
        if not math.isfinite(new) or new > Q_DIVERGED:
            return math.inf, it, "diverged"
        if new < Q_COLLAPSED:
            return 0.0, it, "collapsed"
        if abs(new - q) <= 1e-14 * max(q, new):
            return new, it, "iterated"
        q = new

    def g(x: float) -> float:
        return _length_map(phi, sigma_w2, sigma_b2, x) - x

    down = g(q) < 0
    inner = q  # G has the sign of the iteration's direction here
    outer = q
    while True:
        outer = outer / 2.0 if down else outer * 2.0
        if down and outer < Q_COLLAPSED:
            return 0.0, _ITERATIONS, "collapsed"
        if not down and outer > Q_DIVERGED:
            return math.inf, _ITERATIONS, "diverged"
        if (g(outer) >= 0) if down else (g(outer) <= 0):
            break
        inner = outer
    lo, hi = (outer, inner) if down else (inner, outer)
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if mid <= lo or mid >= hi:
            break
        # below the root G > 0 (F pushes q up), above it G < 0
        if g(mid) > 0:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi), _ITERATIONS, "bracketed"


def _correlation_map(phi: Any, sigma_w2: float, sigma_b2: float, q_star: float, chi1: float) -> dict[str, Any]:
    """The correlation map C(c) = (σ_w² E[φ(u₁)φ(u₂)] + σ_b²)/q* with u₁ = √q* z₁,
    u₂ = √q*(c z₁ + √(1−c²) z₂) at a finite fixed point q* > 0, its stable fixed point c* and
    the slope there χ_c = σ_w² E[φ'(u₁)φ'(u₂)] (Schoenholz et al. 2017, eqs. 4–9). c = 1 is a
    fixed point with slope χ₁; it is the stable one when χ₁ ≤ 1 (ordered/critical: c* = 1,
    χ_c = χ₁). For χ₁ > 1 (chaotic) c* < 1 is the root of C(c) − c on [0, 1) (C(0) ≥ 0 and
    C(c) < c just below 1), found by bisection. ξ_c = −1/ln χ_c is the depth over which two
    inputs' correlation approaches c* by e (inf at χ_c = 1). 2-d Gauss–Hermite quadrature,
    64² nodes, φ' by autograd, float64."""
    if chi1 <= 1.0:
        xi = math.inf if chi1 == 1.0 else (-1.0 / math.log(chi1) if chi1 > 0 else 0.0)
        return {"c_star": 1.0, "chi_c": float(chi1), "correlation_depth_scale": xi}
    nodes, weights = _hermegauss(_C_POINTS)
    w = weights / math.sqrt(2 * math.pi)
    z1 = torch.as_tensor(np.repeat(nodes, _C_POINTS), dtype=torch.float64)
    z2 = torch.as_tensor(np.tile(nodes, _C_POINTS), dtype=torch.float64)
    ww = torch.as_tensor(np.outer(w, w).reshape(-1), dtype=torch.float64)
    s = math.sqrt(q_star)

    def phi_and_grad(u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        u = u.clone().requires_grad_(True)
        with torch.enable_grad():
            y = phi(u)
            (dy,) = torch.autograd.grad(y.sum(), u)
        return y.detach(), dy

    f1, d1 = phi_and_grad(s * z1)
    # q* as this quadrature sees it, so that C(1) = 1 exactly and the sign of C(c) − c just
    # below 1 is not swamped by the two quadratures' difference
    q_here = sigma_w2 * float((ww * f1 * f1).sum()) + sigma_b2

    def at(c: float) -> tuple[float, float]:
        f2, d2 = phi_and_grad(s * (c * z1 + math.sqrt(max(1.0 - c * c, 0.0)) * z2))
        return ((sigma_w2 * float((ww * f1 * f2).sum()) + sigma_b2) / q_here, sigma_w2 * float((ww * d1 * d2).sum()))

    lo, hi = 0.0, 1.0 - 1e-6
    if at(lo)[0] - lo <= 0:
        c = lo
    elif at(hi)[0] - hi >= 0:  # χ₁ > 1 by less than the quadrature resolves
        c = 1.0
    else:
        for _ in range(60):
            mid = 0.5 * (lo + hi)
            if at(mid)[0] - mid > 0:
                lo = mid
            else:
                hi = mid
        c = 0.5 * (lo + hi)
    chi_c = at(c)[1]
    xi = math.inf if chi_c == 1.0 else (-1.0 / math.log(chi_c) if 0 < chi_c < 1.0 else None)
    return {"c_star": float(c), "chi_c": float(chi_c), "correlation_depth_scale": xi}


def phase(activation: nn.Module, sigma_w2: float, sigma_b2: float, tol: float = 0.05) -> dict[str, Any]:
    """The mean-field phase of a deep wide network with W_ij ~ N(0, σ_w²/fan_in), b_i ~ N(0, σ_b²)
    and activation φ = ``activation`` (Poole et al. 2016; Schoenholz et al. 2017; survey §4.2).

    The length map q ← F(q) = σ_w² E_z[φ(√q z)²] + σ_b² (z ~ N(0, 1)) is iterated from q = 1 to
    its fixed point q* (``q_star``; 0 when it collapses below 1e-12, inf when it passes 1e12;
    the quadrature is ``critical._moments``: 128-node Gauss–Hermite, φ' by autograd, float64).
    χ₁ = σ_w² E_z[φ'(√q* z)²] is the slope of the correlation map at c = 1 and the factor by
    which the mean squared gradient grows per layer backwards: ``phase`` is ``ordered`` for
    χ₁ < 1 − tol (correlations → 1, gradients vanish), ``chaotic`` for χ₁ > 1 + tol
    (correlations decorrelate, gradients explode), ``critical`` in between (the edge of chaos).

    ``log_chi1`` = ln χ₁ (the signed distance to the edge), ``depth_scale`` ξ = 1/|ln χ₁| —
    the depth over which gradients grow or decay by e (Schoenholz et al.'s ξ_∇ = −1/ln χ₁ in the
    ordered phase; inf at χ₁ = 1). ``c_star``, ``chi_c`` and ``correlation_depth_scale``
    ξ_c = −1/ln χ_c come from the correlation map at q* (see ``_correlation_map``; None where q*
    is 0 or ∞). ``critical_sigma_w2`` is the σ_w² of the edge of
    chaos at this σ_b² (``critical.critical_point``; None where it has none).

    Positively homogeneous φ (ReLU, leaky ReLU, identity; ``positively_homogeneous``) have
    F(q) = a q + σ_b² with a = σ_w² E[φ(z)²] and E[φ'²] constant, solved in closed form:
    q* = σ_b²/(1 − a) for a < 1 (0 without biases), ∞ for a > 1, and at a = 1 every q is a
    fixed point when σ_b² = 0 (q* = 1 is returned: the scale is free) and none otherwise (∞).
    χ₁ = σ_w² E[φ'²] then holds at any q (ReLU: exactly σ_w²/2). For other φ, χ₁ at q* = 0 is
    the limit q → 0⁺ (evaluated at q = 1e-24) and at q* = ∞ it is evaluated at q = 1e12.
    """
    if sigma_w2 < 0 or sigma_b2 < 0:
        raise StageError(f"mean-field phase: variances must be ≥ 0, got sigma_w2={sigma_w2}, sigma_b2={sigma_b2}")
    phi = _cpu_copy(activation)  # float64 CPU copy, no hooks, fed a copy (in-place activations)
    homogeneous = _is_homogeneous(phi)
    if homogeneous:
        a = sigma_w2 * _moments(phi, 1.0)[0]
        if abs(a - 1.0) <= 1e-12:
            q_star, how = (1.0, "scale-free") if sigma_b2 == 0 else (math.inf, "closed form")
        elif a < 1.0:
            q_star, how = sigma_b2 / (1.0 - a), "closed form"
        else:
            q_star, how = math.inf, "closed form"
        iterations = 0
    else:
        q_star, iterations, how = _fixed_point(phi, sigma_w2, sigma_b2)
    q_eval = _Q_ZERO if q_star == 0 else (Q_DIVERGED if math.isinf(q_star) else q_star)
    if homogeneous:
        q_eval = 1.0
    chi1 = sigma_w2 * _moments(phi, q_eval)[1]
    if chi1 < 1.0 - tol:
        name = "ordered"
    elif chi1 > 1.0 + tol:
        name = "chaotic"
    else:
        name = "critical"
    log_chi1 = math.log(chi1) if chi1 > 0 else -math.inf
    depth_scale = math.inf if log_chi1 == 0 else 1.0 / abs(log_chi1)
    if 0 < q_star < math.inf:
        corr = _correlation_map(phi, sigma_w2, sigma_b2, q_star, chi1)
    else:  # no finite fixed point to correlate at
        corr = {"c_star": None, "chi_c": None, "correlation_depth_scale": None}
    try:
        critical_sigma_w2: float | None = float(critical_point(phi, sigma_b2)[0])
    except StageError:
        critical_sigma_w2 = None
    return {
        "activation": type(getattr(phi, "module", phi)).__name__,
        "sigma_w2": float(sigma_w2),
        "sigma_b2": float(sigma_b2),
        "q_star": float(q_star),
        "q_star_how": how,
        "iterations": iterations,
        "chi1": float(chi1),
        "phase": name,
        "tol": float(tol),
        "log_chi1": float(log_chi1),
        "depth_scale": float(depth_scale),
        **corr,
        "critical_sigma_w2": critical_sigma_w2,
        "positively_homogeneous": bool(homogeneous),
    }
