"""Cyclical learning rates: SGDR warm restarts, triangular CLR, and the one-cycle policy
(survey §5.1, "cyclical learning rate")."""

from __future__ import annotations

from typing import ClassVar, Literal

import torch
from pydantic import Field, model_validator

from nnopt.core.component import Params
from nnopt.core.kinds import Schedule

from .decay import Unit, check_total, in_steps, unit_field


# --------------------------------------------------------------------------- SGDR
class SGDRParams(Params):
    period: int = Field(10, ge=1, description="T₀: the length of the first cycle, in `unit`")
    period_mult: int = Field(1, ge=1, description="T_mult: each cycle is this many times longer than the one before")
    min_lr: float = Field(0.0, ge=0.0, description="η_min: the rate at the end of every cycle (absolute)")
    unit: Unit = unit_field()


class SGDR(Schedule):
    """η_t = η_min + ½(η₀ − η_min)(1 + cos(π T_cur/T_i)), restarting at η₀ when T_cur = T_i.

    Stochastic gradient descent with warm restarts (Loshchilov & Hutter 2017; survey §5.1,
    ref. [132]): cosine annealing within each cycle, T_cur counting the steps since the last
    restart, cycle i of length T_i = T₀·T_mult^i (in steps: periods in epochs are times
    steps_per_epoch). ``torch.optim.lr_scheduler.CosineAnnealingWarmRestarts``, stepped once per
    optimizer step.
    """

    cache_version: ClassVar[int] = 1
    Params = SGDRParams

    def build(self, optimizer: torch.optim.Optimizer, total_steps: int) -> torch.optim.lr_scheduler.LRScheduler:
        p = self.params
        period = int(in_steps(p.period, p.unit, self.steps_per_epoch))
        return torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(optimizer, T_0=period, T_mult=p.period_mult, eta_min=p.min_lr)


# --------------------------------------------------------------------------- CLR
class CyclicalParams(Params):
    base_lr_fraction: float = Field(
        0.1, gt=0.0, lt=1.0, description="base_lr/max_lr: the bottom of each cycle, as a fraction of the optimizer's "
        "rate (which is max_lr, the top)"
    )
    step_size: int = Field(4, ge=1, description="half a cycle: the steps (in `unit`) from base_lr up to max_lr")
    mode: Literal["triangular", "triangular2", "exp_range"] = Field(
        "triangular", description="`triangular`: every cycle the same; `triangular2`: the amplitude halves each "
        "cycle; `exp_range`: the amplitude is multiplied by γ^t"
    )
    gamma: float = Field(1.0, gt=0.0, le=1.0, description="γ of `exp_range` (per step)")
    unit: Unit = unit_field()


class Cyclical(Schedule):
    """η_t = η_b + (η_max − η_b)·max(0, 1 − |t/s − 2c − 1|)·a_c, c = ⌊t/(2s)⌋ (Smith 2017's CLR).

    The triangular cyclical learning rate (Smith 2017, "Cyclical learning rates for training
    neural networks"; survey §5.1, ref. [195]): the rate rises linearly from η_b to η_max in
    s = ``step_size`` steps and falls back in s more, cycle after cycle. The optimizer's own
    rate is η_max; η_b = base_lr_fraction·η_max per param group. The amplitude scale a_c is
    1 (triangular), 2^{−c} (triangular2) or γ^t (exp_range). Momentum is not cycled.
    ``torch.optim.lr_scheduler.CyclicLR``.
    """

    cache_version: ClassVar[int] = 1
    Params = CyclicalParams

    def build(self, optimizer: torch.optim.Optimizer, total_steps: int) -> torch.optim.lr_scheduler.LRScheduler:
        p = self.params
        top = [g["lr"] for g in optimizer.param_groups]
        return torch.optim.lr_scheduler.CyclicLR(
            optimizer, base_lr=[p.base_lr_fraction * x for x in top], max_lr=top,
            step_size_up=int(in_steps(p.step_size, p.unit, self.steps_per_epoch)), mode=p.mode, gamma=p.gamma,
            cycle_momentum=False,
        )


# --------------------------------------------------------------------------- one cycle
class OneCycleParams(Params):
    pct_start: float = Field(0.3, gt=0.0, lt=1.0, description="the fraction of the T steps spent rising to max_lr")
    anneal: Literal["cos", "linear"] = Field("cos", description="the shape of the rise and the fall")
    div_factor: float = Field(25.0, ge=1.0, description="max_lr/initial_lr: the start is η₀/div_factor")
    final_div_factor: float = Field(1e4, ge=1.0, description="initial_lr/final_lr: the end is η₀/(div_factor·final_div_factor)")
    three_phase: bool = Field(
        False, description="a third phase: back down to the initial rate symmetrically, then annihilate to the final rate"
    )
    cycle_momentum: bool = Field(
        False, description="also cycle the momentum (β₁ for Adam) inversely between max_momentum and base_momentum; "
        "changes the optimizer's momentum, so off by default"
    )
    base_momentum: float = Field(0.85, ge=0.0, lt=1.0, description="momentum at the peak of the rate (cycle_momentum)")
    max_momentum: float = Field(0.95, ge=0.0, lt=1.0, description="momentum at the start and end (cycle_momentum)")

    @model_validator(mode="after")
    def _momentum_order(self) -> "OneCycleParams":
        if self.base_momentum > self.max_momentum:
            raise ValueError("base_momentum must not exceed max_momentum")
        return self


class OneCycle(Schedule):
    """The 1cycle policy (Smith & Topin 2019, "Super-convergence"): one rise from η₀/d to η₀ over
    the first pct_start·T steps, then a fall to η₀/(d·d_f) at T = total_steps.

    The optimizer's rate is the peak max_lr = η₀; d = ``div_factor``, d_f = ``final_div_factor``;
    the rise and fall are cosine (``anneal: cos``) or linear interpolations. With
    ``cycle_momentum`` the momentum moves inversely to the rate. ``torch.optim.lr_scheduler.OneCycleLR``
    with total_steps = the stage's steps (stepping past T is an error there).
    """

    cache_version: ClassVar[int] = 1
    Params = OneCycleParams

    def build(self, optimizer: torch.optim.Optimizer, total_steps: int) -> torch.optim.lr_scheduler.LRScheduler:
        check_total("one_cycle", total_steps)
        p = self.params
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=[g["lr"] for g in optimizer.param_groups], total_steps=total_steps, pct_start=p.pct_start,
            anneal_strategy=p.anneal, div_factor=p.div_factor, final_div_factor=p.final_div_factor,
            three_phase=p.three_phase, cycle_momentum=p.cycle_momentum, base_momentum=p.base_momentum,
            max_momentum=p.max_momentum,
        )
