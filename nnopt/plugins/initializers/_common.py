"""What the weight initializers share: which layers they set, fans, gains, assignment.

Every initializer here sets the ``weight`` of each ``nn.Linear`` and ``nn.Conv*d`` (any
weight of two or more dimensions) and zeroes or keeps its bias; other modules (norm layers,
embeddings) keep what the architecture built. A subclass of ``WeightInitializer`` says only
how one weight is drawn (``draw``) and, when it uses one, which gain (``gain``).

Randomness comes only from the given generator: tensors are drawn on the generator's
device and copied to the layer's, so a seed gives the same weights on any device. A weight
under a parametrization (weight / spectral normalization) is assigned through its
``right_inverse``.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Iterator, Literal

import torch
from pydantic import Field
from torch import nn
from torch.nn.utils import parametrize

from nnopt.core.kinds import Activation, Initializer

Nonlinearity = Literal["auto", "relu", "leaky_relu", "linear", "tanh", "sigmoid", "selu"]
BiasMode = Literal["zero", "keep"]


def nonlinearity_field(default: str, unknown: str) -> Any:
    """The ``nonlinearity`` parameter; ``unknown`` says what auto gives without an activation."""
    return Field(
        default, description="whose gain is used: auto = the architecture's own activation (its `gain()`: "
        "relu √2, linear/sigmoid 1, tanh 5/3, selu 3/4, others (E φ(z)²)^(-1/2); "
        f"{unknown} when the architecture reports none); or a name, whatever the activation"
    )


def negative_slope_field() -> Any:
    return Field(
        0.01, ge=0.0, le=1.0, description="slope a of leaky_relu (gain √(2/(1+a²))); used only with nonlinearity: leaky_relu"
    )


def bias_field() -> Any:
    return Field("zero", description="zero the biases, or keep the architecture's")


def resolve_gain(nonlinearity: str, negative_slope: float, activation: Activation | None, unknown: float) -> float:
    """The gain for ``nonlinearity``: a name's ``calculate_gain``, or auto's ``activation.gain()``."""
    if nonlinearity != "auto":
        return float(nn.init.calculate_gain(nonlinearity, negative_slope if nonlinearity == "leaky_relu" else None))
    return activation.gain() if activation is not None else unknown


def weight_layers(model: nn.Module) -> Iterator[nn.Module]:
    """The Linear and Conv modules of ``model`` (in ``modules()`` order) with a matrix weight."""
    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.modules.conv._ConvNd)) and module.weight.dim() >= 2:
            yield module


def fans(shape: torch.Size | tuple[int, ...]) -> tuple[int, int]:
    """(fan_in, fan_out) of a weight of ``shape`` (out, in, *kernel): both times the kernel size."""
    receptive = math.prod(shape[2:])
    return shape[1] * receptive, shape[0] * receptive


def empty_for(weight: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """An uninitialized tensor shaped like ``weight``, in its dtype, on the generator's device."""
    return torch.empty(weight.shape, dtype=weight.dtype, device=generator.device)


def assign(module: nn.Module, name: str, value: torch.Tensor) -> None:
    """Set ``module.<name>`` to ``value`` in place, through a parametrization if it has one."""
    with torch.no_grad():
        current = getattr(module, name)
        value = value.to(device=current.device, dtype=current.dtype)
        if parametrize.is_parametrized(module, name):
            setattr(module, name, value)
        else:
            current.copy_(value)


class WeightInitializer(Initializer):
    """Base of the initializers here: ``draw`` each layer's weight, then zero or keep its bias.

    Its ``Params`` must have ``bias: zero | keep``. ``gain`` is computed once per call.
    """

    def gain(self, activation: Activation | None) -> float:
        """The gain this initializer uses with ``activation``; 1 for those that use none."""
        return 1.0

    def draw(self, weight: torch.Tensor, generator: torch.Generator, gain: float) -> torch.Tensor:
        """The new value of ``weight`` (any device; ``assign`` copies it)."""
        raise NotImplementedError(f"{type(self).__name__}.draw")

    def initialize(
        self, model: nn.Module, sample_inputs: Callable[[], torch.Tensor], generator: torch.Generator,
        activation: Activation | None = None,
    ) -> None:
        gain = self.gain(activation)
        for module in weight_layers(model):
            assign(module, "weight", self.draw(module.weight, generator, gain))
            if self.params.bias == "zero" and module.bias is not None:
                assign(module, "bias", torch.zeros_like(module.bias))
