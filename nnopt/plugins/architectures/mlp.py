"""A fully connected feed-forward network (survey §2, eq. (1)-(2))."""

from __future__ import annotations

import math
from collections import OrderedDict
from typing import Annotated, ClassVar, Literal

from pydantic import Field, model_validator
from torch import nn

from nnopt.core.component import Params, ref_type
from nnopt.core.kinds import Activation, Architecture, Normalizer

from .parameterization import NTKLinear, standard_gaussian_


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
    parameterization: Literal["standard", "ntk"] = Field(
        "standard", description="`standard`: z = W x + b (PyTorch's layers); `ntk`: z = (W_std/√n) W x + b_std b with "
        "W, b ~ N(0, 1) (Jacot et al. 2018; neural-tangents' `parameterization='ntk'`)"
    )
    W_std: float | None = Field(
        None, gt=0.0, description="σ_w: weight standard deviation × √fan-in. `ntk`: the layer's scale (default 1); "
        "`standard`: draw W ~ N(0, σ_w²/n) instead of PyTorch's default init (None: keep the default)"
    )
    b_std: float | None = Field(
        None, ge=0.0, description="σ_b: bias standard deviation. `ntk`: the bias scale (default 0); `standard` with "
        "W_std: b ~ N(0, σ_b²) (default 0)"
    )


    output_scale: float = Field(
        1.0, gt=0.0, allow_inf_nan=False, description="α: the network's output is α·(W^L z^{L−1} + b^L) (1: none). "
        "A large α makes the logits large at initialization (saturated softmax); Chizat & Bach's α-scaling of lazy "
        "training"
    )

    @model_validator(mode="after")
    def _b_std_needs_a_gaussian_init(self) -> "MLPParams":
        if self.parameterization == "standard" and self.b_std is not None and self.W_std is None:
            raise ValueError("b_std with parameterization 'standard' needs W_std too (the Gaussian init it belongs "
                             "to); without W_std the layers keep PyTorch's default init")
        return self


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
    l = 1..len(widths), then ``output`` (``output_scale`` when α ≠ 1, and ``output_act`` with
    ``last_activation``).

    ``output_scale: α`` multiplies the output layer's result by a constant α (no parameter):
    f = α·(W^L z^{L−1} + b^L). At α ≫ 1 a classifier's softmax saturates at initialization (its
    loss is far above ln C; the scale of the output is part of the initialization, survey §4.2); Chizat, Oyallon & Bach 2019
    ("On lazy training") use the same α to move training toward the lazy (kernel) regime.

    ``parameterization: ntk`` builds every linear layer as ``NTKLinear``:
    z = (σ_w/√n)·W x + σ_b·b with W, b ~ N(0, 1) (Jacot, Gabriel & Hongler 2018), the
    parameterization under which the neural tangent kernel has a deterministic infinite-width
    limit; ``W_std``/``b_std`` are σ_w/σ_b (neural-tangents' names). With ``standard`` and
    ``W_std`` given, layers are drawn W ~ N(0, σ_w²/n), b ~ N(0, σ_b²): the same function
    distribution at initialization. An ``init:`` initializer, when named, still runs after.
    """

    cache_version: ClassVar[int] = 1
    Params = MLPParams

    def build(self, input_shape: tuple[int, ...], output_dim: int, normalizer: Normalizer) -> nn.Module:
        p = self.params
        layers: OrderedDict[str, nn.Module] = OrderedDict(flatten=nn.Flatten())
        fan_in = math.prod(input_shape)
        for l, width in enumerate(p.widths, start=1):
            layers[f"linear{l}"] = normalizer.parametrize(self._linear(fan_in, width))
            norm = normalizer.feature_layer(width, 0)
            if norm is not None and p.norm_position == "before_activation":
                layers[f"norm{l}"] = norm
            layers[f"act{l}"] = p.activation.instantiate().build()
            if norm is not None and p.norm_position == "after_activation":
                layers[f"norm{l}"] = norm
            if p.dropout > 0:
                layers[f"dropout{l}"] = nn.Dropout(p.dropout)
            fan_in = width
        layers["output"] = normalizer.parametrize(self._linear(fan_in, output_dim))
        if p.output_scale != 1.0:
            layers["output_scale"] = OutputScale(p.output_scale)
        if p.last_activation:
            layers["output_act"] = p.activation.instantiate().build()
        return nn.Sequential(layers)

    def _linear(self, fan_in: int, fan_out: int) -> nn.Linear:
        p = self.params
        if p.parameterization == "ntk":
            return NTKLinear(fan_in, fan_out, bias=p.bias, W_std=1.0 if p.W_std is None else p.W_std,
                             b_std=0.0 if p.b_std is None else p.b_std)
        layer = nn.Linear(fan_in, fan_out, bias=p.bias)
        if p.W_std is not None:
            standard_gaussian_(layer, p.W_std, 0.0 if p.b_std is None else p.b_std)
        return layer

    def activation(self) -> Activation:
        return self.params.activation.instantiate()


class OutputScale(nn.Module):
    """y = α·x with a constant α (no parameter, nothing in the state dict)."""

    def __init__(self, alpha: float):
        super().__init__()
        self.alpha = float(alpha)

    def forward(self, x):  # noqa: D401 - nn.Module's forward
        return x * self.alpha

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}"
