"""Fan-based variance-scaling initializers: LeCun, Xavier (Glorot), geometric (survey §4.2).

Each draws every Linear/Conv weight i.i.d. with mean 0 and a variance set by the layer's
fans (``fan_in`` = in-features, ``fan_out`` = out-features, both times the kernel size for
convolutions), from a normal N(0, σ²) or a uniform U(−√3σ, √3σ) of the same variance.
Kaiming (He) initialization, the same with ReLU's gain, is in ``kaiming``.
"""

from __future__ import annotations

import math
from typing import ClassVar, Literal

import torch
from pydantic import Field

from nnopt.core.component import Params
from nnopt.core.kinds import Activation

from ._common import (
    BiasMode, Nonlinearity, WeightInitializer, bias_field, empty_for, fans, negative_slope_field, nonlinearity_field,
    resolve_gain,
)


class GainParams(Params):
    nonlinearity: Nonlinearity = nonlinearity_field("linear", "1")
    negative_slope: float = negative_slope_field()
    bias: BiasMode = bias_field()


class _VarianceScaling(WeightInitializer):
    """W_ij i.i.d. with mean 0 and variance ``variance(fan_in, fan_out, gain)``."""

    distribution: ClassVar[str] = "normal"
    Params = GainParams

    def gain(self, activation: Activation | None) -> float:
        p = self.params
        return resolve_gain(p.nonlinearity, p.negative_slope, activation, unknown=1.0)

    def variance(self, fan_in: int, fan_out: int, gain: float) -> float:
        raise NotImplementedError(f"{type(self).__name__}.variance")

    def distribution_of(self) -> str:
        return self.distribution

    def draw(self, weight: torch.Tensor, generator: torch.Generator, gain: float) -> torch.Tensor:
        std = math.sqrt(self.variance(*fans(weight.shape), gain))
        drawn = empty_for(weight, generator)
        if self.distribution_of() == "normal":
            return drawn.normal_(0.0, std, generator=generator)
        bound = math.sqrt(3.0) * std
        return drawn.uniform_(-bound, bound, generator=generator)


class LeCunNormal(_VarianceScaling):
    """LeCun et al. 1998, "Efficient BackProp" (survey §4.2, eq. (15), ref. [113]).

    W_ij ~ N(0, gain² / fan_in): a unit-variance input keeps unit variance through a linear
    (or tanh in its linear regime) neuron. The default ``nonlinearity: linear`` is gain 1,
    LeCun's own var = 1/fan_in; ``auto`` takes the architecture's activation's ``gain()``
    (1 when the architecture reports none), a name forces torch's ``calculate_gain``.
    ``bias: zero`` zeroes biases, ``keep`` leaves them as built.
    """

    cache_version: ClassVar[int] = 1

    def variance(self, fan_in: int, fan_out: int, gain: float) -> float:
        return gain**2 / fan_in


class LeCunUniform(LeCunNormal):
    """LeCun et al. 1998 (survey §4.2, eq. (15), ref. [113]), uniform of the same variance.

    W_ij ~ U(−b, b), b = gain·√(3 / fan_in), so var = gain²/fan_in. Gain default: ``linear``
    (1, LeCun's own); ``auto`` and names as in ``lecun_normal``.
    """

    cache_version: ClassVar[int] = 1
    distribution: ClassVar[str] = "uniform"


class XavierNormal(_VarianceScaling):
    """Glorot & Bengio 2010, "Understanding the difficulty of training deep feedforward neural
    networks" (survey §4.2, eq. (16), ref. [75]).

    W_ij ~ N(0, gain² · 2 / (fan_in + fan_out)): the compromise between keeping the forward
    variance (1/fan_in) and the backward one (1/fan_out). The default ``nonlinearity:
    linear`` is gain 1, the paper's own var = 2/(fan_in + fan_out); ``auto`` takes the
    architecture's activation's ``gain()`` (1 when it reports none), a name forces torch's
    ``calculate_gain``. ``bias: zero`` zeroes biases, ``keep`` leaves them as built.
    """

    cache_version: ClassVar[int] = 1

    def variance(self, fan_in: int, fan_out: int, gain: float) -> float:
        return gain**2 * 2.0 / (fan_in + fan_out)


class XavierUniform(XavierNormal):
    """Glorot & Bengio 2010 (survey §4.2, eq. (16), ref. [75]), the paper's uniform form.

    W_ij ~ U(−b, b), b = gain·√6 / √(fan_in + fan_out), so var = gain²·2/(fan_in + fan_out).
    Gain default: ``linear`` (1, the paper's); ``auto`` and names as in ``xavier_normal``.
    """

    cache_version: ClassVar[int] = 1
    distribution: ClassVar[str] = "uniform"


class GeometricParams(Params):
    c: float = Field(1.0, gt=0.0, description="the constant c of var = c/√(fan_in·fan_out)")
    distribution: Literal["normal", "uniform"] = Field(
        "normal", description="N(0, var), or U(−√(3 var), √(3 var)) of the same variance"
    )
    bias: BiasMode = bias_field()


class Geometric(_VarianceScaling):
    """Geometric-mean fan initialization (survey §4.2, after eq. (17), ref. [47]).

    W_ij i.i.d. with mean 0 and var = c / √(fan_in · fan_out): where Kaiming balances only
    the forward (fan_in) or the backward (fan_out) signal, the geometric mean of the fans
    balances both. c (default 1) plays the role of a squared gain; it takes no
    ``nonlinearity``. Normal (default) or uniform of the same variance. ``bias: zero``
    zeroes biases, ``keep`` leaves them as built.
    """

    cache_version: ClassVar[int] = 1
    Params = GeometricParams

    def gain(self, activation: Activation | None) -> float:
        return 1.0

    def variance(self, fan_in: int, fan_out: int, gain: float) -> float:
        return self.params.c / math.sqrt(fan_in * fan_out)

    def distribution_of(self) -> str:
        return self.params.distribution
