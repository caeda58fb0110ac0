"""Adam (Kingma & Ba 2015; survey §5.4, eq. (23))."""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Iterable

import torch
from pydantic import Field

from nnopt.core.component import Params
from nnopt.core.kinds import Optimizer

from .fused import build_fused_if_supported

Beta = Annotated[float, Field(ge=0.0, lt=1.0)]


class AdamParams(Params):
    lr: float = Field(1e-3, gt=0.0, description="learning rate α (scaled by the schedule)")
    betas: list[Beta] = Field(
        [0.9, 0.999], min_length=2, max_length=2,
        description="[β1, β2]: decay rates of the first and second moment averages, each in [0, 1)",
    )
    eps: float = Field(1e-8, gt=0.0, description="ε added to √v̂ in the denominator")
    weight_decay: float = Field(0.0, ge=0.0, description="L2 coefficient λ added to the gradient as λθ (not AdamW's decoupled decay)")
    amsgrad: bool = Field(False, description="AMSGrad (Reddi et al. 2018): divide by the running maximum of v̂")


class Adam(Optimizer):
    """Adam, "A method for stochastic optimization" (Kingma & Ba 2015; survey §5.4, ref. [107]).

    With g_t = ∇F_i(θ_t) + λθ_t and t = 1, 2, …:

        m_t = β1 m_{t−1} + (1−β1) g_t,          v_t = β2 v_{t−1} + (1−β2) g_t ∘ g_t,
        m̂_t = m_t / (1−β1^t),                   v̂_t = v_t / (1−β2^t),
        θ_{t+1} = θ_t − α_t m̂_t / (√v̂_t + ε).

    This is the survey's eq. (23) — RMSProp's eq. (22) combined with heavy-ball momentum —
    with the bias corrections and ε of the paper (eq. (23) of the survey prints β1 v_{t−1}
    where m_{t−1} is meant). The bias corrections make the first step
    θ_2 − θ_1 = −α g/(|g| + ε): about α in magnitude in every coordinate. ``amsgrad`` replaces
    v̂_t by max(v̂_1, …, v̂_t) (Reddi et al. 2018, the fix to Adam's convergence proof the
    survey discusses in §5.4).
    """

    cache_version: ClassVar[int] = 1
    Params = AdamParams

    def build(self, params: Iterable[Any], device: torch.device) -> torch.optim.Optimizer:
        options = self.params.model_dump()
        options["betas"] = tuple(options["betas"])  # written as a YAML list, torch takes a pair
        return build_fused_if_supported(torch.optim.Adam, params, device, fused_on=("cpu", "cuda"), **options)
