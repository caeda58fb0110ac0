"""Constant initializers: zeros and a given value (survey §4.2, "naive initialization")."""

from __future__ import annotations

from typing import ClassVar

import torch
from pydantic import Field

from nnopt.core.component import Params

from ._common import BiasMode, WeightInitializer, bias_field


class ZerosParams(Params):
    bias: BiasMode = bias_field()


class Zeros(WeightInitializer):
    """All-zero weights, W_ij = 0 (survey §4.2, "naive initialization").

    The all-zero point is a saddle for a network with hidden layers: every unit of a layer
    gets the same (there zero) gradient, so symmetry is never broken; it is a baseline, and
    sensible for a final layer or a linear model. Sets every Linear/Conv weight; ``bias:
    zero`` zeroes biases, ``keep`` leaves them as built. Uses no randomness. A
    weight-normalized layer (w = g·v/‖v‖) cannot represent w = 0 (v = 0 gives NaN).
    """

    cache_version: ClassVar[int] = 1
    Params = ZerosParams

    def draw(self, weight: torch.Tensor, generator: torch.Generator, gain: float) -> torch.Tensor:
        return torch.zeros_like(weight)


class ConstantParams(Params):
    value: float = Field(description="the value every weight is set to")
    bias: BiasMode = bias_field()


class Constant(WeightInitializer):
    """Every weight set to one value, W_ij = value (survey §4.2, "naive initialization").

    Like zeros, a constant never breaks the symmetry between the units of a layer; a
    baseline. Sets every Linear/Conv weight; ``bias: zero`` zeroes biases, ``keep`` leaves
    them as built. Uses no randomness.
    """

    cache_version: ClassVar[int] = 1
    Params = ConstantParams

    def draw(self, weight: torch.Tensor, generator: torch.Generator, gain: float) -> torch.Tensor:
        return torch.full_like(weight, self.params.value)
