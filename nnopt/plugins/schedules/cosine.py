"""Cosine learning-rate decay (Loshchilov & Hutter 2017, SGDR without restarts; survey §5.1)."""

from __future__ import annotations

import math
from typing import ClassVar

import torch
from pydantic import Field

from nnopt.core.component import Params
from nnopt.core.kinds import Schedule


class CosineParams(Params):
    min_lr_fraction: float = Field(
        0.0, ge=0.0, le=1.0, description="η_min as a fraction of each param group's initial lr η₀"
    )


class _CosineFactor:
    """η_t / η₀ (a callable object, so ``LambdaLR.state_dict`` keeps it for resuming)."""

    def __init__(self, total_steps: int, min_fraction: float):
        self.total_steps = total_steps
        self.min_fraction = min_fraction

    def __call__(self, step: int) -> float:
        t = min(step, self.total_steps)
        return self.min_fraction + 0.5 * (1.0 - self.min_fraction) * (1.0 + math.cos(math.pi * t / self.total_steps))


class Cosine(Schedule):
    """η_t = η_min + ½(η₀ − η_min)(1 + cos(π t / T)), T = total_steps, η_min = fraction·η₀.

    One cosine half-period from η₀ at t = 0 to η_min at t = T (Loshchilov & Hutter 2017,
    "SGDR", without warm restarts; the survey's §5.1 discusses it among cyclical schedules,
    ref. [132]). Stepped once per optimizer step; η_t stays at η_min after T. Each param group
    decays from its own η₀. Computed in closed form at every step (a ``LambdaLR``), so no
    rounding accumulates over long runs.
    """

    cache_version: ClassVar[int] = 1
    Params = CosineParams

    def build(self, optimizer: torch.optim.Optimizer, total_steps: int) -> torch.optim.lr_scheduler.LRScheduler:
        if total_steps < 1:
            raise ValueError(f"cosine schedule needs total_steps >= 1, got {total_steps}")
        return torch.optim.lr_scheduler.LambdaLR(optimizer, _CosineFactor(total_steps, self.params.min_lr_fraction))
