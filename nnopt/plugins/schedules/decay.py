"""Decaying learning-rate schedules: step, multi-step, exponential, inverse-time, polynomial
(survey §5.1, "vanilla learning rate schedules").

Every schedule here is stepped once per optimizer step. Those defined by a period (step decay
every k epochs, milestones) take a ``unit``: ``epochs`` counts in passes over the train split
(``steps_per_epoch`` from ``Schedule.bind``), ``steps`` in optimizer steps. Each param group
decays from its own initial rate η₀.
"""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

import torch
from pydantic import Field, field_validator

from nnopt.core.component import Params
from nnopt.core.kinds import Schedule

Unit = Literal["steps", "epochs"]


def unit_field(default: Unit = "epochs") -> Unit:
    return Field(default, description="unit of this schedule's periods: optimizer `steps` or `epochs` (passes over the train split)")


def in_steps(value: float, unit: Unit, steps_per_epoch: int) -> float:
    """A period written in ``unit``, in optimizer steps."""
    return value * steps_per_epoch if unit == "epochs" else value


def check_total(name: str, total_steps: int) -> None:
    if total_steps < 1:
        raise ValueError(f"{name} schedule needs total_steps >= 1, got {total_steps}")


# --------------------------------------------------------------------------- step
class StepParams(Params):
    every: int = Field(30, ge=1, description="k: the rate is divided by γ every k units")
    gamma: float = Field(10.0, gt=1.0, description="γ: the divisor applied every k units (10: one decade)")
    unit: Unit = unit_field()


class Step(Schedule):
    """η_t = η₀ · γ^{−⌊t / k⌋}: divide the rate by γ every k epochs (or steps).

    The survey's "vanilla SGD" rule (§5.1): "divide the step-size by a fixed constant once
    every few epochs (e.g. divide by 10 every 5-10 epochs)", as in Krizhevsky et al. 2012 and
    He et al. 2016. With ``unit: epochs`` the period is k·steps_per_epoch optimizer steps.
    ``torch.optim.lr_scheduler.StepLR`` with factor 1/γ.
    """

    cache_version: ClassVar[int] = 1
    Params = StepParams

    def build(self, optimizer: torch.optim.Optimizer, total_steps: int) -> torch.optim.lr_scheduler.LRScheduler:
        p = self.params
        period = int(in_steps(p.every, p.unit, self.steps_per_epoch))
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=period, gamma=1.0 / p.gamma)


# --------------------------------------------------------------------------- multistep
class MultiStepParams(Params):
    milestones: list[Annotated[int, Field(ge=1)]] = Field(
        [30, 60, 90], min_length=1, description="the times m_1 < m_2 < … (in `unit`) at which the rate is divided by γ"
    )
    gamma: float = Field(10.0, gt=1.0, description="γ: the divisor applied at every milestone")
    unit: Unit = unit_field()

    @field_validator("milestones")
    @classmethod
    def _increasing(cls, milestones: list[int]) -> list[int]:
        if any(b <= a for a, b in zip(milestones, milestones[1:])):
            raise ValueError(f"milestones must be strictly increasing, got {milestones}")
        return milestones


class MultiStep(Schedule):
    """η_t = η₀ · γ^{−#{i : m_i ≤ t}}: divide the rate by γ at each milestone m_i.

    The piecewise-constant schedule of He et al. 2016 (ResNet: divide by 10 at epochs 30, 60
    and 90 on ImageNet; survey §5.1). Milestones are in epochs (times steps_per_epoch) or in
    steps. ``torch.optim.lr_scheduler.MultiStepLR`` with factor 1/γ.
    """

    cache_version: ClassVar[int] = 1
    Params = MultiStepParams

    def build(self, optimizer: torch.optim.Optimizer, total_steps: int) -> torch.optim.lr_scheduler.LRScheduler:
        p = self.params
        milestones = [int(in_steps(m, p.unit, self.steps_per_epoch)) for m in p.milestones]
        return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=milestones, gamma=1.0 / p.gamma)


# --------------------------------------------------------------------------- exponential
class ExponentialParams(Params):
    gamma: float = Field(0.99, gt=0.0, le=1.0, description="γ: the factor the rate is multiplied by per `unit`")
    unit: Unit = unit_field("steps")


class Exponential(Schedule):
    """η_t = η₀ · γ^{t/u}, u = 1 step or steps_per_epoch steps (``unit``).

    Smooth geometric decay (survey §5.1); per epoch, the per-step factor is γ^{1/steps_per_epoch},
    so the rate decays continuously rather than in stairs. ``torch.optim.lr_scheduler.ExponentialLR``.
    """

    cache_version: ClassVar[int] = 1
    Params = ExponentialParams

    def build(self, optimizer: torch.optim.Optimizer, total_steps: int) -> torch.optim.lr_scheduler.LRScheduler:
        p = self.params
        per_step = p.gamma ** (1.0 / in_steps(1, p.unit, self.steps_per_epoch))
        return torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=per_step)


# --------------------------------------------------------------------------- inverse time
class InverseTimeParams(Params):
    tau: float = Field(100.0, gt=0.0, description="τ: the time scale (in `unit`) after which decay sets in")
    alpha: float = Field(1.0, gt=0.5, le=1.0, description="α ∈ (1/2, 1]: the decay exponent (Robbins–Monro)")
    unit: Unit = unit_field("steps")


class _InverseTimeFactor:
    """η_t / η₀ (a callable object, so ``LambdaLR.state_dict`` keeps it for resuming)."""

    def __init__(self, tau_steps: float, alpha: float):
        self.tau_steps, self.alpha = tau_steps, alpha

    def __call__(self, step: int) -> float:
        return (1.0 + step / self.tau_steps) ** (-self.alpha)


class InverseTime(Schedule):
    """η_t = η₀ / (1 + t/τ)^α, α ∈ (1/2, 1].

    The diminishing step of stochastic approximation (Robbins & Monro 1951; survey §5.1 and
    §5.2): with α ∈ (1/2, 1] the steps satisfy the Robbins–Monro conditions Σ_t η_t = ∞ (the
    iterates can travel any distance) and Σ_t η_t² < ∞ (the gradient noise they add has finite
    total variance), under which SGD converges to a stationary point instead of stalling at a
    noise floor proportional to the step size as a constant rate does. α ≤ 1/2 breaks the
    second condition and α > 1 the first, so both are rejected. τ in steps or epochs
    (``unit``); computed in closed form at each step (a ``LambdaLR``).
    """

    cache_version: ClassVar[int] = 1
    Params = InverseTimeParams

    def build(self, optimizer: torch.optim.Optimizer, total_steps: int) -> torch.optim.lr_scheduler.LRScheduler:
        p = self.params
        return torch.optim.lr_scheduler.LambdaLR(optimizer, _InverseTimeFactor(in_steps(p.tau, p.unit, self.steps_per_epoch), p.alpha))


# --------------------------------------------------------------------------- polynomial
class PolynomialParams(Params):
    power: float = Field(1.0, gt=0.0, description="p: the exponent of (1 − t/T); 1 is linear decay to zero")


class Polynomial(Schedule):
    """η_t = η₀ · (1 − t/T)^p for t ≤ T = total_steps, and 0 afterwards.

    Polynomial ("poly") decay to zero at the end of training (Chen et al. 2017's DeepLab uses
    p = 0.9; p = 1 is the linear decay of many large-batch and language-model recipes).
    ``torch.optim.lr_scheduler.PolynomialLR`` with total_iters = T.
    """

    cache_version: ClassVar[int] = 1
    Params = PolynomialParams

    def build(self, optimizer: torch.optim.Optimizer, total_steps: int) -> torch.optim.lr_scheduler.LRScheduler:
        check_total("polynomial", total_steps)
        return torch.optim.lr_scheduler.PolynomialLR(optimizer, total_iters=total_steps, power=self.params.power)
