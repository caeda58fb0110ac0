"""A fully connected feed-forward network (survey §2, eq. (1)-(2))."""

from __future__ import annotations

import math
from collections import OrderedDict
from typing import Annotated, ClassVar, Literal

from pydantic import Field
from torch import nn

from nnopt.core.component import Params, ref_type
from nnopt.core.kinds import Activation, Architecture, Normalizer


class MLPParams(Params):
    widths: list[Annotated[int, Field(ge=1)]] = Field(
        [256, 128], description="hidden layer widths d_1..d_{L-1}, each >= 1; [] is a linear model"
    )
    # validate_default turns the default "relu" into a ref the engine can resolve (a fresh one
    # per params instance), exactly as if the pipeline file had said `activation: relu`.
    activation: ref_type("activations") = Field(  # type: ignore[valid-type]
        "relu", validate_default=True, description="activation φ after each hidden layer (a component)"
    )
    bias: bool = Field(True, description="give every linear layer a bias b^l")
    norm_position: Literal["before_activation", "after_activation"] = Field(
        "before_activation", description="where the normalizer's feature layer goes: φ(N(Wz+b)) or N(φ(Wz+b))"
    )
    last_activation: bool = Field(False, description="apply φ to the output layer too (f = φ(W^L z^{L−1} + b^L))")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="dropout rate p after each hidden activation (0: none)")


class MLP(Architecture):
    """Fully connected network f(x) = W^L φ(N(W^{L−1} … φ(N(W^1 x + b^1)) …)) + b^L.

    The survey's eq. (1)/(2) with biases, z^l = φ(N(W^l z^{l−1} + b^l)), where N is the
    normalizer's feature layer (identity without one). The input is flattened first; the
    output layer has no normalization or activation. Every linear layer goes through
    ``normalizer.parametrize`` (weight / spectral normalization), the output layer included.

    Layers keep PyTorch's default initialization unless the pipeline names an initializer.
    ``norm_position: after_activation`` places N after φ instead; ``last_activation`` applies
    φ to the output too; ``dropout: p`` zeroes each hidden unit with probability p in
    training (scaling the rest by 1/(1−p); Srivastava et al. 2014).

    The module is an ``nn.Sequential`` with stable names: ``flatten``, then ``linear{l}``,
    ``norm{l}`` (only with a normalizer), ``act{l}``, ``dropout{l}`` (only with dropout) for
    l = 1..len(widths), then ``output`` (and ``output_act`` with ``last_activation``).
    """

    cache_version: ClassVar[int] = 1
    Params = MLPParams

    def build(self, input_shape: tuple[int, ...], output_dim: int, normalizer: Normalizer) -> nn.Module:
        p = self.params
        layers: OrderedDict[str, nn.Module] = OrderedDict(flatten=nn.Flatten())
        fan_in = math.prod(input_shape)
        for l, width in enumerate(p.widths, start=1):
            layers[f"linear{l}"] = normalizer.parametrize(nn.Linear(fan_in, width, bias=p.bias))
            norm = normalizer.feature_layer(width, 0)
            if norm is not None and p.norm_position == "before_activation":
                layers[f"norm{l}"] = norm
            layers[f"act{l}"] = p.activation.instantiate().build()
            if norm is not None and p.norm_position == "after_activation":
                layers[f"norm{l}"] = norm
            if p.dropout > 0:
                layers[f"dropout{l}"] = nn.Dropout(p.dropout)
            fan_in = width
        layers["output"] = normalizer.parametrize(nn.Linear(fan_in, output_dim, bias=p.bias))
        if p.last_activation:
            layers["output_act"] = p.activation.instantiate().build()
        return nn.Sequential(layers)

    def activation(self) -> Activation:
        return self.params.activation.instantiate()
