"""A constant learning rate (survey §5.1, "constant step-size α_t = α")."""

from __future__ import annotations

from typing import ClassVar

import torch

from nnopt.core.kinds import Schedule


def _one(step: int) -> float:
    return 1.0


class Constant(Schedule):
    """η_t = η₀ for every step t: the optimizer's own learning rate, never changed.

    The survey's simplest schedule (§5.1): constant step-size α_t = α "works reasonably well".
    Built as a ``LambdaLR`` with factor 1, so a training stage can step and checkpoint every
    schedule the same way.
    """

    cache_version: ClassVar[int] = 1

    def build(self, optimizer: torch.optim.Optimizer, total_steps: int) -> torch.optim.lr_scheduler.LRScheduler:
        return torch.optim.lr_scheduler.LambdaLR(optimizer, _one)
