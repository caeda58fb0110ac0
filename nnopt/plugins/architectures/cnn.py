"""A plain convolutional network: a stack of conv layers, then a linear head (survey §2)."""

from __future__ import annotations

from collections import OrderedDict
from typing import Annotated, ClassVar, Literal

from pydantic import Field, field_validator, model_validator
from torch import nn

from nnopt.core.component import Params, ref_type
from nnopt.core.errors import StageError
from nnopt.core.kinds import Activation, Architecture, Normalizer

PositiveInt = Annotated[int, Field(ge=1)]


class CNNParams(Params):
    channels: list[PositiveInt] = Field(
        [16, 32, 32, 64, 64], min_length=1, description="output channels c_1..c_L of the conv layers, each >= 1"
    )
    kernel: int = Field(3, ge=1, description="spatial size k of every (k×k) kernel; odd, so that a tap is centred")
    stride: PositiveInt | list[PositiveInt] = Field(
        1, description="stride s of every conv layer, or one stride per layer (a list as long as `channels`)"
    )
    padding: Literal["same", "circular"] = Field(
        "same", description="`same`: zero padding of k//2 on each side; `circular`: the map wraps around (a torus), "
        "so each conv is a circulant operator whose singular values the FFT gives exactly"
    )
    pool: Literal["none", "max", "avg"] = Field("none", description="pooling after every `pool_every` conv layers")
    pool_every: PositiveInt = Field(2, description="pool after conv layers l with l % pool_every == 0")
    pool_size: int = Field(2, ge=2, description="window and stride p of each pooling layer: H → ⌊H/p⌋")
    global_pool: bool = Field(
        True, description="true: global average pooling to c_L features, then the linear head; false: flatten "
        "the c_L×H×W map into the head"
    )
    # validate_default turns the default "relu" into a ref the engine resolves, as in the MLP
    activation: ref_type("activations") = Field(  # type: ignore[valid-type]
        "relu", validate_default=True, description="activation φ after each conv layer (a component)"
    )
    bias: bool = Field(True, description="give every conv layer and the head a bias b^l")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="dropout rate p after each conv layer's activation (0: none)")

    @field_validator("kernel")
    @classmethod
    def _odd_kernel(cls, value: int) -> int:
        # an even kernel has no centre tap: k//2 padding would shift the map by half a pixel
        if value % 2 == 0:
            raise ValueError(f"kernel must be odd (a centred k×k window), got {value}")
        return value

    @model_validator(mode="after")
    def _one_stride_per_layer(self) -> "CNNParams":
        if isinstance(self.stride, list) and len(self.stride) != len(self.channels):
            raise ValueError(f"stride has {len(self.stride)} entries and channels {len(self.channels)}: "
                             f"give one stride per conv layer, or a single int")
        return self

    def strides(self) -> list[int]:
        return list(self.stride) if isinstance(self.stride, list) else [self.stride] * len(self.channels)


class CNN(Architecture):
    """Convolutional network z^l = φ(N(W^l ∗ z^{l−1} + b^l)), l = 1..L, f(x) = W^{L+1} g(z^L) + b^{L+1}.

    LeCun et al. 1998, "Gradient-based learning applied to document recognition": weights
    shared across positions as k×k kernels W^l ∈ R^{c_l × c_{l−1} × k × k}, ∗ the (cross-)
    correlation with stride s_l, N the normalizer's feature layer (``feature_layer(c_l, 2)``:
    BatchNorm2d, GroupNorm, ...; identity without one), φ the activation. Each conv pads k//2
    on each side, with zeros (``same``) or by wrapping around (``circular``; the setting of
    Xiao et al. 2018's delta-orthogonal analysis and of Sedghi et al. 2019's exact conv
    spectrum), so the map goes H → ⌊(H − 1)/s⌋ + 1. Optional max or average pooling of
    window p after every ``pool_every`` layers takes H → ⌊H/p⌋; g is global average pooling
    (Lin et al. 2014, "Network in network") or flattening; W^{L+1} is the linear head.
    ``dropout: p`` zeroes each unit of z^l with probability p in training (Srivastava et al. 2014).

    Inputs are images (C, H, W); a flat vector is refused rather than guessed into a shape.
    Every conv layer and the head go through ``normalizer.parametrize``.

    The module is an ``nn.Sequential`` with stable names: ``conv{l}``, ``norm{l}`` (only with
    a normalizer), ``act{l}``, ``dropout{l}`` (only with dropout), ``pool{l}`` (after the
    layers that pool) for l = 1..L, then ``global_pool`` (with global pooling), ``flatten``
    and ``head``.
    """

    cache_version: ClassVar[int] = 1
    Params = CNNParams

    def build(self, input_shape: tuple[int, ...], output_dim: int, normalizer: Normalizer) -> nn.Module:
        p = self.params
        if len(input_shape) != 3:
            raise StageError(
                f"cnn needs image inputs of shape (C, H, W), and this data has shape {tuple(input_shape)}"
                + (" (flat vectors: load the images unflattened, e.g. digits with `flatten: false`)"
                   if len(input_shape) == 1 else "")
            )
        c_in, height, width = (int(d) for d in input_shape)
        if min(c_in, height, width) < 1:
            raise StageError(f"cnn: input shape {tuple(input_shape)} has an empty dimension")

        layers: OrderedDict[str, nn.Module] = OrderedDict()
        pad = p.kernel // 2
        for l, (c_out, stride) in enumerate(zip(p.channels, p.strides()), start=1):
            if p.padding == "circular" and pad > min(height, width):
                # torch's circular padding can wrap at most once around the map
                raise StageError(f"cnn: conv{l} pads {pad} circularly, more than its {height}×{width} input map "
                                 f"(use a smaller kernel, less stride or pooling, or padding: same)")
            conv = nn.Conv2d(c_in, c_out, p.kernel, stride=stride, padding=pad, bias=p.bias,
                             padding_mode="circular" if p.padding == "circular" else "zeros")
            layers[f"conv{l}"] = normalizer.parametrize(conv)
            norm = normalizer.feature_layer(c_out, 2)
            if norm is not None:
                layers[f"norm{l}"] = norm
            layers[f"act{l}"] = p.activation.instantiate().build()
            if p.dropout > 0:
                layers[f"dropout{l}"] = nn.Dropout(p.dropout)
            # with odd k and padding k//2: ⌊(H + 2⌊k/2⌋ − k)/s⌋ + 1 = ⌊(H − 1)/s⌋ + 1 >= 1
            height, width = (height - 1) // stride + 1, (width - 1) // stride + 1
            if p.pool != "none" and l % p.pool_every == 0:
                if height < p.pool_size or width < p.pool_size:
                    raise StageError(
                        f"cnn: pool{l} (window {p.pool_size}) would shrink the {height}×{width} map after conv{l} "
                        f"below 1×1 (input {tuple(input_shape)}); pool less often, use a smaller window or stride, "
                        f"or fewer layers"
                    )
                pool_cls = nn.MaxPool2d if p.pool == "max" else nn.AvgPool2d
                layers[f"pool{l}"] = pool_cls(p.pool_size, stride=p.pool_size)
                height, width = height // p.pool_size, width // p.pool_size
            c_in = c_out

        if p.global_pool:
            layers["global_pool"] = nn.AdaptiveAvgPool2d(1)
            features = c_in
        else:
            features = c_in * height * width
        layers["flatten"] = nn.Flatten()
        layers["head"] = normalizer.parametrize(nn.Linear(features, output_dim, bias=p.bias))
        return nn.Sequential(layers)

    def activation(self) -> Activation:
        return self.params.activation.instantiate()

