"""Schedule-free SGD and AdamW (Defazio et al. 2024), from the ``schedulefree`` package."""

from __future__ import annotations

import contextlib
from typing import Any, ClassVar, Iterable, Iterator, Literal

import torch
from pydantic import Field, model_validator

from nnopt.core.component import Params
from nnopt.core.kinds import Optimizer
from nnopt.core.loop import LoopCallback

_DEFAULT_LR = {"sgd": 1.0, "adamw": 0.0025}


class ScheduleFreeParams(Params):
    base: Literal["sgd", "adamw"] = Field("sgd", description="the base method: SGDScheduleFree or AdamWScheduleFree")
    lr: float = Field(None, gt=0.0, description="learning rate γ (default: 1.0 for sgd, 0.0025 for adamw, the package's)")  # type: ignore[assignment]
    momentum: float = Field(0.9, gt=0.0, lt=1.0, description="β: y interpolates x and z as y = (1−β) z + β x (adamw: its β1)")
    beta2: float = Field(0.999, ge=0.0, lt=1.0, description="adamw's second-moment rate β2 (adamw only)")
    eps: float = Field(1e-8, gt=0.0, description="adamw's ε (adamw only)")
    weight_decay: float = Field(0.0, ge=0.0, description="L2 coefficient λ, applied at y")
    warmup_steps: int = Field(0, ge=0, description="linear warmup of γ over this many steps (the package's own; no schedule needed)")
    r: float = Field(0.0, ge=0.0, description="polynomial weighting power of the average: c_t ∝ t^r")
    weight_lr_power: float = Field(2.0, ge=0.0, description="the average's weights scale as γ_max^power (matters during warmup)")

    @model_validator(mode="before")
    @classmethod
    def _base_defaults(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("lr") is None:
            data = {**data, "lr": _DEFAULT_LR.get(data.get("base", "sgd"), 1.0)}
        return data

    @model_validator(mode="after")
    def _options_of_the_base(self):
        if self.base == "sgd" and (self.beta2 != 0.999 or self.eps != 1e-8):
            raise ValueError("beta2 and eps are adamw's; leave them out with base sgd")
        return self


class ScheduleFreeSwap(LoopCallback):
    """Training steps run at y (``optimizer.train()``); every use of the weights as the result
    (evaluations, kept and final weights) sees x (``optimizer.eval()``), then y is back."""

    def __init__(self, optimizer: Any):
        self.optimizer = optimizer

    def on_train_start(self, loop: Any) -> None:
        self.optimizer.train()

    def evaluate_context(self, loop: Any) -> Any:
        return self._at_x()

    @contextlib.contextmanager
    def _at_x(self) -> Iterator[None]:
        training = bool(self.optimizer.param_groups[0]["train_mode"])
        self.optimizer.eval()
        try:
            yield
        finally:
            if training:
                self.optimizer.train()


class ScheduleFree(Optimizer):
    """Schedule-free optimization, "The road less scheduled" (Defazio et al. 2024), as the
    ``schedulefree`` package's SGDScheduleFree and AdamWScheduleFree. Three sequences:

        y_t = (1−β) z_t + β x_t                     (where the gradient is taken),
        z_{t+1} = z_t − γ ∇f(y_t)                   (adamw: the Adam-preconditioned step),
        x_{t+1} = (1 − c_{t+1}) x_t + c_{t+1} z_{t+1},   c_{t+1} = w_{t+1} / Σ_{i≤t+1} w_i,

    with w_t = t^r γ_max^{weight_lr_power} (r = 0, no warmup: c_{t+1} = 1/(t+1), x is the
    running mean of the z's). There is no schedule to set, nor a training length to know:
    leave ``schedule`` at ``constant`` (a schedule would scale γ on top).

    The model holds y while training; evaluations, kept weights and the saved final weights
    are x (the loop's ``evaluate_context`` calls ``optimizer.eval()``, and ``train()`` after).
    Checkpoints hold y and z (the optimizer's state), so a resumed run continues bitwise.

    BatchNorm caveat (the package's documentation): running statistics are collected at y,
    not at x; with BatchNorm the evaluated x should have its statistics recomputed by a few
    training-mode forward passes at x, which this component does not do — evaluations of a
    BatchNorm network then use the statistics of y.
    """

    cache_version: ClassVar[int] = 1
    Params = ScheduleFreeParams

    def build(self, params: Iterable[Any], device: torch.device) -> torch.optim.Optimizer:
        import schedulefree

        p = self.params
        common = {"lr": p.lr, "weight_decay": p.weight_decay, "warmup_steps": p.warmup_steps, "r": p.r,
                  "weight_lr_power": p.weight_lr_power}
        if p.base == "sgd":
            return schedulefree.SGDScheduleFree(list(params), momentum=p.momentum, **common)
        return schedulefree.AdamWScheduleFree(list(params), betas=(p.momentum, p.beta2), eps=p.eps, **common)

    def callbacks(self, optimizer: Any, model: Any) -> list[LoopCallback]:
        return [ScheduleFreeSwap(optimizer)]
