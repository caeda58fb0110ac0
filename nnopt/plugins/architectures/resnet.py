"""Residual networks and their plain twins (He et al. 2016; survey §4.4, eq. (19)).

``resnet`` is the general network (any stages, branch depth, conv or dense layers),
``resnet20`` / ``resnet32`` / ``resnet56`` are He et al.'s CIFAR networks (6n+2 weight
layers, n = 3, 5, 9), and ``plain`` is the same network with every skip connection removed,
the comparison of He et al. 2016's Fig. 1 and Table 6 (depth degradation).

The modules expose their structure for initializers that need it (Fixup,
``nnopt.plugins.initializers.fixup``): a ``ResNetModule`` has ``stem``, ``blocks`` (every
``ResidualBlock``, in order), ``head`` and ``num_blocks``; a ``ResidualBlock`` has
``branch`` (its weight layers in order), ``shortcut``, ``skip``, and, with
``fixup_scalars``, its ``scale`` and scalar ``biases``.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar, Literal

import torch
from pydantic import Field, model_validator
from torch import nn

from nnopt.core.component import Params, ref_type
from nnopt.core.errors import StageError
from nnopt.core.kinds import Activation, Architecture, Normalizer

#: the string value of ``beta`` that means β = 1/√L (Balduzzi et al. 2017's depth scaling)
INV_SQRT_L = "1/sqrt(L)"


class StageSpec(Params):
    """One stage: ``blocks`` residual blocks of ``channels`` channels, the first with ``stride``."""

    blocks: int = Field(ge=1, description="residual blocks in this stage")
    channels: int = Field(ge=1, description="channels (conv) or features (dense) of every layer of the stage")
    stride: int = Field(1, ge=1, description="stride of the stage's first block (conv only; ignored by dense layers)")

    @model_validator(mode="before")
    @classmethod
    def _from_list(cls, value: Any) -> Any:
        # `[3, 16, 1]` reads as compactly as the papers' tables; it means {blocks, channels, stride}
        if isinstance(value, (list, tuple)):
            if len(value) != 3:
                raise ValueError("a stage is [blocks, channels, stride] or {blocks: .., channels: .., stride: ..}")
            return dict(zip(("blocks", "channels", "stride"), value))
        return value


def cifar_stages(n: int) -> list[StageSpec]:
    """He et al. 2016 §4.2's CIFAR layout: 3 stages of n blocks, 16/32/64 channels, strides 1/2/2."""
    return [StageSpec(blocks=n, channels=c, stride=s) for c, s in ((16, 1), (32, 2), (64, 2))]


class BodyParams(Params):
    """What every residual network here takes; ``ResNetParams`` adds its layout."""

    kind: Literal["auto", "conv", "dense"] = Field(
        "auto", description="weight layers: auto = k×k convolutions for 3-D inputs (C×H×W), linear layers otherwise; "
        "conv needs a 3-D input; dense flattens the input"
    )
    width: float = Field(1.0, gt=0.0, description="multiplier of every stage's channels (rounded, at least 1)")
    kernel_size: int = Field(3, ge=1, description="kernel size of the convolutions (odd: padding k//2 keeps the size)")
    activation: ref_type("activations") = Field(  # type: ignore[valid-type]
        "relu", validate_default=True, description="activation φ inside the branches and after each sum (a component)"
    )
    beta: float | Literal["1/sqrt(L)"] = Field(
        1.0, description="residual scale β: z = φ(β·F(z) + S(z)); the string 1/sqrt(L) means 1/√(number of blocks)"
    )
    fixup_scalars: bool = Field(
        False, description="add Fixup's scalars (Zhang et al. 2019): a bias before each weight layer and each activation "
        "of a branch, a multiplier on its output, a bias before the stem's activation and one before the head"
    )
    shortcut: Literal["projection", "zero_pad"] = Field(
        "projection", description="shortcut S where the shape changes: projection = 1×1 conv (linear) + norm "
        "(He et al.'s option B); zero_pad = subsample and pad the new channels with zeros (option A, parameter-free)"
    )
    bias: bool = Field(False, description="give the stem's and the branches' weight layers a bias (the head always has one)")
    dropout: float = Field(
        0.0, ge=0.0, lt=1.0, description="dropout rate p after each activation inside a branch (Zagoruyko & Komodakis "
        "2016); a branch of one layer drops on its output instead (0: none)"
    )

    @model_validator(mode="after")
    def _odd_kernel(self) -> "BodyParams":
        if self.kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd (padding k//2 keeps the spatial size), got {self.kernel_size}")
        return self


class ResNetParams(BodyParams):
    stages: list[StageSpec] = Field(
        default_factory=lambda: cifar_stages(3), min_length=1,
        description="the stages, each {blocks, channels, stride} (or [blocks, channels, stride]); "
        "default He et al.'s CIFAR ResNet-20: 3 blocks each of 16/32/64 channels, strides 1/2/2",
    )
    branch_depth: int = Field(2, ge=1, description="weight layers m per residual branch F")

    @model_validator(mode="after")
    def _zero_pad_cannot_narrow(self) -> "ResNetParams":
        if self.shortcut == "zero_pad":
            widths = [s.channels for s in self.stages]
            if any(b < a for a, b in zip(widths, widths[1:])):
                raise ValueError(f"shortcut zero_pad only widens (it pads channels with zeros); stage channels "
                                 f"{widths} narrow somewhere: use shortcut: projection")
        return self


class PresetParams(BodyParams):
    """A named CIFAR ResNet: the layout (stages, branch depth 2) is the name; the rest may change."""


# --------------------------------------------------------------------------- modules
class ZeroPadShortcut(nn.Module):
    """S(z) = z subsampled by the stride, its extra channels (features) zero: He et al.'s option A."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, spatial: bool):
        super().__init__()
        self.in_channels, self.out_channels, self.stride, self.spatial = in_channels, out_channels, stride, spatial

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.spatial and self.stride > 1:
            x = x[:, :, :: self.stride, :: self.stride]
        pad = self.out_channels - self.in_channels
        if pad == 0:
            return x
        zeros = x.new_zeros((x.shape[0], pad, *x.shape[2:]))
        return torch.cat([x, zeros], dim=1)


class ResidualBlock(nn.Module):
    """z ↦ φ(β·F(z) + S(z)), or φ(β·F(z)) when ``skip`` is False (a plain block).

    F is ``branch`` = [W_1, …, W_m] with the normalizer's N after each and φ between:
    F(z) = N_m(W_m φ(N_{m−1}(W_{m−1} … φ(N_1(W_1 z))))). With Fixup's scalars (``biases``
    a_i, b_i and ``scale`` s): each W_i reads its input plus a_i, each inner φ its input plus
    b_i, and the branch ends s·N_m(W_m …) + b_m. S is ``shortcut`` applied to z (+ a_1, as in
    Zhang et al.'s code), or z itself when ``shortcut`` is None.
    """

    def __init__(self, branch: list[nn.Module], norms: list[nn.Module | None], acts: list[nn.Module],
                 shortcut: nn.Module | None, beta: float, skip: bool, fixup_scalars: bool, dropout: float):
        super().__init__()
        m = len(branch)
        self.branch = nn.ModuleList(branch)
        self.norms = nn.ModuleList([n if n is not None else nn.Identity() for n in norms])
        self.acts = nn.ModuleList(acts)  # m−1 inside the branch, then the one after the sum
        self.shortcut = shortcut
        self.skip = skip
        self.beta = float(beta)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else None
        if fixup_scalars:
            # biases[2i] before W_{i+1}, biases[2i+1] before the (i+1)-th activation; the last
            # one is added to the scaled branch output (the activation after the sum)
            self.biases: nn.ParameterList | None = nn.ParameterList([nn.Parameter(torch.zeros(1)) for _ in range(2 * m)])
            self.scale: nn.Parameter | None = nn.Parameter(torch.ones(1))
        else:
            self.biases, self.scale = None, None

    def residual(self, x: torch.Tensor) -> torch.Tensor:
        """F(x), the branch alone (with its Fixup scalars, without β)."""
        m, h = len(self.branch), x
        for i, (layer, norm) in enumerate(zip(self.branch, self.norms)):
            if self.biases is not None:
                h = h + self.biases[2 * i]
            h = norm(layer(h))
            if i < m - 1:
                if self.biases is not None:
                    h = h + self.biases[2 * i + 1]
                h = self.acts[i](h)
                if self.dropout is not None:
                    h = self.dropout(h)
        if self.scale is not None:
            h = h * self.scale + self.biases[2 * m - 1]  # type: ignore[index]
        if m == 1 and self.dropout is not None:
            h = self.dropout(h)  # no inner activation to drop after
        return h

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.beta * self.residual(x) if self.beta != 1.0 else self.residual(x)
        if self.skip:
            if self.shortcut is None:
                out = out + x
            else:
                out = out + self.shortcut(x + self.biases[0] if self.biases is not None else x)
        return self.acts[-1](out)


class ResNetModule(nn.Module):
    """stem → blocks → (global average pooling) → head, with Fixup's stem and head biases."""

    def __init__(self, stem: nn.Sequential, blocks: list[ResidualBlock], head: nn.Linear, spatial: bool,
                 flatten: bool, fixup_scalars: bool):
        super().__init__()
        self.stem = stem
        self.blocks = nn.Sequential(*blocks)
        self.head = head
        self.spatial, self.flatten = spatial, flatten
        self.num_blocks = len(blocks)
        # Zhang et al.'s code adds a scalar bias before the stem's activation (``biases[0]``)
        # and one before the classifier (``biases[1]``)
        self.biases = nn.ParameterList([nn.Parameter(torch.zeros(1)) for _ in range(2)]) if fixup_scalars else None

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The stem's output z^0 = φ(N(W^0 x) + c), the input of the first block."""
        if self.flatten:
            x = x.flatten(1)
        h = x
        for module in self.stem[:-1]:  # W^0, then N where the normalizer has one
            h = module(h)
        if self.biases is not None:
            h = h + self.biases[0]
        return self.stem[-1](h)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.blocks(self.features(x))
        if self.spatial:
            h = h.mean(dim=(2, 3))  # global average pooling
        if self.biases is not None:
            h = h + self.biases[1]
        return self.head(h)


# --------------------------------------------------------------------------- architectures
class ResNet(Architecture):
    """Residual network z^l = φ(β·F(W^l, z^{l−1}) + S(z^{l−1})) (He et al. 2016; survey eq. (19)).

    x → stem z^0 = φ(N(W^0 x)) (a k×k conv, or a linear layer) → L residual blocks → global
    average pooling (conv) → linear head f = W^out z̄ + b. Each block's branch F has
    ``branch_depth`` m weight layers, N(W_i ·) with φ between them: for m = 2 He et al.'s
    basic block F(z) = N(W_2 φ(N(W_1 z))). The shortcut S is the identity where the block
    keeps the shape, and where it changes (more channels, stride > 1) a projection
    N(W_s z) with a 1×1 conv / linear W_s (option B), or, with ``shortcut: zero_pad``,
    the subsampled z with zero channels appended (option A, no parameters).

    ``stages`` lists {blocks, channels, stride}; the default is He et al. §4.2's CIFAR
    ResNet-20 (3 stages of 3 blocks, 16/32/64 channels, strides 1/2/2; ≈ 0.27M parameters).
    ``width`` multiplies every stage's channels. An 8×8 input ends at 2×2 after the two
    stride-2 stages; inputs smaller than the strides keep one position (padding k//2).

    ``kind: dense`` (``auto`` for inputs that are not C×H×W) makes every weight layer linear
    on the flattened input, N the normalizer's 1-D feature layer, and ignores strides.

    ``beta`` scales the branch: z = φ(β·F + S); ``1/sqrt(L)`` is Balduzzi et al. 2017's
    β = 1/√L (survey §4.4). ``fixup_scalars`` adds Zhang, Dauphin & Ma 2019's scalars
    (Fixup, survey §4.4): a bias (init 0) before each weight layer and each activation of a
    branch, a multiplier (init 1) on the branch output, and biases after the stem and
    before the head; the ``fixup`` initializer sets them and the weights. The scalars alone
    change nothing at their initial values.

    Weight layers keep PyTorch's default initialization unless the pipeline names an
    initializer; every weight layer goes through ``normalizer.parametrize``, the normalizer's
    feature layer follows every weight layer but the head. ``dropout`` acts inside branches.
    """

    cache_version: ClassVar[int] = 1
    Params = ResNetParams
    #: False for the plain twin: blocks compute φ(β·F(z)), no shortcut is built
    skip: ClassVar[bool] = True

    def layout(self) -> tuple[list[StageSpec], int]:
        """(stages, branch depth) before the width multiplier."""
        return list(self.params.stages), self.params.branch_depth

    def num_blocks(self) -> int:
        return sum(s.blocks for s in self.layout()[0])

    def beta(self) -> float:
        beta = self.params.beta
        return 1.0 / math.sqrt(self.num_blocks()) if beta == INV_SQRT_L else float(beta)

    def build(self, input_shape: tuple[int, ...], output_dim: int, normalizer: Normalizer) -> nn.Module:
        p = self.params
        stages, m = self.layout()
        kind = p.kind if p.kind != "auto" else ("conv" if len(input_shape) == 3 else "dense")
        if kind == "conv" and len(input_shape) != 3:
            raise StageError(f"{type(self).__name__.lower()} kind: conv needs C×H×W inputs, these have shape "
                             f"{tuple(input_shape)} (use kind: dense, or a dataset giving images, e.g. digits with flatten: false)")
        conv = kind == "conv"
        spatial = 2 if conv else 0
        k = p.kernel_size

        def weight(c_in: int, c_out: int, stride: int = 1, kernel: int = k) -> nn.Module:
            if conv:
                layer: nn.Module = nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=kernel // 2, bias=p.bias)
            else:
                layer = nn.Linear(c_in, c_out, bias=p.bias)
            return normalizer.parametrize(layer)

        def act() -> nn.Module:
            return p.activation.instantiate().build()

        channels = [max(1, round(s.channels * p.width)) for s in stages]
        c_in = input_shape[0] if conv else math.prod(input_shape)
        c = channels[0]
        stem: list[nn.Module] = [weight(c_in, c)]
        norm = normalizer.feature_layer(c, spatial)
        if norm is not None:
            stem.append(norm)
        stem.append(act())

        beta, blocks = self.beta(), []
        for stage, c_out in zip(stages, channels):
            for b in range(stage.blocks):
                stride = stage.stride if (b == 0 and conv) else 1
                branch = [weight(c if i == 0 else c_out, c_out, stride if i == 0 else 1) for i in range(m)]
                norms = [normalizer.feature_layer(c_out, spatial) for _ in range(m)]
                shortcut: nn.Module | None = None
                if self.skip and (stride != 1 or c != c_out):
                    if p.shortcut == "zero_pad":
                        shortcut = ZeroPadShortcut(c, c_out, stride, conv)
                    else:
                        proj = [weight(c, c_out, stride, kernel=1)]
                        proj_norm = normalizer.feature_layer(c_out, spatial)
                        if proj_norm is not None:
                            proj.append(proj_norm)
                        shortcut = nn.Sequential(*proj)
                blocks.append(ResidualBlock(branch, norms, [act() for _ in range(m)], shortcut, beta, self.skip,
                                            p.fixup_scalars, p.dropout))
                c = c_out
        head = normalizer.parametrize(nn.Linear(c, output_dim))
        return ResNetModule(nn.Sequential(*stem), blocks, head, spatial=conv, flatten=not conv,
                            fixup_scalars=p.fixup_scalars)

    def activation(self) -> Activation:
        return self.params.activation.instantiate()


class Plain(ResNet):
    """The plain twin of ``resnet``: z^l = φ(β·F(W^l, z^{l−1})), every skip connection removed.

    He et al. 2016 (Fig. 1, Table 6; survey §4.4): a plain network of the same layers gets
    *worse* training error as it gets deeper, which the shortcuts fix. Same params and the
    same stem, branches, normalization, pooling and head as ``resnet``, so that a matrix over
    ``model.arch.name: [resnet, plain]`` compares twins; only the shortcuts are gone — with
    them the projection shortcuts' parameters (``shortcut: projection``), so the plain net has
    that many fewer parameters (none fewer against ``shortcut: zero_pad``, whose shortcuts
    have none). ``shortcut`` is accepted and has no effect. Its blocks are ``ResidualBlock``
    modules with ``skip`` False, which the ``fixup`` initializer refuses.
    """

    cache_version: ClassVar[int] = 1
    skip: ClassVar[bool] = False


class _CifarResNet(ResNet):
    n: ClassVar[int] = 0
    Params = PresetParams

    def layout(self) -> tuple[list[StageSpec], int]:
        return cifar_stages(self.n), 2


class ResNet20(_CifarResNet):
    """He et al. 2016's CIFAR ResNet-20 (§4.2, Table 6): 6n+2 = 20 weight layers, n = 3.

    The ``resnet`` architecture (z^l = φ(F(W^l, z^{l−1}) + S(z^{l−1}))) with a fixed layout:
    a 3×3 stem conv, 3 stages of n = 3 basic blocks (two 3×3 convs each) of 16/32/64
    channels with strides 1/2/2, global average pooling and a linear head; ≈ 0.27M
    parameters for 3×32×32 inputs and 10 classes. Every other ``resnet`` param (``width``,
    ``beta``, ``shortcut``, ``fixup_scalars``, ...) may be set; ``stages`` and
    ``branch_depth`` are the name.
    """

    cache_version: ClassVar[int] = 1
    n: ClassVar[int] = 3


class ResNet32(_CifarResNet):
    """He et al. 2016's CIFAR ResNet-32 (§4.2, Table 6): 6n+2 = 32 weight layers, n = 5.

    As ``resnet20`` (whose docstring gives the layout) with 5 blocks per stage; ≈ 0.46M
    parameters for 3×32×32 inputs and 10 classes.
    """

    cache_version: ClassVar[int] = 1
    n: ClassVar[int] = 5


class ResNet56(_CifarResNet):
    """He et al. 2016's CIFAR ResNet-56 (§4.2, Table 6): 6n+2 = 56 weight layers, n = 9.

    As ``resnet20`` (whose docstring gives the layout) with 9 blocks per stage; ≈ 0.85M
    parameters for 3×32×32 inputs and 10 classes.
    """

    cache_version: ClassVar[int] = 1
    n: ClassVar[int] = 9
