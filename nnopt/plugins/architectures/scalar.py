"""One scalar weight whose squared output is linear in it: online linear losses as a model."""

from __future__ import annotations

from typing import ClassVar

import torch
from pydantic import Field
from torch import nn

from nnopt.core.component import Params
from nnopt.core.errors import StageError
from nnopt.core.kinds import Architecture, Normalizer


class ScalarParams(Params):
    init: float = Field(0.0, description="x_0, the weight's starting value (an initializer may redraw it)")
    offset: float = Field(
        10.0, gt=0.0, description="K > 0, kept above |a·x| so that the root is real: K > max|a|·max|x| over the run"
    )


class _Root(nn.Module):
    def __init__(self, init: float, offset: float):
        super().__init__()
        self.x = nn.Parameter(torch.tensor([float(init)]))
        self.offset = offset

    def forward(self, a: torch.Tensor) -> torch.Tensor:
        return torch.sqrt(a.flatten(1) * self.x + self.offset)


class Scalar(Architecture):
    """f_x(a) = √(a·x + K): a single weight x (parameter ``x``, shape (1,)), and an output
    whose square is linear in it.

    Under the squared loss against target 0 (``mse``), ℓ = f_x(a)² = a·x + K: the linear
    loss of online convex optimization, with gradient ∂ℓ/∂x = a exactly, so with the
    ``online`` dataset an optimizer sees exactly Reddi et al. (2018)'s gradient sequence.
    K only shifts the loss; it must exceed |a·x| wherever x goes (a projection such as the
    train stage's ``project: {min: -1, max: 1}`` keeps x where K's bound holds). A negative
    radicand gives NaN, which the train stage reports as a divergence. Inputs of one feature.
    """

    cache_version: ClassVar[int] = 1
    Params = ScalarParams

    def build(self, input_shape: tuple[int, ...], output_dim: int, normalizer: Normalizer) -> nn.Module:
        if tuple(input_shape) != (1,) or output_dim != 1:
            raise StageError(f"scalar takes inputs of one feature and one output, the data have {input_shape} → {output_dim}")
        return _Root(self.params.init, self.params.offset)
