"""Stochastic gradient descent with optional (Nesterov) momentum (survey §5.1, §5.3)."""

from __future__ import annotations

from typing import Any, ClassVar, Iterable

import torch
from pydantic import Field, model_validator

from nnopt.core.component import Params
from nnopt.core.kinds import Optimizer

from .fused import build_fused_if_supported


class SGDParams(Params):
    lr: float = Field(0.1, gt=0.0, description="learning rate η (scaled by the schedule)")
    momentum: float = Field(0.0, ge=0.0, lt=1.0, description="momentum coefficient μ; 0 is plain SGD")
    dampening: float = Field(0.0, ge=0.0, le=1.0, description="dampening τ: the gradient enters the buffer times (1−τ)")
    nesterov: bool = Field(False, description="Nesterov's momentum (needs momentum > 0 and dampening 0)")
    weight_decay: float = Field(0.0, ge=0.0, description="L2 coefficient λ added to the gradient as λθ")

    @model_validator(mode="after")
    def _nesterov_needs_momentum(self):
        if self.nesterov and (self.momentum <= 0 or self.dampening != 0):
            raise ValueError("nesterov needs momentum > 0 and dampening = 0")
        return self


class SGD(Optimizer):
    """SGD (survey §5.1) with heavy-ball or Nesterov momentum (survey §5.3), as torch.optim.SGD.

    With g_t = ∇F_i(θ_t) + λθ_t the mini-batch gradient plus weight decay:

    - plain SGD (μ = 0): θ_{t+1} = θ_t − η_t g_t;
    - heavy ball: b_t = μ b_{t−1} + (1−τ) g_t (and b_1 = g_1), θ_{t+1} = θ_t − η_t b_t;
    - Nesterov (Sutskever et al. 2013): the same buffer, θ_{t+1} = θ_t − η_t (g_t + μ b_t).

    The survey writes momentum as an average, m_t = β m_{t−1} + (1−β) g_t; that is τ = β
    here, and equals the default τ = 0 with the learning rate scaled by (1 − β).
    """

    cache_version: ClassVar[int] = 1
    Params = SGDParams

    def build(self, params: Iterable[Any], device: torch.device) -> torch.optim.Optimizer:
        # fused on CUDA only: on a CPU shared with other work the fused kernel was up to 2.5x
        # slower than torch's foreach update (benchmarks/train_overhead.py, note in the issue)
        return build_fused_if_supported(torch.optim.SGD, params, device, fused_on=("cuda",), **self.params.model_dump())
