"""Stochastic variance-reduced gradient, SVRG (Johnson & Zhang 2013; survey §5.2)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, Iterable

import torch
from pydantic import Field

from nnopt.core.component import Params
from nnopt.core.kinds import Optimizer
from nnopt.core.loop import StepRule

from .full_batch import DEFAULT_CHUNK as FULL_BATCH_CHUNK

if TYPE_CHECKING:  # pragma: no cover
    from nnopt.core.loop import TrainLoop


class SVRGOptimizer(torch.optim.Optimizer):
    """θ ← θ − η (v + λθ) for a variance-reduced gradient v the step rule puts in ``.grad``.

    Each parameter's state holds the snapshot θ̃ (``snapshot``) and the full gradient at it
    μ = ∇F(θ̃) (``full_grad``), so a resumed run has the same snapshot; ``self.state["svrg"]``
    holds the step at which it was taken.
    """

    def __init__(self, params: Iterable[Any], lr: float = 0.01, weight_decay: float = 0.0):
        super().__init__(params, {"lr": lr, "weight_decay": weight_decay})

    def params(self) -> list[torch.Tensor]:
        return [p for g in self.param_groups for p in g["params"]]

    @torch.no_grad()
    def step(self, closure=None):  # noqa: ANN001 - torch's signature
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad if not group["weight_decay"] else p.grad.add(p, alpha=group["weight_decay"])
                p.add_(g, alpha=-group["lr"])
        return loss


class SVRGStep(StepRule):
    """One SVRG inner step: at every ``every`` steps of the loop (from step 0) take the
    snapshot θ̃ = θ and μ = ∇F(θ̃) over the whole train split; then for the mini-batch B

        v = ∇f_B(θ) − ∇f_B(θ̃) + μ,   θ ← θ − η v.

    ∇f_B(θ̃) is evaluated with ``torch.func.functional_call`` on the snapshot tensors (no
    second module); buffers (BatchNorm statistics) are cloned for that pass so only the live
    pass updates them, and it runs inside a forked RNG so that the live pass draws the same
    dropout mask. The ``after_backward`` hooks (clipping, masks) see v, the gradient used.
    """

    def __init__(self, snapshot_epochs: int):
        self.snapshot_epochs = snapshot_epochs
        self._names: dict[int, str] | None = None

    def _named(self, loop: "TrainLoop") -> dict[int, str]:
        if self._names is None:
            self._names = {id(p): name for name, p in loop.model.named_parameters()}
        return self._names

    def _snapshot_grad(self, loop: "TrainLoop", opt: SVRGOptimizer, x: torch.Tensor, y: torch.Tensor,
                       ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """(f_B(θ̃), ∇f_B(θ̃)) for the batch (x, y), at the snapshot weights."""
        names, params = self._named(loop), opt.params()
        leaves = [opt.state[p]["snapshot"].detach().requires_grad_(True) for p in params]
        values: dict[str, torch.Tensor] = {name: b.clone() for name, b in loop.model.named_buffers()}
        values.update({names[id(p)]: leaf for p, leaf in zip(params, leaves)})
        with torch.enable_grad(), loop.forward():
            loss = loop.loss_fn(torch.func.functional_call(loop.model, values, (x,)), y)
        grads = torch.autograd.grad(loss, leaves, allow_unused=True)
        return loss.detach(), [g if g is not None else torch.zeros_like(p) for g, p in zip(grads, params)]

    def take_snapshot(self, loop: "TrainLoop", opt: SVRGOptimizer) -> None:
        params = opt.params()
        for p in params:
            opt.state[p]["snapshot"] = p.detach().clone()
        x, y = loop.data.x_train, loop.data.y_train
        n = int(x.shape[0])
        mu = [torch.zeros_like(p) for p in params]
        for start in range(0, n, FULL_BATCH_CHUNK):
            xc, yc = x[start : start + FULL_BATCH_CHUNK], y[start : start + FULL_BATCH_CHUNK]
            _, grads = self._snapshot_grad(loop, opt, xc, yc)
            weight = xc.shape[0] / n
            for m, g in zip(mu, grads):
                m.add_(g, alpha=weight)
        for p, m in zip(params, mu):
            opt.state[p]["full_grad"] = m
        opt.state["svrg"]["snapshot_step"] = loop.step

    def step(self, loop: "TrainLoop", xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        from nnopt.plugins.stages._common import fork_rng

        opt = loop.optimizer
        every = self.snapshot_epochs * loop.per_epoch
        if loop.step % every == 0 or "snapshot_step" not in opt.state["svrg"]:
            self.take_snapshot(loop, opt)
        params = opt.params()
        with fork_rng(xb.device):
            _, snap_grads = self._snapshot_grad(loop, opt, xb, yb)
        opt.zero_grad(set_to_none=True)
        with loop.forward():
            loss = loop.loss_fn(loop.model(xb), yb)
        loss.backward()
        with torch.no_grad():
            for p, gs in zip(params, snap_grads):
                mu = opt.state[p]["full_grad"]
                if p.grad is None:
                    p.grad = mu - gs
                else:
                    p.grad.sub_(gs).add_(mu)
        for hook in loop.hooks.after_backward:
            hook(loop)
        opt.step()
        return loss.detach()


class SVRGParams(Params):
    lr: float = Field(0.01, gt=0.0, description="step size η of the inner SGD steps (scaled by the schedule)")
    snapshot_epochs: int = Field(
        1, ge=1, description="epochs between snapshots (Johnson & Zhang's m = this × steps per epoch)"
    )
    weight_decay: float = Field(0.0, ge=0.0, description="L2 coefficient λ added to the variance-reduced gradient as λθ")


class SVRG(Optimizer):
    """SVRG, "Accelerating stochastic gradient descent using predictive variance reduction"
    (Johnson & Zhang 2013; the survey's §5.2 on variance reduction).

    For the finite sum F(θ) = (1/n) Σ_i f_i(θ): every ``snapshot_epochs`` epochs (at the start
    of the epoch) the snapshot θ̃ = θ and its full gradient μ = ∇F(θ̃) (one pass over the
    train split) are stored; every step on mini-batch B then uses

        v_t = ∇f_B(θ_t) − ∇f_B(θ̃) + μ,   θ_{t+1} = θ_t − η (v_t + λθ_t).

    v_t is unbiased (E_B v_t = ∇F(θ_t)) and its variance vanishes as θ_t and θ̃ approach θ*,
    so constant-step SVRG converges linearly on strongly convex finite sums where constant-step
    SGD stalls at a noise floor ∝ η. Each step costs two mini-batch gradients (at θ_t and θ̃)
    and each snapshot one full gradient: about 3 passes per epoch with snapshot_epochs = 1.
    The snapshot and μ are in the optimizer's state_dict, so a resumed run continues bitwise.
    """

    cache_version: ClassVar[int] = 1
    Params = SVRGParams

    def build(self, params: Iterable[Any], device: torch.device) -> torch.optim.Optimizer:
        return SVRGOptimizer(params, lr=self.params.lr, weight_decay=self.params.weight_decay)

    def step_rule(self) -> StepRule:
        return SVRGStep(self.params.snapshot_epochs)
