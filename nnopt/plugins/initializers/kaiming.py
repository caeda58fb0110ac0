"""Kaiming (He) initialization (survey §4.2, eq. (17))."""

from __future__ import annotations

import math
from typing import Callable, ClassVar, Literal

import torch
from pydantic import Field
from torch import nn
from torch.nn.utils import parametrize

from nnopt.core.component import Params
from nnopt.core.kinds import Activation, Initializer


class KaimingNormalParams(Params):
    mode: Literal["fan_in", "fan_out"] = Field(
        "fan_in", description="fan_in preserves forward signal variance, fan_out the backward one"
    )
    nonlinearity: Literal["auto", "relu", "leaky_relu", "linear", "tanh", "sigmoid", "selu"] = Field(
        "auto", description="whose gain is used: auto = the architecture's own activation (its `gain()`: "
        "relu √2, linear/sigmoid 1, tanh 5/3, selu 3/4, others (E φ(z)²)^(-1/2)); or a name, whatever the activation"
    )
    negative_slope: float = Field(
        0.01, ge=0.0, le=1.0, description="slope a of leaky_relu (gain √(2/(1+a²))); used only with nonlinearity: leaky_relu"
    )
    bias: Literal["zero", "keep"] = Field("zero", description="zero the biases, or keep the architecture's")


class KaimingNormal(Initializer):
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
        if p.nonlinearity != "auto":
            return float(nn.init.calculate_gain(p.nonlinearity, p.negative_slope if p.nonlinearity == "leaky_relu" else None))
        return activation.gain() if activation is not None else math.sqrt(2.0)

    def initialize(
        self, model: nn.Module, sample_inputs: Callable[[], torch.Tensor], generator: torch.Generator,
        activation: Activation | None = None,
    ) -> None:
        p = self.params
        gain = self.gain(activation)
        for module in model.modules():
            if not isinstance(module, (nn.Linear, nn.modules.conv._ConvNd)):
                continue
            weight = module.weight
            if weight.dim() < 2:
                continue
            receptive = math.prod(weight.shape[2:])
            fan = weight.shape[1] * receptive if p.mode == "fan_in" else weight.shape[0] * receptive
            drawn = torch.empty(weight.shape, dtype=weight.dtype, device=generator.device)
            drawn.normal_(0.0, gain / math.sqrt(fan), generator=generator)
            _assign(module, "weight", drawn)
            if p.bias == "zero" and module.bias is not None:
                _assign(module, "bias", torch.zeros_like(module.bias))


def _assign(module: nn.Module, name: str, value: torch.Tensor) -> None:
    """Set ``module.<name>`` to ``value`` in place, through a parametrization if it has one."""
    with torch.no_grad():
        current = getattr(module, name)
        value = value.to(device=current.device, dtype=current.dtype)
        if parametrize.is_parametrized(module, name):
            setattr(module, name, value)
        else:
            current.copy_(value)
