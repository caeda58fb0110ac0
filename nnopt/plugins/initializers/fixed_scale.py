"""Fixed-scale random initializers: normal, uniform, sparse (survey §4.2, "naive initialization")."""

from __future__ import annotations

import math
from typing import ClassVar

import torch
from pydantic import Field

from nnopt.core.component import Params

from ._common import BiasMode, WeightInitializer, bias_field, empty_for


class NormalParams(Params):
    std: float = Field(0.01, gt=0.0, description="standard deviation σ of W_ij ~ N(0, σ²)")
    bias: BiasMode = bias_field()


class Normal(WeightInitializer):
    """W_ij ~ N(0, std²) i.i.d., whatever the layer's size (survey §4.2, "naive initialization").

    A scale independent of the fans: the signal's variance is multiplied by about
    fan_in·std² at each layer, which is why the fan-based schemes (LeCun, eq. (15); Xavier,
    eq. (16); Kaiming, eq. (17)) replaced it. Sets every Linear/Conv weight; ``bias: zero``
    zeroes biases, ``keep`` leaves them as built. Randomness only from the generator.
    """

    cache_version: ClassVar[int] = 1
    Params = NormalParams

    def draw(self, weight: torch.Tensor, generator: torch.Generator, gain: float) -> torch.Tensor:
        return empty_for(weight, generator).normal_(0.0, self.params.std, generator=generator)


class UniformParams(Params):
    a: float = Field(0.05, gt=0.0, description="half-width a of W_ij ~ U(−a, a)")
    bias: BiasMode = bias_field()


class Uniform(WeightInitializer):
    """W_ij ~ U(−a, a) i.i.d., var = a²/3, whatever the layer's size (survey §4.2, "naive initialization").

    Sets every Linear/Conv weight; ``bias: zero`` zeroes biases, ``keep`` leaves them as
    built. Randomness only from the generator.
    """

    cache_version: ClassVar[int] = 1
    Params = UniformParams

    def draw(self, weight: torch.Tensor, generator: torch.Generator, gain: float) -> torch.Tensor:
        a = self.params.a
        return empty_for(weight, generator).uniform_(-a, a, generator=generator)


class SparseParams(Params):
    fraction: float = Field(
        0.1, gt=0.0, le=1.0, description="fraction of non-zero entries in each column: ⌈fraction·rows⌉ of them"
    )
    std: float = Field(0.01, gt=0.0, description="standard deviation σ of the non-zeros, N(0, σ²)")
    bias: BiasMode = bias_field()


class Sparse(WeightInitializer):
    """Sparse initialization, Martens 2010, "Deep learning via Hessian-free optimization"
    (survey §4.2, "a sparse initial point", ref. [140]).

    Each weight is viewed as a matrix W of shape (out, in·k) (a convolution's kernel
    flattened). In every column exactly ⌈fraction · out⌉ entries, at rows chosen uniformly
    without replacement, are drawn N(0, std²); the rest are zero. Martens fixes the number of
    non-zero connections per unit instead of scaling the weights down with the fan, so units
    stay distinct and the weights large. (The column convention is
    ``torch.nn.init.sparse_``'s.) ``bias: zero`` zeroes biases, ``keep`` leaves them as built.
    Randomness only from the generator: the rows of each column, then the values.
    """

    cache_version: ClassVar[int] = 1
    Params = SparseParams

    def nonzeros(self, rows: int) -> int:
        """How many entries of a column of ``rows`` entries are non-zero."""
        return min(rows, math.ceil(self.params.fraction * rows - 1e-9))

    def draw(self, weight: torch.Tensor, generator: torch.Generator, gain: float) -> torch.Tensor:
        rows = weight.shape[0]
        cols = weight[0].numel()
        k = self.nonzeros(rows)
        device = generator.device
        keys = torch.rand((rows, cols), generator=generator, device=device)
        index = keys.argsort(dim=0)[:k]  # per column, k distinct rows uniformly at random
        values = torch.empty((k, cols), dtype=weight.dtype, device=device).normal_(0.0, self.params.std, generator=generator)
        drawn = torch.zeros((rows, cols), dtype=weight.dtype, device=device)
        drawn.scatter_(0, index, values)
        return drawn.reshape(weight.shape)
