"""Barzilai–Borwein step sizes (Barzilai & Borwein 1988) and SGD-BB (Tan et al. 2016)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, ClassVar, Iterable, Literal

import torch
from pydantic import Field, model_validator

from nnopt.core.component import Params
from nnopt.core.kinds import Optimizer
from nnopt.core.loop import BackwardStep, LoopCallback, StepRule

from .full_batch import FullBatchStep

if TYPE_CHECKING:  # pragma: no cover
    from torch import nn

    from nnopt.core.loop import TrainLoop

def _dot(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    return float(sum(torch.sum(u * v) for u, v in zip(a, b)))


class BarzilaiBorweinOptimizer(torch.optim.Optimizer):
    """θ_{t+1} = θ_t − η_t g_t with the Barzilai–Borwein step η_t (see ``BarzilaiBorwein``).

    One step size serves every parameter: s and y are the concatenations over all groups.
    Scalars (the step count, the current η) live in ``self.state["bb"]``, tensors (previous
    iterate, previous gradient, SGD-BB's averages) in each parameter's state, so
    ``state_dict()`` holds everything a resumed run needs.
    """

    def __init__(
        self, params: Iterable[Any], lr: float = 1e-2, weight_decay: float = 0.0, variant: str = "bb1",
        min_lr: float = 1e-10, max_lr: float = 1e10, fallback: str = "abs", stochastic: bool = False,
        beta: float | None = None, steps_per_epoch: int | None = None,
    ):
        super().__init__(params, {"lr": lr, "weight_decay": weight_decay})
        if len({g["lr"] for g in self.param_groups}) > 1:
            raise ValueError("barzilai_borwein computes one step size for all parameters: groups cannot have their own lr")
        self.variant, self.min_lr, self.max_lr, self.fallback = variant, min_lr, max_lr, fallback
        self.stochastic, self.beta, self.steps_per_epoch = stochastic, beta, steps_per_epoch

    def _params(self) -> list[torch.Tensor]:
        return [p for g in self.param_groups for p in g["params"]]

    def _gradients(self) -> list[torch.Tensor]:
        out = []
        for group in self.param_groups:
            for p in group["params"]:
                g = p.grad if p.grad is not None else torch.zeros_like(p)
                out.append(g.detach() + group["weight_decay"] * p.detach() if group["weight_decay"] else g.detach())
        return out

    def _bb_step(self, s: list[torch.Tensor], y: list[torch.Tensor], previous: float, scale: float) -> float:
        """``scale``·sᵀs/sᵀy (bb1) or ``scale``·sᵀy/yᵀy (bb2), with the safeguards applied."""
        sy = _dot(s, y)
        if not (math.isfinite(sy) and sy > 0):
            if self.fallback == "previous" or not math.isfinite(sy) or sy == 0:
                return previous
            if self.fallback == "initial":
                return float(self.state["bb"]["lr0"])
            sy = abs(sy)
        eta = _dot(s, s) / sy if self.variant == "bb1" else sy / _dot(y, y)
        if not math.isfinite(eta) or eta <= 0:
            return previous
        return min(max(scale * eta, self.min_lr), self.max_lr)

    @torch.no_grad()
    def step(self, closure=None):  # noqa: ANN001 - torch's signature
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        params, grads = self._params(), self._gradients()
        bb = self.state["bb"]
        if not bb:  # the first step: η_0 is the group's lr (a schedule may set it before)
            bb.update(step=0, lr=float(self.param_groups[0]["lr"]), lr0=float(self.param_groups[0]["lr"]))
        k = bb["step"]
        if self.stochastic:
            self._sgd_bb_boundary(params, k)
        elif k > 0:
            s = [p - self.state[p]["prev_param"] for p in params]
            y = [g - self.state[p]["prev_grad"] for p, g in zip(params, grads)]
            bb["lr"] = self._bb_step(s, y, bb["lr"], 1.0)
        eta = bb["lr"]
        for p, g in zip(params, grads):
            st = self.state[p]
            if not self.stochastic:
                st["prev_param"] = p.detach().clone()
                st["prev_grad"] = g.clone()
            else:
                avg = st.setdefault("grad_avg", torch.zeros_like(p))
                avg.mul_(1.0 - self._beta()).add_(g, alpha=self._beta())
            p.add_(g, alpha=-eta)
        bb["step"] = k + 1
        for group in self.param_groups:  # so that the logged lr is the step just taken
            group["lr"] = eta
        return loss

    def _beta(self) -> float:
        return self.beta if self.beta is not None else min(1.0, 10.0 / self._m())

    def _m(self) -> int:
        m = self.state["bb"].get("m") or self.steps_per_epoch
        if not m:
            raise RuntimeError("SGD-BB needs steps_per_epoch (the component's callback sets it from the loop)")
        self.state["bb"]["m"] = int(m)
        return int(m)

    def _sgd_bb_boundary(self, params: list[torch.Tensor], k: int) -> None:
        """At the start of epoch e = k/m: x̃_e = θ; for e ≥ 2 the step becomes
        η_e = (1/m)·‖x̃_e − x̃_{e−1}‖² / sᵀ(ĝ_e − ĝ_{e−1}) with ĝ the gradient average."""
        m = self._m()
        if k % m:
            return
        epoch = k // m
        if epoch >= 2:
            s = [p - self.state[p]["prev_param"] for p in params]
            y = [self.state[p]["grad_avg"] - self.state[p]["prev_grad"] for p in params]
            self.state["bb"]["lr"] = self._bb_step(s, y, self.state["bb"]["lr"], 1.0 / m)
        if epoch >= 1:
            for p in params:
                self.state[p]["prev_param"] = p.detach().clone()
                self.state[p]["prev_grad"] = self.state[p]["grad_avg"].clone()


class _EpochLength(LoopCallback):
    """Tells SGD-BB the loop's steps per epoch m before the first step."""

    def __init__(self, optimizer: BarzilaiBorweinOptimizer):
        self.optimizer = optimizer

    def on_train_start(self, loop: "TrainLoop") -> None:
        self.optimizer.steps_per_epoch = loop.per_epoch


class BBParams(Params):
    lr: float = Field(1e-2, gt=0.0, description="initial step η_0: the first step (SGD-BB: the first two epochs)")
    variant: Literal["bb1", "bb2"] = Field(
        "bb1", description="bb1: η = sᵀs/sᵀy (the long step); bb2: η = sᵀy/yᵀy (the short step)"
    )
    min_lr: float = Field(1e-10, gt=0.0, description="smallest step the safeguard allows")
    max_lr: float = Field(1e10, gt=0.0, description="largest step the safeguard allows")
    fallback: Literal["abs", "previous", "initial"] = Field(
        "abs",
        description="when sᵀy ≤ 0 (non-convex curvature): abs = use |sᵀy| (Tan et al.); previous = keep the last "
        "step; initial = go back to lr. A zero or non-finite sᵀy always keeps the last step",
    )
    stochastic: bool = Field(
        False, description="SGD-BB (Tan et al. 2016): mini-batch SGD whose step is set once per epoch from the "
        "epoch's iterates and averaged gradients, η = (1/m)‖s‖²/sᵀy",
    )
    beta: float | None = Field(
        None, gt=0.0, le=1.0,
        description="SGD-BB's gradient average ĝ ← β g + (1−β) ĝ over the steps; None: β = min(1, 10/m) (Tan et al.)",
    )
    full_batch: bool | None = Field(
        None, description="compute each gradient on the whole train split (None: yes, except with stochastic)"
    )
    weight_decay: float = Field(0.0, ge=0.0, description="L2 coefficient λ added to the gradient as λθ")

    @model_validator(mode="after")
    def _consistent(self):
        if self.min_lr > self.max_lr:
            raise ValueError("min_lr must be <= max_lr")
        if self.stochastic and self.full_batch:
            raise ValueError("stochastic (SGD-BB) steps on mini-batches: full_batch must be false or left out")
        if self.beta is not None and not self.stochastic:
            raise ValueError("beta is SGD-BB's averaging weight: it needs stochastic: true")
        return self


class BarzilaiBorwein(Optimizer):
    """Gradient descent with Barzilai–Borwein step sizes ("Two-point step size gradient
    methods", Barzilai & Borwein 1988), and SGD-BB ("Barzilai-Borwein step size for stochastic
    gradient descent", Tan, Ma, Dai & Qian 2016).

    θ_{t+1} = θ_t − η_t g_t, g_t = ∇F(θ_t) + λθ_t, with s = θ_t − θ_{t−1}, y = g_t − g_{t−1}:

    - ``bb1``: η_t = sᵀs / sᵀy,   ``bb2``: η_t = sᵀy / yᵀy,   η_0 = ``lr``.

    Both are the inverse of a Rayleigh quotient of the average Hessian along s (for a quadratic
    ½θᵀAθ, y = As, so η ∈ [1/λ_max, 1/λ_min]): a scalar secant (quasi-Newton) step. On a
    quadratic the iteration is non-monotone but converges R-linearly, typically far faster
    than GD with η = 1/L. Safeguards: sᵀy ≤ 0 is handled by ``fallback``; η is clipped to
    [``min_lr``, ``max_lr``]. By default each gradient is full-batch (the whole train split,
    whatever the data's batch_size: set batch_size to n_train so that a step is an epoch);
    BB on noisy mini-batch gradients is unstable.

    ``stochastic: true`` is SGD-BB (Tan et al., Algorithm 2): constant-step SGD on the loop's
    mini-batches, with the step reset at the start of every epoch e ≥ 2 from the iterates at
    epoch boundaries x̃_e and the running gradient average ĝ_e (ĝ ← βg + (1−β)ĝ at every step,
    not reset between epochs, β = 10/m by default):
    η_e = (1/m) ‖x̃_e − x̃_{e−1}‖² / |(x̃_e − x̃_{e−1})ᵀ(ĝ_e − ĝ_{e−1})|, m = steps per epoch
    (told by a loop callback); the 1/m turns the secant step of one epoch (m steps) into a
    per-step rate. The paper's optional smoothing of η over epochs is not applied.

    The learning-rate schedule only sets η_0 (read at the first step); after each step the
    groups' ``lr`` holds the BB step just used, so the logged ``lr`` is BB's.
    """

    cache_version: ClassVar[int] = 1
    Params = BBParams

    def build(self, params: Iterable[Any], device: torch.device) -> torch.optim.Optimizer:
        p = self.params
        return BarzilaiBorweinOptimizer(
            params, lr=p.lr, weight_decay=p.weight_decay, variant=p.variant, min_lr=p.min_lr, max_lr=p.max_lr,
            fallback=p.fallback, stochastic=p.stochastic, beta=p.beta,
        )

    def _full_batch(self) -> bool:
        return not self.params.stochastic if self.params.full_batch is None else self.params.full_batch

    def step_rule(self) -> StepRule:
        return FullBatchStep(method="barzilai_borwein", one_step_epochs=False) if self._full_batch() else BackwardStep()

    def callbacks(self, optimizer: torch.optim.Optimizer, model: "nn.Module") -> list[LoopCallback]:
        return [_EpochLength(optimizer)] if self.params.stochastic else []
