"""Matrix factorization as a network: f(x) = W_N ⋯ W_2 W_1 x (survey §2.2, eq. (5); §6 landscape)."""

from __future__ import annotations

import math
from typing import Annotated, ClassVar

import torch
from pydantic import Field
from torch import nn

from nnopt.core.component import Params
from nnopt.core.errors import StageError
from nnopt.core.kinds import Activation, Architecture, Normalizer


class MatrixFactorizationParams(Params):
    factors: list[Annotated[int, Field(ge=1)]] = Field(
        [2], description="inner dimensions d_1..d_{N-1} between the N factors; [r] is Y ≈ W_2 W_1 with inner rank r, "
        "longer lists are deep factorizations, [] is a single matrix W_1"
    )
    dropout: float = Field(
        0.0, ge=0.0, lt=1.0,
        description="dropout rate p on the inner representations W_l⋯W_1 x (l < N) in training (0: none); "
        "for two factors an explicit regularizer of the product (Cavazza et al. 2018, Mianjy et al. 2018)",
    )


class FactorChain(nn.Module):
    """x ↦ W_N ⋯ W_1 x with factors ``factor1`` … ``factorN`` (``nn.Linear`` without bias)."""

    def __init__(self, layers: list[nn.Module], dropout: float = 0.0):
        super().__init__()
        self.flatten = nn.Flatten()
        self.names = [f"factor{l}" for l in range(1, len(layers) + 1)]
        for name, layer in zip(self.names, layers):
            self.add_module(name, layer)
        # between factors only: dropping output coordinates would change the targets' scale
        self.dropout = nn.Dropout(dropout) if dropout > 0 else None

    def factors(self) -> list[torch.Tensor]:
        """W_1, …, W_N (each layer's ``weight``: under a parametrization, the reparametrized one)."""
        return [getattr(self, name).weight for name in self.names]

    def product(self) -> torch.Tensor:
        """The end-to-end matrix W_N ⋯ W_1, of shape (output_dim, input features); differentiable."""
        weights = self.factors()
        product = weights[0]
        for w in weights[1:]:
            product = w @ product
        return product

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.flatten(x)
        for i, name in enumerate(self.names):
            if i > 0 and self.dropout is not None:
                z = self.dropout(z)
            z = getattr(self, name)(z)
        return z


class MatrixFactorization(Architecture):
    """f(x) = W_N ⋯ W_2 W_1 x: no bias, no activation, no feature normalization (survey §2.2).

    With the ``matrix`` dataset (inputs x_i = e_i, the standard basis of R^n, targets
    y_i = Y[:, i]) the network's outputs on the training set are the columns of
    P = W_N ⋯ W_1, and the ``mse`` loss (``F.mse_loss``, mean over all n·m elements) over
    the full batch is exactly

        L(W_1, …, W_N) = ‖Y − W_N ⋯ W_1‖²_F / (m·n),

    the survey's eq. (5) (two factors, ``factors: [r]``: W_1 ∈ R^{r×n}, W_2 ∈ R^{m×r}) divided
    by m·n, so its gradients, and the learning rate that gives the same steps, differ from
    those of ‖Y − W_2 W_1‖²_F by that factor. A mini-batch of b columns gives the mean over
    those b columns, an unbiased estimate of it. With r < min(m, n) the minimum is the best
    rank-r approximation (Eckart–Young); longer ``factors`` lists are deep linear networks /
    deep matrix factorizations, whose square loss has no spurious local minima (Kawaguchi
    2016; survey §6).

    Any input is flattened to its features; the factors are ``nn.Linear(d_{l−1}, d_l,
    bias=False)`` modules named ``factor1`` … ``factorN``, each passed through
    ``normalizer.parametrize`` (weight / spectral normalization), so every initializer
    applies. A normalizer with feature layers (batchnorm, layernorm, switchable, ...) is
    refused: normalizing the features between factors would make f non-linear, no longer
    the product. The module's ``product()`` returns W_N ⋯ W_1. Layers keep
    PyTorch's default initialization unless the pipeline names an initializer.
    """

    cache_version: ClassVar[int] = 1
    Params = MatrixFactorizationParams

    def build(self, input_shape: tuple[int, ...], output_dim: int, normalizer: Normalizer) -> nn.Module:
        if type(normalizer).feature_layer is not Normalizer.feature_layer:
            raise StageError(f"matrix_factorization has no feature layers to normalize (f must stay the product "
                             f"W_N ⋯ W_1), and the normalizer {type(normalizer).__name__} normalizes features "
                             "(use weightnorm, spectralnorm or none)")
        dims = [math.prod(input_shape), *self.params.factors, output_dim]
        layers = [normalizer.parametrize(nn.Linear(d_in, d_out, bias=False)) for d_in, d_out in zip(dims, dims[1:])]
        return FactorChain(layers, self.params.dropout)

    def activation(self) -> Activation:
        # the identity: variance-preserving initializers use gain 1 for the factors
        from nnopt.plugins.activations.elementwise import Linear

        return Linear(Linear.Params())
