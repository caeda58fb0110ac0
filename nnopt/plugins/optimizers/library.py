"""Lion, Shampoo and SOAP, as pytorch_optimizer implements them (survey §5: adaptive and
second-order methods)."""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Iterable

import torch
from pydantic import Field

from nnopt.core.component import Params
from nnopt.core.kinds import Optimizer

Beta = Annotated[float, Field(ge=0.0, lt=1.0)]


class LionParams(Params):
    lr: float = Field(1e-4, gt=0.0, description="learning rate η (scaled by the schedule); typically 3-10x below AdamW's")
    betas: list[Beta] = Field([0.9, 0.99], min_length=2, max_length=2,
                              description="[β1, β2]: β1 interpolates the update's sign argument, β2 the momentum")
    weight_decay: float = Field(0.0, ge=0.0, description="decoupled weight decay λ: θ ← θ(1 − ηλ) before the sign step")


class Lion(Optimizer):
    """Lion, "Symbolic discovery of optimization algorithms" (Chen et al. 2023), as
    pytorch_optimizer's ``Lion``:

        c = β1 m + (1−β1) g,
        θ ← θ(1 − η_t λ) − η_t sign(c),
        m ← β2 m + (1−β2) g          (m starts at 0).

    Every coordinate moves by exactly η_t (or 0): the update has the norm of a sign vector,
    whatever the gradient's scale.
    """

    cache_version: ClassVar[int] = 1
    Params = LionParams

    def build(self, params: Iterable[Any], device: torch.device) -> torch.optim.Optimizer:
        from pytorch_optimizer import Lion as _Lion

        p = self.params
        return _Lion(list(params), lr=p.lr, betas=tuple(p.betas), weight_decay=p.weight_decay, weight_decouple=True)


class ShampooParams(Params):
    lr: float = Field(1e-3, gt=0.0, description="learning rate η (scaled by the schedule)")
    momentum: float = Field(0.0, ge=0.0, lt=1.0, description="the library's momentum: g ← (1−μ) g + μ·(last preconditioned step)")
    weight_decay: float = Field(0.0, ge=0.0, description="L2 coefficient λ added to the gradient as λθ")
    preconditioning_compute_steps: int = Field(1, ge=1, description="recompute the inverse roots every this many steps")
    matrix_eps: float = Field(1e-6, gt=0.0, description="ε: each statistic starts at εI")


class Shampoo(Optimizer):
    """Shampoo, "Preconditioned stochastic tensor optimization" (Gupta, Koren & Singer 2018),
    as pytorch_optimizer's ``Shampoo``. For a weight matrix G = ∇_W (order k = 2):

        L ← L + G Gᵀ,   R ← R + Gᵀ G        (L₀ = εI, R₀ = εI),
        W ← W − η_t L^{−1/4} G R^{−1/4};

    a tensor of order k gets one statistic per dimension and roots −1/(2k) (a vector:
    W ← W − η (εI + Σ g gᵀ)^{−1/2} g, full-matrix AdaGrad). The inverse roots come from an
    SVD every ``preconditioning_compute_steps`` steps. Memory is Σ_i d_i² per tensor: fine
    for the small layers nnopt trains, not for a 4096-wide embedding.
    """

    cache_version: ClassVar[int] = 1
    Params = ShampooParams

    def build(self, params: Iterable[Any], device: torch.device) -> torch.optim.Optimizer:
        from pytorch_optimizer import Shampoo as _Shampoo

        return _Shampoo(list(params), **self.params.model_dump())


class SOAPParams(Params):
    lr: float = Field(3e-3, gt=0.0, description="learning rate η (scaled by the schedule)")
    betas: list[Beta] = Field([0.95, 0.95], min_length=2, max_length=2, description="[β1, β2] of Adam in the eigenbasis")
    shampoo_beta: Beta | None = Field(None, description="EMA rate of the Shampoo statistics L, R (None: β2)")
    eps: float = Field(1e-8, gt=0.0, description="ε added to √v")
    weight_decay: float = Field(0.01, ge=0.0, description="decoupled weight decay λ: θ ← θ − ηλθ after the step")
    precondition_frequency: int = Field(10, ge=1, description="steps between eigenbasis updates (one QR power iteration)")
    max_precondition_dim: int = Field(10000, ge=1, description="dimensions larger than this are not rotated")
    precondition_1d: bool = Field(False, description="rotate vectors too (default: Adam on biases and norm parameters)")
    correct_bias: bool = Field(True, description="Adam's bias corrections √(1−β2^t)/(1−β1^t)")


class SOAP(Optimizer):
    """SOAP, "Improving and stabilizing Shampoo using Adam" (Vyas et al. 2024), as
    pytorch_optimizer's ``SOAP``: Adam run in the eigenbasis of Shampoo's preconditioner.

    For a weight matrix with gradient G: the statistics L ← β_s L + (1−β_s) G Gᵀ and
    R ← β_s R + (1−β_s) Gᵀ G have eigenbases Q_L, Q_R (from ``eigh`` at the first step, then
    refreshed by one QR power iteration every ``precondition_frequency`` steps). With
    G' = Q_Lᵀ G Q_R, and step t ≥ 2 (the first step only initializes L, R and the bases):

        m ← β1 m + (1−β1) G,         v ← β2 v + (1−β2) G'²,
        W ← W − η_t √(1−β2^{t−1})/(1−β1^{t−1}) · Q_L [ (Q_Lᵀ m Q_R) / (√v + ε) ] Q_Rᵀ,
        W ← W − η_t λ W.

    Vectors run plain Adam unless ``precondition_1d``.
    """

    cache_version: ClassVar[int] = 1
    Params = SOAPParams

    def build(self, params: Iterable[Any], device: torch.device) -> torch.optim.Optimizer:
        from pytorch_optimizer import SOAP as _SOAP

        options = self.params.model_dump()
        options["betas"] = tuple(options["betas"])
        return _SOAP(list(params), **options)
