"""Delta-orthogonal initialization of convolutions (Xiao et al. 2018; survey §4.2, dynamical isometry)."""

from __future__ import annotations

from typing import Callable, ClassVar

import torch
from pydantic import Field
from torch import nn

from nnopt.core.component import Params
from nnopt.core.errors import StageError
from nnopt.core.kinds import Activation

from ._common import BiasMode, Nonlinearity, assign, bias_field, negative_slope_field, nonlinearity_field, weight_layers
from .orthogonal import Orthogonal


class DeltaOrthogonalParams(Params):
    nonlinearity: Nonlinearity = nonlinearity_field("auto", "1")
    negative_slope: float = negative_slope_field()
    gain: float | None = Field(
        None, gt=0.0, description="the gain σ_w itself (e.g. a critical σ_w of Xiao et al. for tanh), overriding "
        "`nonlinearity`; None: the gain of `nonlinearity`"
    )
    bias: BiasMode = bias_field()


class DeltaOrthogonal(Orthogonal):
    """Xiao, Bahri, Sohl-Dickstein, Schoenholz & Pennington 2018, "Dynamical isometry and a
    mean field theory of CNNs: how to train 10,000-layer vanilla convolutional neural
    networks" (Algorithm 1; survey §4.2, ref. [226]).

    A convolution's kernel W ∈ R^{c_out × c_in × k_1 × … × k_d} is set to zero at every tap
    but the spatial centre, which is gain·H with H a Haar-random c_out × c_in matrix with
    orthonormal columns (HᵀH = I; the QR draw of ``orthogonal``):

        W[:, :, c] = gain · H,   W[:, :, j] = 0 for j ≠ c,   c = (k_1//2, …, k_d//2).

    The layer then maps every pixel's channel vector by gain·H and nothing else, so with
    stride 1 it is an isometry up to the gain, ‖W ∗ z‖ = gain·‖z‖ (exactly under circular
    padding, and under zero padding too since no tap reaches past the border), and a deep
    linear stack of such layers keeps every singular value of its input-output Jacobian at
    gain^L: dynamical isometry. This needs c_out ≥ c_in (a tall H); a conv layer with fewer
    output than input channels is refused. For an even kernel size the "centre" is index
    k//2, the tap right of the middle: under PyTorch's ``padding='same'`` (which pads
    (k − 1)//2 before) the layer is then the pointwise map shifted by one pixel, still an
    isometry under circular padding. Grouped convolutions get one H per group (the kernel
    maps the c_in/g channels of a group to its c_out/g). Linear layers (the head) get the
    plain orthogonal initialization W = gain·Q of ``orthogonal`` (Saxe et al. 2014).

    ``nonlinearity: auto`` (default) takes the architecture's activation's ``gain()`` (1 when
    it reports none), a name forces ``torch.nn.init.calculate_gain``, and ``gain`` sets σ_w
    directly. ``bias: zero`` zeroes biases (σ_b = 0), ``keep`` leaves them as built.
    Transposed convolutions are refused (their kernel is laid out (c_in, c_out/g), the adjoint).
    """

    cache_version: ClassVar[int] = 1
    Params = DeltaOrthogonalParams

    def gain(self, activation: Activation | None) -> float:
        if self.params.gain is not None:
            return float(self.params.gain)
        return super().gain(activation)

    def delta(self, module: nn.modules.conv._ConvNd, generator: torch.Generator, gain: float) -> torch.Tensor:
        """The delta-orthogonal kernel of ``module``: gain·H at the centre tap, zero elsewhere."""
        weight = module.weight
        groups = module.groups
        rows, cols = weight.shape[0] // groups, weight.shape[1]  # per group: (c_out/g) × (c_in/g)
        kernel = torch.zeros(weight.shape, dtype=weight.dtype, device=generator.device)
        centre = tuple(k // 2 for k in weight.shape[2:])
        # a meta tensor stands for the (rows × cols) matrix: Orthogonal.draw reads only its shape and dtype
        template = torch.empty((rows, cols), dtype=weight.dtype, device="meta")
        for g in range(groups):
            kernel[(slice(g * rows, (g + 1) * rows), slice(None)) + centre] = super().draw(template, generator, gain)
        return kernel

    def initialize(
        self, model: nn.Module, sample_inputs: Callable[[], torch.Tensor], generator: torch.Generator,
        activation: Activation | None = None,
    ) -> None:
        names = {id(m): name for name, m in model.named_modules()}
        layers = list(weight_layers(model))
        # refuse before assigning anything, so a refused model is not left half initialized
        for module in layers:
            if not isinstance(module, nn.modules.conv._ConvNd):
                continue
            name = names.get(id(module)) or type(module).__name__
            if module.transposed:
                raise StageError(f"delta_orthogonal: layer '{name}' is a transposed convolution, which it does not "
                                 f"initialize (use orthogonal)")
            c_out, c_in = module.out_channels, module.in_channels
            if c_out < c_in:
                raise StageError(
                    f"delta_orthogonal: conv layer '{name}' has {c_out} output channels < {c_in} input channels; "
                    f"its centre tap c_out × c_in cannot have orthonormal columns (Xiao et al. 2018 need "
                    f"c_out ≥ c_in: widen the layer, or use orthogonal)"
                )
        gain = self.gain(activation)
        for module in layers:
            if isinstance(module, nn.modules.conv._ConvNd):
                value = self.delta(module, generator, gain)
            else:
                value = self.draw(module.weight, generator, gain)
            assign(module, "weight", value)
            if self.params.bias == "zero" and module.bias is not None:
                assign(module, "bias", torch.zeros_like(module.bias))
