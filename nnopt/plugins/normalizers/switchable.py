"""Switchable normalization: a learned mixture of instance, layer and batch statistics (survey §4.3, ref. [136]).

Luo, Ren, Peng, Zhang & Li, "Differentiable learning-to-normalize via switchable
normalization" (ICLR 2019). torch has no module for it, so ``SwitchableNorm`` is written
here from the paper's equation.
"""

from __future__ import annotations

from typing import ClassVar, Literal

import torch
from pydantic import Field, field_validator
from torch import nn

from nnopt.core.component import Params
from nnopt.core.errors import StageError
from nnopt.core.kinds import Normalizer

Statistic = Literal["in", "ln", "bn"]
ORDER: tuple[str, ...] = ("in", "ln", "bn")  # the fixed order of the logits λ_k, λ'_k


class SwitchableNorm(nn.Module):
    """y = γ ⊙ (x − Σ_k w_k μ_k) / √(Σ_k w'_k σ²_k + ε) + β,  w = softmax(λ), w' = softmax(λ').

    For x of shape (N, C, *spatial) (``spatial_dims`` = len(spatial), 0 for vectors (N, C)),
    each k ∈ ``using`` ⊆ {in, ln, bn} is a set the (biased) mean μ_k and variance σ²_k are
    taken over:

    - ``in`` (instance): the spatial positions of each channel of each example — (N, C) values;
    - ``ln`` (layer): every channel and position of each example — N values;
    - ``bn`` (batch): every example and position of each channel — C values. In training these
      are the batch's, and running estimates follow r ← (1 − momentum)·r + momentum·(batch
      statistic) with the unbiased batch variance, as in ``nn.BatchNorm``; in eval
      (``model.eval()``) the running estimates replace them. ``in`` and ``ln`` are per-example,
      the same in training and eval.

    λ (``mean_logits``) and λ' (``var_logits``) are learned, one entry per statistic in the
    order in, ln, bn, and start at 0 (uniform weights; the paper's code starts them equal
    too). γ (``weight``) and β (``bias``) are per channel, starting at 1 and 0 (``affine``).
    With λ and λ' one-hot-like (one logit much larger than the others) the layer is
    ``nn.InstanceNorm``, ``nn.GroupNorm(1, C)`` (layer norm with a per-channel γ, β) or
    ``nn.BatchNorm`` exactly.

    Statistics are computed directly over their sets (the paper derives LN's and BN's from
    IN's to save work; the direct form is the same function and avoids the cancellation of
    E[x²] − μ²).
    """

    # lets the `norm` parameter-group selector find γ, β, λ, λ' (stages/param_groups.py)
    is_normalization: ClassVar[bool] = True

    def __init__(self, num_features: int, spatial_dims: int = 0, using: tuple[str, ...] = ORDER,
                 eps: float = 1e-5, momentum: float = 0.1, affine: bool = True):
        super().__init__()
        if not using or len(set(using)) != len(using) or not set(using) <= set(ORDER):
            raise ValueError(f"using must be distinct statistics among {ORDER}, got {using!r}")
        if spatial_dims == 0 and "in" in using:
            raise ValueError("instance statistics need spatial positions (spatial_dims >= 1)")
        self.num_features, self.spatial_dims = num_features, spatial_dims
        self.using = tuple(k for k in ORDER if k in using)
        self.eps, self.momentum = eps, momentum
        self.mean_logits = nn.Parameter(torch.zeros(len(self.using)))
        self.var_logits = nn.Parameter(torch.zeros(len(self.using)))
        if affine:
            self.weight = nn.Parameter(torch.ones(num_features))
            self.bias = nn.Parameter(torch.zeros(num_features))
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)
        if "bn" in self.using:
            self.register_buffer("running_mean", torch.zeros(num_features))
            self.register_buffer("running_var", torch.ones(num_features))

    def extra_repr(self) -> str:
        return (f"{self.num_features}, spatial_dims={self.spatial_dims}, using={list(self.using)}, "
                f"eps={self.eps}, momentum={self.momentum}, affine={self.weight is not None}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 2 + self.spatial_dims or x.shape[1] != self.num_features:
            raise ValueError(f"SwitchableNorm({self.num_features}, spatial_dims={self.spatial_dims}) expects input "
                             f"(N, {self.num_features}{', ...' * self.spatial_dims}), got {tuple(x.shape)}")
        spatial = tuple(range(2, x.dim()))
        channel_shape = (1, -1) + (1,) * self.spatial_dims
        means, variances = [], []
        for k in self.using:
            if k == "in":
                var, mean = torch.var_mean(x, dim=spatial, keepdim=True, unbiased=False)
            elif k == "ln":
                var, mean = torch.var_mean(x, dim=(1, *spatial), keepdim=True, unbiased=False)
            elif self.training:
                var, mean = torch.var_mean(x, dim=(0, *spatial), keepdim=True, unbiased=False)
                self._update_running(mean, var, count=x.numel() // self.num_features)
            else:
                mean, var = self.running_mean.view(channel_shape), self.running_var.view(channel_shape)
            means.append(mean)
            variances.append(var)
        w_mean = torch.softmax(self.mean_logits, 0)
        w_var = torch.softmax(self.var_logits, 0)
        # broadcasting (N,C,1..), (N,1,1..) and (1,C,1..) gives the (N,C,1..) mixture
        mean = sum(w * m for w, m in zip(w_mean, means))
        var = sum(w * v for w, v in zip(w_var, variances))
        y = (x - mean) / torch.sqrt(var + self.eps)
        if self.weight is not None:
            y = y * self.weight.view(channel_shape) + self.bias.view(channel_shape)
        return y

    @torch.no_grad()
    def _update_running(self, mean: torch.Tensor, var: torch.Tensor, count: int) -> None:
        if count <= 1:
            # the unbiased variance of one value is undefined; nn.BatchNorm refuses the same way
            raise ValueError(f"Expected more than 1 value per channel when training, got input with {count} per channel "
                             "(switchable normalization's batch statistics need a batch)")
        m = self.momentum
        self.running_mean.mul_(1 - m).add_(m * mean.flatten())
        self.running_var.mul_(1 - m).add_(m * var.flatten() * (count / (count - 1)))


class SwitchableParams(Params):
    eps: float = Field(1e-5, gt=0.0, description="ε added to the mixed variance before the square root")
    momentum: float = Field(0.1, gt=0.0, le=1.0, description="weight of the new batch in the running BN mean and variance")
    affine: bool = Field(True, description="learn the per-channel scale γ and shift β")
    using: list[Statistic] | None = Field(
        None, description="the statistics mixed, a subset of [in, ln, bn]; default (null): all that apply — "
        "in, ln, bn for feature maps, ln, bn for vectors (instance statistics need spatial positions)"
    )

    @field_validator("using")
    @classmethod
    def _distinct(cls, value: list[str] | None) -> list[str] | None:
        if value is not None:
            if not value:
                raise ValueError("name at least one of in, ln, bn (or leave `using` out for all that apply)")
            if len(set(value)) != len(value):
                raise ValueError(f"each statistic at most once, got {value}")
        return value


class Switchable(Normalizer):
    """Switchable normalization (Luo et al. 2019; survey §4.3, ref. [136]).

    y = γ (x − Σ_k w_k μ_k)/√(Σ_k w'_k σ²_k + ε) + β over k ∈ {IN, LN, BN}, with learned
    importance weights w = softmax(λ), w' = softmax(λ') (see ``SwitchableNorm`` for the sets
    each μ_k, σ²_k is taken over, and the running BN statistics used in eval). Each layer
    learns its own mixture, so the network chooses per layer between batch statistics and the
    batch-independent per-example ones.

    For vectors (after a fully connected layer, ``spatial_dims`` = 0) instance statistics are
    undefined — one value per channel has zero "instance variance" — so the default mixes
    only {LN, BN} there; naming ``in`` in ``using`` for such a layer is an error, as for
    ``instance_norm``. Feature maps (``spatial_dims`` ≥ 1) mix all three by default.
    """

    cache_version: ClassVar[int] = 1
    Params = SwitchableParams

    def feature_layer(self, num_features: int, spatial_dims: int = 0) -> nn.Module:
        p = self.params
        using = tuple(p.using) if p.using is not None else ORDER if spatial_dims else ("ln", "bn")
        if spatial_dims == 0 and "in" in using:
            raise StageError("switchable: `using` names in (instance statistics), and this layer has no spatial positions "
                             "(drop in from `using`, or leave `using` out: vectors mix ln and bn)")
        return SwitchableNorm(num_features, spatial_dims, using, eps=p.eps, momentum=p.momentum, affine=p.affine)


__all__ = ["Switchable", "SwitchableNorm", "SwitchableParams"]
