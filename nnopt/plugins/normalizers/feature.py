"""Normalization layers placed after a hidden layer: Batch, Layer, Group and Instance norm (survey §4.3).

Each maps onto its ``torch.nn`` module. For features x ∈ R^{N×C(×spatial)} they compute
y = γ ⊙ (x − μ)/√(σ² + ε) + β with a learned per-channel scale γ and shift β (``affine``),
and differ only in the set over which the mean μ and variance σ² are taken.
"""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field
from torch import nn

from nnopt.core.component import Params
from nnopt.core.errors import StageError
from nnopt.core.kinds import Normalizer


class NormParams(Params):
    eps: float = Field(1e-5, gt=0.0, description="ε added to the variance before the square root")
    affine: bool = Field(True, description="learn the per-channel scale γ and shift β")


class BatchNormParams(NormParams):
    momentum: float = Field(0.1, gt=0.0, le=1.0, description="weight of the new batch in the running mean and variance")


class BatchNorm(Normalizer):
    """Batch normalization (Ioffe & Szegedy 2015; survey §4.3, ref. [92]).

    In training, μ and σ² are the mean and (biased) variance of each channel over the batch
    (and the spatial positions): μ_c = (1/m) Σ_i x_ic. The running estimates follow
    r ← (1 − momentum)·r + momentum·(batch statistic), using the unbiased batch variance, and
    replace the batch statistics at inference (``model.eval()``). ``torch.nn.BatchNorm{1,2,3}d``.
    """

    cache_version: ClassVar[int] = 1
    Params = BatchNormParams

    def feature_layer(self, num_features: int, spatial_dims: int = 0) -> nn.Module:
        p = self.params
        cls = {0: nn.BatchNorm1d, 1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}[spatial_dims]
        return cls(num_features, eps=p.eps, momentum=p.momentum, affine=p.affine)


class LayerNorm(Normalizer):
    """Layer normalization (Ba, Kiros & Hinton 2016; survey §4.3).

    μ and σ² are taken over all features of each example (every channel, and every spatial
    position for feature maps), so training and inference compute the same function and no
    batch statistics are kept. For feature maps this is ``nn.GroupNorm(1, C)``, which
    normalizes over (C, spatial) with a per-channel γ, β; for vectors ``nn.LayerNorm(C)``.
    """

    cache_version: ClassVar[int] = 1
    Params = NormParams

    def feature_layer(self, num_features: int, spatial_dims: int = 0) -> nn.Module:
        p = self.params
        if spatial_dims == 0:
            return nn.LayerNorm(num_features, eps=p.eps, elementwise_affine=p.affine)
        return nn.GroupNorm(1, num_features, eps=p.eps, affine=p.affine)


class GroupNormParams(NormParams):
    groups: int = Field(8, ge=1, description="number of channel groups G; C must be divisible by G")


class GroupNorm(Normalizer):
    """Group normalization (Wu & He 2018; survey §4.3).

    The C channels are split into G groups of C/G; μ and σ² are taken over each group (and the
    spatial positions) of each example. G = 1 is layer normalization over (C, spatial);
    G = C is instance normalization. ``torch.nn.GroupNorm``.
    """

    cache_version: ClassVar[int] = 1
    Params = GroupNormParams

    def feature_layer(self, num_features: int, spatial_dims: int = 0) -> nn.Module:
        p = self.params
        if num_features % p.groups:
            raise StageError(f"group_norm: {num_features} channels cannot be split into {p.groups} groups "
                             f"(choose groups dividing every layer's width)")
        return nn.GroupNorm(p.groups, num_features, eps=p.eps, affine=p.affine)


class InstanceNorm(Normalizer):
    """Instance normalization (Ulyanov, Vedaldi & Lempitsky 2016; survey §4.3).

    μ and σ² are taken over the spatial positions of each channel of each example, so it
    needs feature maps: a fully connected layer has one value per channel, whose "instance
    variance" is zero. ``torch.nn.InstanceNorm{1,2,3}d`` (without running statistics).
    """

    cache_version: ClassVar[int] = 1
    Params = NormParams

    def feature_layer(self, num_features: int, spatial_dims: int = 0) -> nn.Module:
        p = self.params
        if spatial_dims == 0:
            raise StageError("instance_norm normalizes over spatial positions, and this layer has none "
                             "(use it in a convolutional architecture, or layer_norm / batch_norm here)")
        cls = {1: nn.InstanceNorm1d, 2: nn.InstanceNorm2d, 3: nn.InstanceNorm3d}[spatial_dims]
        return cls(num_features, eps=p.eps, affine=p.affine)
