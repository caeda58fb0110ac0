"""Layer-wise adaptive rate scaling for large batches: LARS and LAMB (survey §5, large batch)."""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Iterable

import torch
from pydantic import Field

from nnopt.core.component import Params
from nnopt.core.kinds import Optimizer

Beta = Annotated[float, Field(ge=0.0, lt=1.0)]


def split_1d(params: Iterable[Any], **options_1d: Any) -> list[dict[str, Any]]:
    """The param groups with every tensor of at most one dimension (biases, normalization
    scales and shifts) moved to a group of its own, which keeps its group's options and
    gets ``options_1d`` on top; a group left empty is dropped. Accepts tensors or groups."""
    params = list(params)
    groups = params if params and isinstance(params[0], dict) else [{"params": params}]
    out = []
    for group in groups:
        members = list(group["params"])
        big, small = [p for p in members if p.dim() > 1], [p for p in members if p.dim() <= 1]
        if big:
            out.append({**group, "params": big})
        if small:
            out.append({**group, "params": small, **options_1d})
    return out


class LARSParams(Params):
    lr: float = Field(0.1, gt=0.0, description="global learning rate γ (scaled by the schedule)")
    momentum: float = Field(0.9, ge=0.0, lt=1.0, description="momentum μ of the buffer of trust-scaled gradients")
    dampening: float = Field(0.0, ge=0.0, le=1.0, description="dampening τ: the scaled gradient enters the buffer times (1−τ)")
    nesterov: bool = Field(False, description="Nesterov momentum: step along u + μ·buffer instead of the buffer")
    weight_decay: float = Field(0.0, ge=0.0, description="weight decay β, added as βw inside the trust-scaled gradient")
    trust_coefficient: float = Field(0.001, gt=0.0, description="trust coefficient η of the layer-wise rate η‖w‖/(‖g‖ + β‖w‖)")


class LARS(Optimizer):
    """LARS, "Large batch training of convolutional networks" (You, Gitman & Ginsburg 2017),
    as pytorch_optimizer's ``LARS``.

    For each weight tensor w of more than one dimension, with gradient g:

        λ = η ‖w‖ / (‖g‖ + β‖w‖)    (λ = 1 where ‖w‖ = 0 or the denominator is 0),
        u = λ (g + β w),
        b ← μ b + (1−τ) u           (b starts at 0, so b_1 = u_1),
        w ← w − γ_t b               (Nesterov: w ← w − γ_t (u + μ b)).

    Tensors of at most one dimension (biases, BatchNorm/LayerNorm scales and shifts) take the
    same momentum step with λ = 1 and no weight decay: the library always excludes them (it
    has no option to include them, so neither has this component — You et al. exclude them
    too). Each layer's step is then a fixed fraction η of its weight norm, whatever the scale
    of its gradient, which is what lets large batches take a large global rate γ.
    """

    cache_version: ClassVar[int] = 1
    Params = LARSParams

    def build(self, params: Iterable[Any], device: torch.device) -> torch.optim.Optimizer:
        from pytorch_optimizer import LARS as _LARS

        return _LARS(list(params), **self.params.model_dump())


class LAMBParams(Params):
    lr: float = Field(1e-3, gt=0.0, description="learning rate η (scaled by the schedule)")
    betas: list[Beta] = Field([0.9, 0.999], min_length=2, max_length=2, description="[β1, β2] of the Adam moments")
    eps: float = Field(1e-6, gt=0.0, description="ε added to √v in the denominator and to ‖r‖ in the trust ratio")
    weight_decay: float = Field(0.0, ge=0.0, description="weight decay λ (on tensors of more than one dimension with exclude_1d)")
    decoupled_decay: bool = Field(
        False, description="false: λθ joins the update inside the trust ratio (the paper); true: θ ← θ(1−ηλ) first, "
        "AdamW-style, and the trust ratio sees the Adam update alone",
    )
    exclude_1d: bool = Field(
        True, description="give tensors of at most one dimension (biases, normalization parameters) trust ratio 1 "
        "and no weight decay, in a param group of their own",
    )


class LAMB(Optimizer):
    """LAMB, "Large batch optimization for deep learning: training BERT in 76 minutes"
    (You et al. 2019/2020), as pytorch_optimizer's ``Lamb`` (its defaults: no bias correction,
    no gradient pre-normalization).

    Per tensor θ with gradient g, at step t:

        m ← β1 m + (1−β1) g,        v ← β2 v + (1−β2) g²,
        r = m / (√v + ε) + λθ,
        φ = min(‖θ‖, 10),            trust = φ / (‖r‖ + ε)   (1 where φ = 0 or ‖r‖ = 0),
        θ ← θ − η_t / (1−β1^t) · trust · r.

    (The library corrects the first moment's bias through the step size, and not the second
    moment's; with the trust ratio a layer's step is about η_t ‖θ‖/(1−β1^t) either way.)

    With ``decoupled_decay`` the λθ term leaves r and θ ← θ(1 − η_t λ) comes first. With
    ``exclude_1d`` (default) tensors of at most one dimension are moved to a group of their
    own with trust = 1 (the library's per-group ``adam`` flag) and λ = 0: their step is
    Adam's, θ ← θ − η_t/(1−β1^t) · m/(√v + ε).
    """

    cache_version: ClassVar[int] = 1
    Params = LAMBParams

    def build(self, params: Iterable[Any], device: torch.device) -> torch.optim.Optimizer:
        from pytorch_optimizer import Lamb

        p = self.params
        groups = split_1d(params, adam=True, weight_decay=0.0) if p.exclude_1d else list(params)
        return Lamb(groups, lr=p.lr, betas=tuple(p.betas), eps=p.eps, weight_decay=p.weight_decay,
                    weight_decouple=p.decoupled_decay)
