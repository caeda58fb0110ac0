"""Natural gradient descent with a damped Fisher solved by conjugate gradient (survey §5, second-order)."""

from __future__ import annotations

from typing import Any, ClassVar, Iterable, Literal

import torch
from pydantic import Field

from nnopt.core.component import Params
from nnopt.core.kinds import Optimizer
from nnopt.core.loop import StepRule

from ._curvature import BatchFunction, DirectionStep, conjugate_gradient, first_gradient, unflatten


class NaturalGradientParams(Params):
    lr: float = Field(0.5, gt=0.0, description="learning rate η of θ ← θ − η d (scaled by the schedule)")
    damping: float = Field(0.1, gt=0.0, description="Tikhonov damping λ of the solve (F + λI) d = g")
    fisher: Literal["true", "empirical"] = Field(
        "true",
        description="`true`: the Fisher of the model's predictive distribution as the Gauss–Newton matrix JᵀHJ "
        "(exact for softmax cross-entropy and squared error); `empirical`: (1/n) Σ_i g_i g_iᵀ of the per-example "
        "gradients (needs a model without batch-coupling layers such as training-mode BatchNorm)",
    )
    cg_iters: int = Field(10, ge=1, le=10_000, description="most conjugate-gradient iterations per step")
    cg_tol: float = Field(1e-6, ge=0.0, lt=1.0, description="CG stops once ‖g − (F + λI) d‖ ≤ cg_tol · ‖g‖")
    max_per_example_elements: int = Field(
        50_000_000, ge=1,
        description="memory cap of the empirical Fisher: a step whose n per-example gradients of P parameters "
        "hold more than this many numbers (n · P) is refused with a message",
    )


class NaturalGradientStep(StepRule):
    """One natural-gradient step on the batch: gradient, then CG on (F + λI) d = g, then θ ← θ − η d."""

    def __init__(self, params: NaturalGradientParams):
        self.params = params

    def step(self, loop: Any, xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        spec, model, opt = self.params, loop.model, loop.optimizer
        first = first_gradient(loop, xb, yb, "natural_gradient")
        if not first.params:
            return first.loss
        loss, params, g = first.loss, first.params, first.g
        fn = BatchFunction(model, params, loop.loss_fn, xb, yb)
        fisher = fn.gauss_newton() if spec.fisher == "true" else fn.empirical_fisher(spec.max_per_example_elements)
        damping = spec.damping
        result = conjugate_gradient(lambda v: fisher(v) + damping * v, g, max_iters=spec.cg_iters, tol=spec.cg_tol)
        for p, d in zip(params, unflatten(result.x, params)):
            p.grad = d.clone()
        opt.step()
        return loss.detach()


class NaturalGradient(Optimizer):
    """Natural gradient descent (Amari 1998), with Martens's (2014) damped CG solve.

    On each mini-batch B, with g = ∇_θ L_B(θ):

        solve (F + λI) d = g by conjugate gradient (at most ``cg_iters`` iterations, from d = 0),
        θ ← θ − η d,

    so with λ → 0 and an exact solve d = F⁻¹ g, the steepest descent direction in the KL
    geometry of the model's predictive distribution. F is, with ``fisher``:

    - ``true``: F = Jᵀ H J, J = ∂f_θ(X_B)/∂θ, H = ∇²_z L_B (Martens 2014, §9.2: the Fisher
      for losses that are an exponential family's negative log-likelihood in the outputs, as
      softmax cross-entropy and squared error), applied as jvp → output Hessian → vjp
      (``torch.func``) without forming J;
    - ``empirical``: F = (1/|B|) Σ_i g_i g_iᵀ with the per-example gradients g_i (computed by
      ``torch.func.vmap``), which Martens 2014 (§11) warns is a different matrix, not an
      approximation of the Fisher.

    Every CG iteration costs one curvature product (true: a forward pass with tangents and a
    backward pass). The curvature products run in full precision outside the loop's forward
    context (autocast). Dropout is refused (every product must see the same function);
    training-mode BatchNorm uses batch statistics in the products, without updating its
    running averages there. The method keeps no state between steps.
    """

    cache_version: ClassVar[int] = 1
    Params = NaturalGradientParams

    def build(self, params: Iterable[Any], device: torch.device) -> torch.optim.Optimizer:
        return DirectionStep(params, lr=self.params.lr)

    def step_rule(self) -> StepRule:
        return NaturalGradientStep(self.params)
