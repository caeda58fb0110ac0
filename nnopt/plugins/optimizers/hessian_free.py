"""Hessian-free optimization: truncated CG on damped Gauss–Newton products (Martens 2010)."""

from __future__ import annotations

import math
from typing import Any, ClassVar, Iterable

import torch
from pydantic import Field

from nnopt.core.component import Params
from nnopt.core.kinds import Optimizer
from nnopt.core.loop import StepRule

from ._curvature import BatchFunction, DirectionStep, conjugate_gradient, first_gradient, flatten, unflatten

#: Levenberg–Marquardt rule of Martens 2010, §4.1
RHO_LOW, RHO_HIGH, GROW, SHRINK = 0.25, 0.75, 1.5, 2.0 / 3.0
#: Martens 2010, §4.6: CG iterates kept for backtracking are those at i = ⌈γ^j⌉
BACKTRACK_GAMMA = 1.3


def backtrack_iterations(max_iters: int) -> set[int]:
    kept, j = set(), 0
    while math.ceil(BACKTRACK_GAMMA**j) <= max_iters:
        kept.add(math.ceil(BACKTRACK_GAMMA**j))
        j += 1
    return kept


class HessianFreeParams(Params):
    lr: float = Field(1.0, gt=0.0, description="step scale η of θ ← θ + η d (1: the CG solution itself)")
    damping: float = Field(1.0, gt=0.0, description="initial Tikhonov damping λ of (G + λI) d = −g, then adapted")
    adapt_damping: bool = Field(True, description="adjust λ by the reduction ratio ρ after every step (Levenberg–Marquardt)")
    cg_iters: int = Field(30, ge=1, le=10_000, description="most CG iterations per step (truncated Newton)")
    cg_tol: float = Field(1e-6, ge=0.0, lt=1.0, description="CG stops once ‖−g − (G + λI) d‖ ≤ cg_tol · ‖g‖")
    cg_decay: float = Field(
        0.95, ge=0.0, le=1.0,
        description="warm start: CG starts from cg_decay times the previous step's last CG iterate (0: from d = 0)",
    )
    backtrack: bool = Field(
        True,
        description="choose among the CG iterates i = ⌈1.3^j⌉ (and the last) the one with the lowest batch loss, "
        "walking back from the last while the loss decreases",
    )


class HessianFreeStep(StepRule):
    """One HF step on the batch (the method's docstring)."""

    def __init__(self, params: HessianFreeParams):
        self.params = params
        self.kept = backtrack_iterations(params.cg_iters) if params.backtrack else set()

    def step(self, loop: Any, xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        spec, model, opt = self.params, loop.model, loop.optimizer
        first = first_gradient(loop, xb, yb, "hessian_free")
        if not first.params:
            return first.loss
        loss, params, g = first.loss, first.params, first.g
        fn = BatchFunction(model, params, loop.loss_fn, xb, yb)
        gauss_newton = fn.gauss_newton()
        group0 = opt.param_groups[0]
        damping, eta = float(group0["damping"]), float(group0["lr"])

        x0 = None
        if spec.cg_decay > 0 and all("cg_init" in opt.state[p] for p in params):
            x0 = spec.cg_decay * flatten([opt.state[p]["cg_init"] for p in params])
        result = conjugate_gradient(lambda v: gauss_newton(v) + damping * v, -g, x0, max_iters=spec.cg_iters,
                                    tol=spec.cg_tol, keep=self.kept.__contains__)
        for p, d in zip(params, unflatten(result.x, params)):
            opt.state[p]["cg_init"] = d.clone()  # the next warm start is the last iterate, not the backtracked one

        before = float(loss.detach())
        d = result.x
        after = fn.loss_at(eta * d)
        if spec.backtrack:
            for _, earlier in reversed(result.iterates[:-1]):
                value = fn.loss_at(eta * earlier)
                if not value < after:
                    break
                d, after = earlier, value

        step = eta * d
        predicted = float(g.dot(step) + 0.5 * step.dot(gauss_newton(step)))  # the undamped model q(s) − q(0)
        rho = (after - before) / predicted if predicted < 0 else -math.inf
        if spec.adapt_damping:
            damping = next_damping(damping, rho)
        if not after < before:  # Levenberg–Marquardt: a step that raises the batch loss is not taken
            d = torch.zeros_like(d)
        for group in opt.param_groups:
            group["damping"], group["rho"], group["cg_iterations"] = damping, rho, result.iterations
        for p, di in zip(params, unflatten(d, params)):
            p.grad = -di  # DirectionStep applies θ − η·grad
        opt.step()
        return loss.detach()


def next_damping(damping: float, rho: float) -> float:
    """λ ← (3/2)λ if ρ < 1/4, (2/3)λ if ρ > 3/4, else λ (Martens 2010, §4.1)."""
    if rho < RHO_LOW:
        return damping * GROW
    if rho > RHO_HIGH:
        return damping * SHRINK
    return damping


class HessianFree(Optimizer):
    """Hessian-free optimization, "Deep learning via Hessian-free optimization" (Martens 2010).

    On each mini-batch B, with g = ∇_θ L_B(θ) and G = Jᵀ H J the Gauss–Newton matrix of the
    batch (Schraudolph 2002; products by ``torch.func`` jvp/vjp, ``_curvature``):

        d = CG_K[(G + λI) d = −g] from d_0 = ζ · d_prev   (truncated: at most K = ``cg_iters``),
        θ ← θ + η d,
        ρ = (L_B(θ + η d) − L_B(θ)) / q(η d),   q(s) = gᵀs + ½ sᵀ G s,
        λ ← (3/2) λ if ρ < 1/4,   λ ← (2/3) λ if ρ > 3/4.

    d_prev is the last CG iterate of the previous step (ζ = ``cg_decay``, Martens's §4.5
    warm start). With ``backtrack``, d is the CG iterate among i = ⌈1.3^j⌉ and the last with
    the lowest batch loss, found by walking back from the last while the loss decreases
    (§4.6). The reduction ratio ρ compares the loss decrease with that predicted by the
    *undamped* quadratic model, as in Martens & Sutskever 2012 (§8.5); a step whose predicted
    decrease is not negative gives ρ = −∞ (λ grows). A step that does not lower the batch
    loss (ρ ≤ 0) is rejected, as in Levenberg–Marquardt: θ stays and λ grows. G is
    positive semidefinite, so CG on G + λI is well posed where the Hessian would not be.

    State in ``state_dict``: λ and the last ρ and CG iteration count in every param group,
    and the warm start d_prev per parameter. Dropout is refused; training-mode BatchNorm uses
    batch statistics in the products without updating its running averages there.
    """

    cache_version: ClassVar[int] = 1
    Params = HessianFreeParams

    def build(self, params: Iterable[Any], device: torch.device) -> torch.optim.Optimizer:
        return DirectionStep(params, lr=self.params.lr, damping=self.params.damping)

    def step_rule(self) -> StepRule:
        return HessianFreeStep(self.params)
