"""Warmup, linear batch-size scaling, and warmup–stable–decay (survey §5.1 "learning rate
warmup", §5.3 large-batch training: Goyal et al. 2017)."""

from __future__ import annotations

import math
from typing import Any, ClassVar, Literal

import torch
from pydantic import Field

from nnopt.core.component import Params, ref_type
from nnopt.core.kinds import Schedule
from nnopt.core.loop import LoopCallback

from .decay import Unit, check_total, in_steps, unit_field


def _inner(schedule: Schedule, ref: Any) -> Schedule:
    """The wrapped schedule's component, told the same epoch length and batch size."""
    return ref.instantiate().bind(schedule.steps_per_epoch, schedule.batch_size)


# --------------------------------------------------------------------------- warmup
class WarmupParams(Params):
    length: int = Field(5, ge=0, description="W: how long the warmup lasts, in `unit` (0: no warmup)")
    unit: Unit = unit_field()
    start_factor: float = Field(
        0.1, gt=0.0, le=1.0, description="1/k: the warmup starts from η₀/k (Goyal et al.: k = the batch-size multiple)"
    )
    mode: Literal["gradual", "constant"] = Field(
        "gradual", description="`gradual`: rise linearly from η₀/k to η₀ over the warmup; `constant`: stay at η₀/k "
        "throughout it, then jump to η₀"
    )
    # validate_default turns the default into a ref the engine resolves, as if written `then: constant`
    then: ref_type("schedules") = Field(  # type: ignore[valid-type]
        "constant", validate_default=True,
        description="the schedule after the warmup (a component, e.g. {name: cosine}); it runs on the remaining "
        "steps T − W as if they were a whole run",
    )


class Warmup(Schedule):
    """η_t = η₀·(s + (1 − s)·t/W) for t < W (gradual; constant: η₀·s), then η_t = S_{t−W}.

    Learning-rate warmup (survey §5.1): a small rate for the first W steps, then the regular
    one. With s = 1/k this is Goyal et al. 2017's "gradual warmup" (from η/k to η linearly in
    the first 5 epochs, when the batch is k times larger) or their "constant warmup" (η/k for
    W steps, then η). S is any schedule (``then``), built for the remaining T − W steps and
    started at the end of the warmup, so ``then: cosine`` decays from η₀ at t = W to η_min at
    t = T. ``torch.optim.lr_scheduler.LinearLR`` / ``ConstantLR`` chained to S by
    ``SequentialLR``. A schedule driven by readings rather than steps (``plateau``) cannot be
    chained this way and is refused.
    """

    cache_version: ClassVar[int] = 1
    Params = WarmupParams

    def warmup_steps(self) -> int:
        p = self.params
        return int(in_steps(p.length, p.unit, self.steps_per_epoch))

    def build(self, optimizer: torch.optim.Optimizer, total_steps: int) -> torch.optim.lr_scheduler.LRScheduler:
        check_total("warmup", total_steps)
        p, w = self.params, self.warmup_steps()
        inner = _inner(self, p.then).build(optimizer, max(total_steps - w, 1))
        if w == 0:
            return inner
        if not isinstance(inner, torch.optim.lr_scheduler.LRScheduler) or isinstance(
            inner, torch.optim.lr_scheduler.ReduceLROnPlateau
        ):
            raise ValueError(f"warmup cannot chain schedule '{p.then.name}': it is not stepped once per step")
        if p.mode == "gradual":
            first = torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=p.start_factor, end_factor=1.0, total_iters=w)
        else:
            first = torch.optim.lr_scheduler.ConstantLR(optimizer, factor=p.start_factor, total_iters=w)
        return torch.optim.lr_scheduler.SequentialLR(optimizer, [first, inner], milestones=[w])


# --------------------------------------------------------------------------- linear scaling
class LinearScalingParams(Params):
    base_batch: int = Field(256, ge=1, description="B₀: the batch size the optimizer's η_base is meant for")
    then: ref_type("schedules") = Field(  # type: ignore[valid-type]
        "constant", validate_default=True,
        description="the schedule applied to the scaled rate (a component, e.g. {name: warmup, then: cosine})",
    )


class LinearScaling(Schedule):
    """η = η_base · B/B₀, then η_t = S_t(η): the linear scaling rule of Goyal et al. 2017.

    "When the minibatch size is multiplied by k, multiply the learning rate by k" (survey
    §5.3, training ImageNet in one hour): the optimizer's rate is read as the rate for batch
    B₀ (``base_batch``, 256 as for ResNet-50 on ImageNet) and multiplied by B/B₀ for the
    stage's batch size B. The scaled rate is then the η₀ of any schedule S (``then``), e.g.
    ``{name: warmup, mode: gradual, then: cosine}`` for Goyal et al.'s full recipe. The
    scaling is applied to every param group's rate once, before S is built, so the result is
    S's own scheduler (and its callbacks).
    """

    cache_version: ClassVar[int] = 1
    Params = LinearScalingParams

    def scale(self) -> float:
        return self.batch_size / self.params.base_batch

    def build(self, optimizer: torch.optim.Optimizer, total_steps: int) -> Any:
        factor = self.scale()
        for group in optimizer.param_groups:
            group["lr"] = group["lr"] * factor
            if "initial_lr" in group:  # a scheduler built earlier on this optimizer reads η₀ from here
                group["initial_lr"] = group["initial_lr"] * factor
        self._then = _inner(self, self.params.then)
        return self._then.build(optimizer, total_steps)

    def callbacks(self, scheduler: Any) -> list[LoopCallback]:
        return self._then.callbacks(scheduler)


# --------------------------------------------------------------------------- WSD
class WSDParams(Params):
    warmup: int = Field(0, ge=0, description="W: steps of linear warmup from η₀/W to η₀ (0: none)")
    decay_fraction: float = Field(
        0.2, gt=0.0, le=1.0, description="the last fraction of the T steps spent decaying (Hägele et al.: 0.2)"
    )
    decay: Literal["linear", "cosine", "one_minus_sqrt"] = Field(
        "linear", description="the shape g(s), s ∈ [0, 1] of the decay: 1 − s, ½(1 + cos πs) or 1 − √s"
    )
    min_lr_fraction: float = Field(0.0, ge=0.0, le=1.0, description="η_min/η₀: where the decay ends")


class _WSDFactor:
    """η_t / η₀ (a callable object, so ``LambdaLR.state_dict`` keeps it for resuming)."""

    def __init__(self, total: int, warmup: int, decay_steps: int, shape: str, floor: float):
        self.total, self.warmup, self.decay_steps, self.shape, self.floor = total, warmup, decay_steps, shape, floor

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / self.warmup
        start = self.total - self.decay_steps
        if step < start:
            return 1.0
        s = min((step - start) / self.decay_steps, 1.0)
        g = 1.0 - s if self.shape == "linear" else 0.5 * (1.0 + math.cos(math.pi * s)) if self.shape == "cosine" else 1.0 - math.sqrt(s)
        return self.floor + (1.0 - self.floor) * g


class WSD(Schedule):
    """Warmup–stable–decay: η_t = η₀·(t+1)/W for t < W; η₀ until T − D; then η_min + (η₀ − η_min)·g((t − T + D)/D).

    The "trapezoidal" schedule of MiniCPM (Hu et al. 2024) and Hägele et al. 2024: linear
    warmup over W steps, a long constant phase, and a decay ("cooldown") over the last
    D = round(decay_fraction·T) steps with shape g(s) = 1 − s (linear), ½(1 + cos πs) or
    1 − √s (Hägele et al.'s best), s ∈ [0, 1], reaching η_min at t = T and held there.
    The constant phase makes a run extensible: decaying from any checkpoint of it gives a
    finished model. Computed in closed form at each step (a ``LambdaLR``).
    """

    cache_version: ClassVar[int] = 1
    Params = WSDParams

    def build(self, optimizer: torch.optim.Optimizer, total_steps: int) -> torch.optim.lr_scheduler.LRScheduler:
        check_total("wsd", total_steps)
        p = self.params
        decay_steps = max(1, round(p.decay_fraction * total_steps))
        if p.warmup + decay_steps > total_steps:
            raise ValueError(f"wsd: warmup ({p.warmup}) and decay ({decay_steps} steps) do not fit in {total_steps} steps")
        factor = _WSDFactor(total_steps, p.warmup, decay_steps, p.decay, p.min_lr_fraction)
        return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
