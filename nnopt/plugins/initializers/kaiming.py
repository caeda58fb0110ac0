"""Kaiming (He) initialization, normal and uniform (survey §4.2, eq. (17))."""

from __future__ import annotations

import math
from typing import ClassVar, Literal

import torch
from pydantic import Field

from nnopt.core.component import Params
from nnopt.core.kinds import Activation

from ._common import (
    BiasMode, Nonlinearity, WeightInitializer, bias_field, empty_for, fans, negative_slope_field, nonlinearity_field,
    resolve_gain,
)


class KaimingNormalParams(Params):
    mode: Literal["fan_in", "fan_out"] = Field(
        "fan_in", description="fan_in preserves forward signal variance, fan_out the backward one"
    )
    nonlinearity: Nonlinearity = nonlinearity_field("auto", "relu's √2")
    negative_slope: float = negative_slope_field()
    bias: BiasMode = bias_field()


class KaimingNormal(WeightInitializer):
    """He et al. 2015, "Delving deep into rectifiers" (survey §4.2, eq. (17), ref. [87]).

    Every weight W^l of a Linear or Conv layer is drawn i.i.d. W^l_ij ~ N(0, gain² / fan),
    fan = d_{l−1} (fan_in, times the kernel size for convolutions) or d_l (fan_out). With
    gain = √2 for ReLU this is var(W^l_ij) = 2/d_in: a ReLU zeroes half of a symmetric
    pre-activation, and the factor 2 restores the variance that the 1/fan of LeCun's eq. (15)
    would lose at each layer. Biases are zeroed (``bias: zero``) or left as built.

    The gain follows the architecture's activation (``nonlinearity: auto``, the default):
    √2 under ReLU, 5/3 under tanh (``torch.nn.init.calculate_gain``), and for activations
    torch has no gain for (GELU, ELU, softplus, ...) the variance-preserving
    g = (E_{z∼N(0,1)} φ(z)²)^{−1/2}. An architecture that reports no single activation gets
    ReLU's √2. Naming ``nonlinearity`` forces that gain whatever the activation.

    Randomness comes only from the given generator. Weights are drawn on the generator's
    device and copied to the layer's device, so a seed gives the same weights on any device.
    A layer whose weight is reparametrized (weight / spectral normalization) is assigned the
    drawn matrix through its parametrization's ``right_inverse``.
    """

    cache_version: ClassVar[int] = 2
    Params = KaimingNormalParams

    def gain(self, activation: Activation | None) -> float:
        """The gain this initializer uses with ``activation`` (see the class docstring)."""
        p = self.params
        return resolve_gain(p.nonlinearity, p.negative_slope, activation, unknown=math.sqrt(2.0))

    def std(self, weight: torch.Tensor, gain: float) -> float:
        fan_in, fan_out = fans(weight.shape)
        return gain / math.sqrt(fan_in if self.params.mode == "fan_in" else fan_out)

    def draw(self, weight: torch.Tensor, generator: torch.Generator, gain: float) -> torch.Tensor:
        return empty_for(weight, generator).normal_(0.0, self.std(weight, gain), generator=generator)


class KaimingUniform(KaimingNormal):
    """He et al. 2015 (survey §4.2, eq. (17), ref. [87]), uniform with the same variance.

    W^l_ij ~ U(−b, b) with b = gain·√(3 / fan), so var(W^l_ij) = b²/3 = gain²/fan exactly as
    ``kaiming_normal`` (whose docstring explains fan, mode, the gain and its ``auto`` default
    of the architecture's activation, √2 when unknown, and ``bias``).
    """

    cache_version: ClassVar[int] = 1
    Params = KaimingNormalParams

    def draw(self, weight: torch.Tensor, generator: torch.Generator, gain: float) -> torch.Tensor:
        bound = math.sqrt(3.0) * self.std(weight, gain)
        return empty_for(weight, generator).uniform_(-bound, bound, generator=generator)
