"""Deep linear networks: the identity-activation MLP and the scalar chain (survey §2.2, §4.1)."""

from __future__ import annotations

import math
from typing import Annotated, ClassVar

import torch
from pydantic import Field
from torch import nn

from nnopt.core.component import Params
from nnopt.core.errors import StageError
from nnopt.core.kinds import Activation, Architecture, Normalizer

from .mlp import MLP


class DeepLinearParams(Params):
    widths: list[Annotated[int, Field(ge=1)]] = Field(
        [64, 64], description="hidden widths d_1..d_{L-1}, each >= 1; [] is a single linear map"
    )
    bias: bool = Field(False, description="give every layer a bias (a deep linear network has none)")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="dropout rate p after each hidden layer (0: none)")


class DeepLinear(Architecture):
    """f(x) = W^L W^{L−1} ⋯ W^1 x: an MLP whose activation is the identity (survey §2.2).

    The function class is only the linear maps, yet the loss as a function of the factors
    (W^1, …, W^L) is non-convex, with saddles but no spurious local minima for the square
    loss (Kawaguchi 2016), and its training dynamics from small or orthogonal initialization
    are solved exactly by Saxe et al. (2014): the testbed of the survey's §6.3.1. The layers
    are named as the MLP's (``linear{l}``, ``output``), so every normalizer and initializer
    applies.
    """

    cache_version: ClassVar[int] = 1
    Params = DeepLinearParams

    def build(self, input_shape: tuple[int, ...], output_dim: int, normalizer: Normalizer) -> nn.Module:
        from nnopt.core.component import ActivationRef
        from nnopt.plugins.activations.elementwise import Linear

        identity = ActivationRef.model_validate("identity")
        identity.resolve(Linear, Linear.Params())
        p = self.params
        mlp = MLP(MLP.Params(widths=list(p.widths), activation=identity, bias=p.bias, dropout=p.dropout))
        return mlp.build(input_shape, output_dim, normalizer)

    def activation(self) -> Activation:
        from nnopt.plugins.activations.elementwise import Linear

        return Linear(Linear.Params())


class ScalarChainParams(Params):
    depth: int = Field(10, ge=1, description="number of scalar factors L")
    init: float = Field(1.0, description="the value every factor w_l starts from (initializers may redraw them)")
    init_first: float | None = Field(
        None, description="the first factor w_1 starts here instead (e.g. −1: a sign the chain can only correct by "
        "crossing the flat region around w_1 = 0; Shamir 2019); None: like the others",
    )
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="dropout rate p on the partial products w_l⋯w_1·x, l < L (0: none)")


class _Chain(nn.Module):
    def __init__(self, depth: int, init: float, init_first: float | None = None, dropout: float = 0.0):
        super().__init__()
        start = torch.full((depth,), float(init))
        if init_first is not None:
            start[0] = float(init_first)
        self.weights = nn.Parameter(start)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.dropout is None:  # one product: the exact function, and the fast one
            return torch.prod(self.weights) * x.flatten(1)
        z = x.flatten(1)
        for l, w in enumerate(self.weights):
            z = w * z
            if l < len(self.weights) - 1:
                z = self.dropout(z)
        return z


class ScalarChain(Architecture):
    """f(x) = w_L w_{L−1} ⋯ w_1 · x with scalar weights: the one-dimensional picture of
    exploding and vanishing gradients (survey §4.1).

    ∂f/∂w_l = (∏_{k≠l} w_k)·x, so with every w_k = w the gradient scales like w^{L−1}: it
    explodes for |w| > 1 and vanishes for |w| < 1 as L grows, and near w = 1 the product is
    flat in some directions and sharp in others. Each input coordinate is mapped to the
    output coordinate of the same index, so the data must have as many outputs as input
    features (e.g. ``synthetic`` least squares with ``dim: 1``). The factors are one
    parameter tensor ``weights`` of shape (L,), all starting at ``init`` (``init_first``
    for w_1: a start with one factor of the wrong sign, from which gradient descent must
    cross the flat region, taking a number of steps exponential in L; Shamir 2019).
    ``dropout: p`` zeroes each partial product w_l⋯w_1·x (l < L) with probability p in
    training, scaling by 1/(1−p).
    """

    cache_version: ClassVar[int] = 1
    Params = ScalarChainParams

    def build(self, input_shape: tuple[int, ...], output_dim: int, normalizer: Normalizer) -> nn.Module:
        features = math.prod(input_shape)
        if features != output_dim:
            raise StageError(f"scalar_chain maps each of the {features} input features to one output, "
                             f"and the data have {output_dim} outputs (use data with as many outputs as inputs)")
        p = self.params
        return _Chain(p.depth, p.init, p.init_first, p.dropout)
