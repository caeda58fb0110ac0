"""Reduce the learning rate when a loss stops improving (survey §5.1: "divide by a constant when stuck")."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import torch
from pydantic import Field

from nnopt.core.component import Params
from nnopt.core.kinds import Schedule
from nnopt.core.loop import LoopCallback


class PlateauParams(Params):
    metric: Literal["test_loss", "train_loss"] = Field(
        "test_loss",
        description="what is watched: the test loss at each evaluation (`eval_every`), or the mean train loss of "
        "each logged window (`log_every`)",
    )
    gamma: float = Field(10.0, gt=1.0, description="γ: the divisor applied to the rate at each plateau")
    patience: int = Field(
        5, ge=1, description="how many consecutive readings without improvement make a plateau (the rate drops at "
        "the patience-th one)"
    )
    threshold: float = Field(
        1e-4, ge=0.0, description="the least improvement that counts: a reading improves if it is below "
        "best·(1 − threshold) (`rel`) or best − threshold (`abs`)"
    )
    threshold_mode: Literal["rel", "abs"] = Field("rel", description="whether `threshold` is relative or absolute")
    cooldown: int = Field(0, ge=0, description="readings ignored after each reduction before counting resumes")
    min_lr: float = Field(0.0, ge=0.0, description="no param group's rate is reduced below this")


class PlateauScheduler:
    """What ``Plateau.build`` returns: the loop's per-step ``step()`` does nothing, the
    watching callback drives ``plateau`` (torch's ``ReduceLROnPlateau``), and the state the
    loop checkpoints is that scheduler's (best reading, count of bad readings, cooldown)."""

    def __init__(self, plateau: torch.optim.lr_scheduler.ReduceLROnPlateau):
        self.plateau = plateau
        self.optimizer = plateau.optimizer

    def step(self) -> None:
        """The per-step call of the training loop: a plateau is only seen at a reading."""

    def observe(self, value: float) -> None:
        self.plateau.step(value)

    def get_last_lr(self) -> list[float]:
        return [float(g["lr"]) for g in self.optimizer.param_groups]

    def state_dict(self) -> dict[str, Any]:
        return self.plateau.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.plateau.load_state_dict(state)


class PlateauWatch(LoopCallback):
    """Hands each reading of the watched loss to the plateau scheduler (``on_evaluate`` for
    the test loss, ``on_log`` for the train-loss window). Keeps no state of its own: all of it
    is in the scheduler, which the loop checkpoints."""

    def __init__(self, scheduler: PlateauScheduler, metric: str):
        self.scheduler, self.metric = scheduler, metric

    def on_evaluate(self, loop: Any, metrics: dict[str, float]) -> None:
        if self.metric == "test_loss":
            self.scheduler.observe(metrics["loss"])

    def on_log(self, loop: Any, record: dict[str, Any]) -> None:
        if self.metric == "train_loss":
            self.scheduler.observe(record["loss"])


class Plateau(Schedule):
    """η ← max(η/γ, min_lr) whenever the watched loss has not improved for ``patience`` readings.

    "Divide by a constant when stuck" (survey §5.1), as ``torch.optim.lr_scheduler.ReduceLROnPlateau``
    implements it. A reading r improves on the best so far b if r < b·(1 − threshold) (rel) or
    r < b − threshold (abs); the ``patience``-th consecutive reading that does not improve
    divides every group's rate by γ and resets the count, and the next ``cooldown`` readings
    are not counted. Readings are the test loss at each evaluation (``metric: test_loss``,
    every ``eval_every`` steps of the train stage) or the mean train loss of each logged window
    (``train_loss``, every ``log_every`` steps); the rate is constant between readings, so the
    per-step ``step()`` does nothing and the callback from ``callbacks`` makes the updates.
    (``patience`` here counts the readings that trigger the drop; torch's counts the ones
    tolerated before it, one fewer.) Its state (best, count, cooldown) resumes with the
    scheduler's ``state_dict``.
    """

    cache_version: ClassVar[int] = 1
    Params = PlateauParams

    def build(self, optimizer: torch.optim.Optimizer, total_steps: int) -> PlateauScheduler:
        p = self.params
        plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode="min", factor=1.0 / p.gamma, patience=p.patience - 1, threshold=p.threshold,
            threshold_mode=p.threshold_mode, cooldown=p.cooldown, min_lr=p.min_lr,
        )
        return PlateauScheduler(plateau)

    def callbacks(self, scheduler: Any) -> list[LoopCallback]:
        return [PlateauWatch(scheduler, self.params.metric)]
