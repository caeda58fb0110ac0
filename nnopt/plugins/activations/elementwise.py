"""Elementwise activations φ: R → R applied entrywise (survey §2, eq. (1)-(2)).

Each class maps onto one ``torch.nn`` module; ``build`` returns a fresh module every call, so
an architecture can place one after every hidden layer.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field
from torch import nn

from nnopt.core.component import Params
from nnopt.core.kinds import Activation


class _Elementwise(Activation):
    """An activation that is exactly ``module(**params)``. ``torch_gain`` names its gain in
    ``torch.nn.init.calculate_gain`` where torch has one; the others use the second-moment
    gain of ``Activation.gain``."""

    cache_version: ClassVar[int] = 1
    module: ClassVar[type[nn.Module]]
    torch_gain: ClassVar[str | None] = None

    def build(self) -> nn.Module:
        return self.module(**self.params.model_dump())

    def gain(self) -> float:
        if self.torch_gain is None:
            return super().gain()
        param = self.params.model_dump().get("negative_slope")
        return float(nn.init.calculate_gain(self.torch_gain, param))


class ReLU(_Elementwise):
    """φ(x) = max(x, 0), the rectifier (Glorot et al. 2011; survey §4.2, ref. [76])."""

    module = nn.ReLU
    torch_gain = "relu"


class Tanh(_Elementwise):
    """φ(x) = tanh(x) = 2 / (1 + e^{−2x}) − 1 (survey §4.2)."""

    module = nn.Tanh
    torch_gain = "tanh"


class Sigmoid(_Elementwise):
    """φ(x) = 1 / (1 + e^{−x}), the logistic function (LeCun et al.'s setting, survey §4.2)."""

    module = nn.Sigmoid
    torch_gain = "sigmoid"


class GELUParams(Params):
    approximate: Literal["none", "tanh"] = Field(
        "none", description="'none': exact x·Φ(x); 'tanh': Hendrycks & Gimpel's tanh approximation"
    )


class GELU(_Elementwise):
    """φ(x) = x·Φ(x), Φ the standard normal CDF (Hendrycks & Gimpel 2016)."""

    Params = GELUParams
    module = nn.GELU


class Linear(_Elementwise):
    """φ(x) = x, the identity: a deep *linear* network (survey §2.2, §6.3.1)."""

    module = nn.Identity
    torch_gain = "linear"


class LeakyReLUParams(Params):
    negative_slope: float = Field(0.01, ge=0.0, le=1.0, description="slope a of φ for x < 0")


class LeakyReLU(_Elementwise):
    """φ(x) = max(x, 0) + a·min(x, 0), the leaky rectifier (Maas et al. 2013)."""

    Params = LeakyReLUParams
    module = nn.LeakyReLU
    torch_gain = "leaky_relu"


class ELUParams(Params):
    alpha: float = Field(1.0, ge=0.0, description="saturation value −α of φ as x → −∞")


class ELU(_Elementwise):
    """φ(x) = x for x > 0, α(e^x − 1) otherwise (Clevert et al. 2016)."""

    Params = ELUParams
    module = nn.ELU


class SoftplusParams(Params):
    beta: float = Field(1.0, gt=0.0, description="sharpness β; φ → ReLU as β → ∞")


class Softplus(_Elementwise):
    """φ(x) = (1/β)·log(1 + e^{βx}), a smooth ReLU."""

    Params = SoftplusParams
    module = nn.Softplus


class SELU(_Elementwise):
    """φ(x) = λ·ELU_α(x), λ ≈ 1.0507, α ≈ 1.6733: self-normalizing (Klambauer et al. 2017)."""

    module = nn.SELU
    torch_gain = "selu"


class SiLU(_Elementwise):
    """φ(x) = x·σ(x), the swish / SiLU (Ramachandran et al. 2017; Elfwing et al. 2018)."""

    module = nn.SiLU


class _ErfModule(nn.Module):
    def forward(self, x):  # noqa: D102 - φ(x) = erf(x)
        import torch

        return torch.special.erf(x)


class Erf(_Elementwise):
    """φ(x) = erf(x) = (2/√π)∫₀ˣ e^{−t²} dt: a tanh-like sigmoid whose Gaussian expectations have
    closed forms, the usual activation of mean-field and NTK calculations (Williams 1997)."""

    module = _ErfModule


class _AbsModule(nn.Module):
    def forward(self, x):  # noqa: D102 - φ(x) = |x|
        return x.abs()


class Abs(_Elementwise):
    """φ(x) = |x| = relu(x) + relu(−x), an activation with a closed-form arc-cosine dual
    (Cho & Saul 2009's degree-1 kernel, doubled and shifted; used by neural-tangents' ``stax.Abs``)."""

    module = _AbsModule


class _SquareModule(nn.Module):
    def forward(self, x):  # noqa: D102 - φ(x) = x²
        return x * x


class Quadratic(_Elementwise):
    """φ(x) = x², the quadratic activation of the landscape analyses of shallow networks
    (e.g. Soltanolkotabi, Javanmard & Lee 2018; Du & Lee 2018; survey §6)."""

    module = _SquareModule
