"""Fixup: training residual networks without normalization (Zhang, Dauphin & Ma 2019; survey §4.4)."""

from __future__ import annotations

import math
from typing import Callable, ClassVar, Literal

import torch
from pydantic import Field
from torch import nn
from torch.nn.utils import parametrize

from nnopt.core.component import Params
from nnopt.core.errors import StageError
from nnopt.core.kinds import Activation, Initializer
from nnopt.plugins.architectures.resnet import ResidualBlock

from ._common import Nonlinearity, assign, empty_for, fans, negative_slope_field, nonlinearity_field, resolve_gain, weight_layers


class FixupParams(Params):
    mode: Literal["fan_in", "fan_out"] = Field(
        "fan_in", description="fan of the He-normal std gain/√fan of the layers not zeroed (Zhang et al.'s code uses fan_out)"
    )
    nonlinearity: Nonlinearity = nonlinearity_field("auto", "relu's √2")
    negative_slope: float = negative_slope_field()
    require_scalars: bool = Field(
        False, description="refuse a network built without Fixup's scalar multipliers and biases "
        "(resnet's fixup_scalars: true) instead of initializing its weights alone"
    )


class Fixup(Initializer):
    """Fixup initialization (Zhang, Dauphin & Ma 2019, "Fixup initialization: residual
    learning without normalization"; survey §4.4, ref. [245]).

    For a residual network of L blocks z^l = φ(F(z^{l−1}) + S(z^{l−1})) whose branches F have
    m weight layers each:

    1. the classification layer (``head``: weight and bias) and the last weight layer W_m of
       every residual branch are set to 0, so that at initialization every block with an
       identity shortcut is z ↦ φ(z) (the identity on the non-negative output of a ReLU);
    2. every other weight layer — the stem, the projection shortcuts, and W_1..W_{m−1} of
       each branch — is drawn He-normal, W_ij ~ N(0, gain²/fan), and the branch layers are
       then multiplied by L^(−1/(2m−2)), so that each update of a branch changes the
       network's output by Θ(η/L) and the sum over the L branches by Θ(η), independent of
       the depth (the paper's §3; the survey's derivation gives L^(−1/(2m)), close to it);
    3. the scalar multipliers of the branches are set to 1 and all scalar biases to 0
       (``fixup_scalars`` of the ``resnet`` architecture).

    m = 1: the branch's only layer is its last and is zeroed, so no layer is scaled and the
    undefined exponent −1/0 never arises. Biases of weight layers are zeroed; normalization
    layers (Fixup replaces them, but they are allowed) keep what the architecture built.

    It needs the residual blocks of ``nnopt.plugins.architectures.resnet`` (``resnet``,
    ``resnet20/32/56``): a model without any — an MLP, or the ``plain`` twin, whose blocks
    have no skip so that a zeroed branch would cut the signal — is refused with a
    StageError, and so is zeroing a layer under weight or spectral normalization (w/‖w‖ of
    0 is 0/0). The scalars are optional: without them (the default ``fixup_scalars: false``)
    Fixup sets the weights alone, which is the part that makes deep unnormalized ResNets
    trainable; Zhang et al. add the scalars to match BatchNorm's final accuracy.
    ``require_scalars: true`` refuses a network without them.

    The gain follows the architecture's activation (``nonlinearity: auto``: √2 under ReLU,
    see ``kaiming_normal``). Randomness comes only from the given generator, in
    ``modules()`` order, so a seed gives the same weights on any device.
    """

    cache_version: ClassVar[int] = 1
    Params = FixupParams

    def initialize(
        self, model: nn.Module, sample_inputs: Callable[[], torch.Tensor], generator: torch.Generator,
        activation: Activation | None = None,
    ) -> None:
        p = self.params
        blocks = [m for m in model.modules() if isinstance(m, ResidualBlock)]
        residual = [b for b in blocks if b.skip]
        if not residual:
            what = ("its blocks have no skip connections (the plain twin): a zeroed branch would cut the signal"
                    if blocks else "it has no residual blocks")
            raise StageError(f"fixup initializes residual networks (resnet, resnet20/32/56), and this "
                             f"{type(model).__name__} is not one: {what}; use kaiming_normal or another initializer")
        if p.require_scalars and any(b.scale is None for b in residual):
            raise StageError("fixup: require_scalars is set but the network has no Fixup scalars "
                             "(build it with the architecture's fixup_scalars: true)")
        head = getattr(model, "head", None)
        if not isinstance(head, nn.Linear):
            raise StageError(f"fixup needs the classification layer as the model's `head` (an nn.Linear); "
                             f"{type(model).__name__} has none")

        gain = resolve_gain(p.nonlinearity, p.negative_slope, activation, unknown=math.sqrt(2.0))
        L = len(residual)
        zero: set[int] = {id(head)}
        scale: dict[int, float] = {}
        for block in residual:
            m = len(block.branch)
            zero.add(id(block.branch[-1]))
            for layer in list(block.branch)[:-1]:  # empty for m = 1: nothing to scale
                scale[id(layer)] = L ** (-1.0 / (2 * m - 2))

        for module in weight_layers(model):
            if id(module) in zero:
                if parametrize.is_parametrized(module, "weight"):
                    raise StageError(f"fixup sets {type(module).__name__} layers to zero, which weight or spectral "
                                     f"normalization cannot represent (w/‖w‖ of 0 is 0/0); use norm: none or another")
                assign(module, "weight", torch.zeros_like(module.weight))
            else:
                fan_in, fan_out = fans(module.weight.shape)
                std = gain / math.sqrt(fan_in if p.mode == "fan_in" else fan_out) * scale.get(id(module), 1.0)
                assign(module, "weight", empty_for(module.weight, generator).normal_(0.0, std, generator=generator))
            if module.bias is not None:
                assign(module, "bias", torch.zeros_like(module.bias))

        with torch.no_grad():
            for block in residual:
                if block.scale is not None:
                    block.scale.fill_(1.0)
                if block.biases is not None:
                    for b in block.biases:
                        b.zero_()
            net_biases = getattr(model, "biases", None)
            if isinstance(net_biases, nn.ParameterList):
                for b in net_biases:
                    b.zero_()
