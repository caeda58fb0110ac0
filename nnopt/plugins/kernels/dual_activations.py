"""Dual activations: the Gaussian expectations an infinitely wide layer maps its kernel through.

For a centred Gaussian pair (u, v) with covariance Σ = [[q₁, c], [c, q₂]] the dual of an
activation φ is

    K(q₁, q₂, c)  = E[φ(u) φ(v)]            (the NNGP map, Neal 1996; Lee et al. 2018)
    K̇(q₁, q₂, c)  = E[φ'(u) φ'(v)] = ∂K/∂c  (Price's theorem; the NTK map, Jacot et al. 2018)

and ``diag(q) = E[φ(u)²]`` for u ~ N(0, q) (the variance map, the c = q₁ = q₂ case).

Closed forms (ρ = c/√(q₁q₂), θ = arccos ρ):

- relu, the arc-cosine kernel of degree 1 and 0 (Cho & Saul 2009):
  K = √(q₁q₂)/(2π)·(sin θ + (π − θ) cos θ),   K̇ = (π − θ)/(2π);
- leaky_relu with slope a, φ = (1 − a)·relu + a·id:
  K = (1 − a)²·K_relu + a(1 − a)·c + a²·c = (1 − a)²·K_relu + a·c (E[relu(u)·v] = c/2),
  K̇ = (1 − a)²·K̇_relu + a(1 − a) + a² = (1 − a)²·K̇_relu + a;
- abs, φ = relu(x) + relu(−x):  K = √(q₁q₂)/π·(2 sin θ + (π − 2θ)ρ),  K̇ = 1 − 2θ/π;
- erf (Williams 1997): K = (2/π)·arcsin(2c/√((1 + 2q₁)(1 + 2q₂))),
  K̇ = (4/π)/√((1 + 2q₁)(1 + 2q₂) − 4c²);
- identity: K = c, K̇ = 1;
- gelu x·Φ(x) (Tsuchida, Pearce, van der Heide, Roosta & Gallagher 2021, "Avoiding kernel
  fixed points"), with P = q₁q₂, P₁ = (1 + q₁)(1 + q₂), Δ = √(P₁ − c²), α = arcsin(c/√P₁):
  K = c/4 + [(c² + P·Δ²)/(P₁Δ) + c·α]/(2π),
  K̇ = ∂K/∂c = 1/4 + α/(2π) + c/(2πΔ)·(1 + 1/Δ² + (1 − P)/P₁).

Every other activation (tanh, sigmoid, elu, softplus, selu, silu, quadratic, gelu's tanh
approximation, a plugin's) is integrated numerically: u = √q₁·z₁, v = √q₂·(ρ z₁ + √(1 − ρ²) z₂)
with (z₁, z₂) on a tensor grid of probabilists' Gauss–Hermite nodes, and K̇ = ∂K/∂c taken as
E[φ'(u)φ'(v)] with φ' = dφ/dx by autograd of the activation's own module (Price's identity,
exact for the integrals; differentiating the quadrature sum in c instead would divide by
√(1 − ρ²) and fail on the diagonal, ρ = 1). The cost is n₁·n₂·P² evaluations of φ, done in
row blocks of bounded memory; the closed forms are O(n₁n₂).

All maps work elementwise on a covariance matrix ``cov`` (any shape) with ``q1`` and ``q2``
broadcastable to it (the variances of the row and the column input).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from nnopt.core.kinds import Activation

#: the activations with closed-form duals, by the name ``closed_form`` takes
CLOSED_FORMS = ("relu", "leaky_relu", "abs", "erf", "identity", "gelu")
_TWO_PI = 2.0 * math.pi
#: at most this many float elements per quadrature block (64 MiB of float64)
_BLOCK_ELEMENTS = 8_000_000


class Dual:
    """The dual of one activation: ``__call__(cov, q1, q2, derivative)`` -> (K, K̇ or None),
    ``diag(q)`` -> E[φ(u)²] for u ~ N(0, q)."""

    name = "dual"

    def __call__(self, cov: "torch.Tensor", q1: "torch.Tensor", q2: "torch.Tensor",
                 derivative: bool = True) -> tuple["torch.Tensor", "torch.Tensor | None"]:
        raise NotImplementedError

    def diag(self, q: "torch.Tensor") -> "torch.Tensor":
        k, _ = self(q, q, q, derivative=False)
        return k


def _correlation(cov: "torch.Tensor", q1: "torch.Tensor", q2: "torch.Tensor") -> tuple["torch.Tensor", "torch.Tensor"]:
    """(√(q₁q₂), ρ = c/√(q₁q₂) clamped to [−1, 1]); ρ = 0 where an input has zero variance
    (a zero input without bias: every expectation below is then 0 or φ'(0)², as it should).
    The reciprocal square roots are taken on q₁ and q₂ before broadcasting (they are the
    rows' and columns' vectors in the kernels), so the full-size work is two multiplies."""
    import torch

    s1, s2 = torch.sqrt(q1), torch.sqrt(q2)
    inv1 = torch.where(s1 > 0, 1.0 / torch.where(s1 > 0, s1, torch.ones_like(s1)), torch.zeros_like(s1))
    inv2 = inv1 if q2 is q1 else torch.where(s2 > 0, 1.0 / torch.where(s2 > 0, s2, torch.ones_like(s2)),
                                                torch.zeros_like(s2))
    if cov.requires_grad:  # differentiable (autograd through the kernel): no in-place ops
        return s1 * s2, (cov * inv1 * inv2).clamp(-1.0, 1.0)
    rho = (cov * inv1).mul_(inv2).clamp_(-1.0, 1.0)
    return s1 * s2, rho


class ReLUDual(Dual):
    """Arc-cosine kernels of degree 1 (K) and 0 (K̇) (Cho & Saul 2009)."""

    name = "relu"

    def __call__(self, cov, q1, q2, derivative=True):
        import torch

        norm, rho = _correlation(cov, q1, q2)
        if rho.requires_grad:  # differentiable: the same formula without in-place ops
            pi_minus_theta = math.pi - torch.arccos(rho)
            k = (torch.sqrt(1.0 - rho * rho) + pi_minus_theta * rho) * norm / _TWO_PI
            return k, (pi_minus_theta / _TWO_PI if derivative else None)
        # the same, in place: the kernels' matrices are large, and each pass over memory counts
        pi_minus_theta = torch.arccos(rho).neg_().add_(math.pi)
        # sin θ = √(1 − ρ²): one sqrt instead of a sine
        k = torch.addcmul(torch.ones((), dtype=rho.dtype, device=rho.device), rho, rho, value=-1.0).sqrt_()
        k.addcmul_(pi_minus_theta, rho).mul_(norm).mul_(1.0 / _TWO_PI)
        kdot = pi_minus_theta.mul_(1.0 / _TWO_PI) if derivative else None
        return k, kdot

    def diag(self, q):
        return q / 2.0


class LeakyReLUDual(Dual):
    """φ = (1 − a)·relu + a·x, so K = (1 − a)²·K_relu + a·c and K̇ = (1 − a)²·K̇_relu + a
    (the cross terms E[relu(u)·v] = c/2 are what makes the coefficient of c exactly a)."""

    name = "leaky_relu"

    def __init__(self, slope: float):
        self.slope = float(slope)

    def __call__(self, cov, q1, q2, derivative=True):
        a = self.slope
        k, kdot = ReLUDual()(cov, q1, q2, derivative)
        k = (1.0 - a) ** 2 * k + a * cov
        kdot = (1.0 - a) ** 2 * kdot + a if derivative else None
        return k, kdot

    def diag(self, q):
        a = self.slope
        return ((1.0 - a) ** 2 / 2.0 + a) * q


class AbsDual(Dual):
    """φ = |x| = relu(x) + relu(−x): K = √(q₁q₂)/π·(2 sin θ + (π − 2θ)ρ), K̇ = E[sign u sign v] = 1 − 2θ/π."""

    name = "abs"

    def __call__(self, cov, q1, q2, derivative=True):
        import torch

        norm, rho = _correlation(cov, q1, q2)
        theta = torch.arccos(rho)
        k = (2.0 * torch.sqrt(1.0 - rho * rho) + (math.pi - 2.0 * theta) * rho) * norm / math.pi
        kdot = 1.0 - 2.0 * theta / math.pi if derivative else None
        return k, kdot

    def diag(self, q):
        return q


class ErfDual(Dual):
    """Williams 1997: K = (2/π) arcsin(2c/√((1+2q₁)(1+2q₂))), K̇ = (4/π)/√((1+2q₁)(1+2q₂) − 4c²)."""

    name = "erf"

    def __call__(self, cov, q1, q2, derivative=True):
        import torch

        prod = (1.0 + 2.0 * q1) * (1.0 + 2.0 * q2)
        k = (2.0 / math.pi) * torch.arcsin((2.0 * cov / torch.sqrt(prod)).clamp(-1.0, 1.0))
        kdot = (4.0 / math.pi) / torch.sqrt((prod - 4.0 * cov * cov).clamp_min(1e-300)) if derivative else None
        return k, kdot

    def diag(self, q):
        import torch

        return (2.0 / math.pi) * torch.arcsin(2.0 * q / (1.0 + 2.0 * q))


class IdentityDual(Dual):
    """φ(x) = x: K = c, K̇ = 1 (a deep linear network's kernels)."""

    name = "identity"

    def __call__(self, cov, q1, q2, derivative=True):
        import torch

        return cov.clone(), (torch.ones_like(cov) if derivative else None)

    def diag(self, q):
        return q.clone()


class GELUDual(Dual):
    """φ(x) = x·Φ(x) (Tsuchida et al. 2021); K̇ is ∂K/∂c of the closed form, simplified."""

    name = "gelu"

    def __call__(self, cov, q1, q2, derivative=True):
        import torch

        prod = q1 * q2
        prod1 = (1.0 + q1) * (1.0 + q2)
        delta2 = (prod1 - cov * cov).clamp_min(1e-300)
        delta = torch.sqrt(delta2)
        alpha = torch.arctan2(cov, delta)  # = arcsin(c/√P₁), stable at |c| → √P₁
        k = 0.25 * cov + ((cov * cov + prod * delta2) / (prod1 * delta) + cov * alpha) / _TWO_PI
        if not derivative:
            return k, None
        kdot = 0.25 + alpha / _TWO_PI + cov / (_TWO_PI * delta) * (1.0 + 1.0 / delta2 + (1.0 - prod) / prod1)
        return k, kdot

    def diag(self, q):
        import torch

        root = torch.sqrt(1.0 + 2.0 * q)
        return q * (0.25 + (q / ((q + 1.0) * root) + 0.5 * torch.arctan2(q, root)) / math.pi)


class QuadratureDual(Dual):
    """E[φ(u)φ(v)] and E[φ'(u)φ'(v)] by a P×P tensor grid of Gauss–Hermite nodes (module doc).

    ``fn`` is the activation applied elementwise (a torch module or function); φ' is its
    autograd derivative, so any registered activation works without a hand-written formula.
    """

    name = "quadrature"

    def __init__(self, fn: Callable[["torch.Tensor"], "torch.Tensor"], points: int = 32):
        self.fn = fn
        self.points = int(points)

    def _nodes(self, like: "torch.Tensor") -> tuple["torch.Tensor", "torch.Tensor"]:
        import numpy as np
        import torch

        z, w = np.polynomial.hermite_e.hermegauss(self.points)  # ∫ f(z) e^{−z²/2} dz
        return (torch.as_tensor(z, dtype=like.dtype, device=like.device),
                torch.as_tensor(w / math.sqrt(2.0 * math.pi), dtype=like.dtype, device=like.device))

    def _phi(self, x: "torch.Tensor", derivative: bool) -> tuple["torch.Tensor", "torch.Tensor | None"]:
        """φ(x) and, when asked, φ'(x) by autograd (elementwise φ: the gradient of Σφ is φ')."""
        import torch

        if not derivative:
            with torch.no_grad():
                return self.fn(x), None
        with torch.enable_grad():
            xg = x.detach().requires_grad_(True)
            y = self.fn(xg)
            (dy,) = torch.autograd.grad(y.sum(), xg)
        return y.detach(), dy

    def __call__(self, cov, q1, q2, derivative=True):
        import torch

        z, w = self._nodes(cov)
        shape = torch.broadcast_shapes(cov.shape, q1.shape, q2.shape)
        cov, q1, q2 = (t.expand(shape).reshape(-1) for t in (cov, q1, q2))
        norm, rho = _correlation(cov, q1, q2)
        k = torch.empty_like(cov)
        kdot = torch.empty_like(cov) if derivative else None
        p = self.points
        step = max(1, _BLOCK_ELEMENTS // (p * p))
        for start in range(0, cov.numel(), step):
            sl = slice(start, start + step)
            s1, s2, r = q1[sl].sqrt(), q2[sl].sqrt(), rho[sl]
            u = s1[:, None] * z[None, :]  # (m, P): depends on z₁ only
            # v = √q₂ (ρ z₁ + √(1−ρ²) z₂): (m, P₁, P₂)
            v = s2[:, None, None] * (r[:, None, None] * z[None, :, None]
                                     + torch.sqrt(1.0 - r * r)[:, None, None] * z[None, None, :])
            fu, du = self._phi(u, derivative)
            fv, dv = self._phi(v, derivative)
            # Σ_i w_i φ(u_i) Σ_j w_j φ(v_ij): the inner sum first
            k[sl] = ((fv @ w) * fu) @ w
            if derivative:
                kdot[sl] = ((dv @ w) * du) @ w
        k = k.reshape(shape)
        return k, (kdot.reshape(shape) if derivative else None)

    def diag(self, q):
        import torch

        z, w = self._nodes(q)
        fu, _ = self._phi(q.sqrt().reshape(-1, 1) * z, derivative=False)
        return ((fu * fu) @ w).reshape(q.shape)


def closed_form(name: str, **params: float) -> Dual:
    """The closed-form dual of ``name`` (one of ``CLOSED_FORMS``); ``leaky_relu`` takes ``slope``."""
    if name == "relu":
        return ReLUDual()
    if name == "leaky_relu":
        return LeakyReLUDual(params.get("slope", 0.01))
    if name == "abs":
        return AbsDual()
    if name == "erf":
        return ErfDual()
    if name == "identity":
        return IdentityDual()
    if name == "gelu":
        return GELUDual()
    raise KeyError(f"no closed-form dual for '{name}' (closed forms: {', '.join(CLOSED_FORMS)})")


def dual_of(activation: "Activation", quadrature_points: int = 32) -> Dual:
    """The dual of a registered activation component: its closed form where one exists
    (recognised by the component's class, so the aliases ``linear``/``identity`` agree and a
    plugin subclass keeps its parent's form only if it is that class), else quadrature of
    its built module."""
    from nnopt.plugins.activations import elementwise as ew

    kind = type(activation)
    if kind is ew.ReLU:
        return ReLUDual()
    if kind is ew.LeakyReLU:
        return LeakyReLUDual(activation.params.negative_slope)
    if kind is ew.Linear:
        return IdentityDual()
    if kind is ew.Erf:
        return ErfDual()
    if kind is ew.GELU and activation.params.approximate == "none":
        return GELUDual()
    return QuadratureDual(activation.build(), quadrature_points)
