"""Orthogonal initialization (Saxe et al. 2014; survey §4.2, dynamical isometry)."""

from __future__ import annotations

from typing import ClassVar

import torch

from nnopt.core.component import Params
from nnopt.core.kinds import Activation

from ._common import (
    BiasMode, Nonlinearity, WeightInitializer, bias_field, negative_slope_field, nonlinearity_field, resolve_gain,
)


class OrthogonalParams(Params):
    nonlinearity: Nonlinearity = nonlinearity_field("linear", "1")
    negative_slope: float = negative_slope_field()
    bias: BiasMode = bias_field()


class Orthogonal(WeightInitializer):
    """Saxe, McClelland & Ganguli 2014, "Exact solutions to the nonlinear dynamics of learning
    in deep linear neural networks" (survey §4.2: LSUV's first step, and "dynamical
    isometry", ref. [184]).

    Each weight, viewed as a matrix of shape (out, in·k) (a convolution's kernel flattened),
    is set to W = gain · Q with Q a uniformly random (Haar) orthogonal matrix: Q from the QR
    decomposition A = QR of a Gaussian matrix A (of shape (max, min) of the two sides), with
    the sign correction Q ← Q · diag(sign(R_ii)) that makes it Haar-distributed, transposed
    when out < in·k. So WᵀW = gain²·I when out ≥ in·k (tall) and WWᵀ = gain²·I when wide: all
    singular values equal gain, and a product of such layers stays an isometry.

    The default ``nonlinearity: linear`` is gain 1 (Saxe's deep linear networks, and
    ``torch.nn.init.orthogonal_``'s default); ``auto`` takes the architecture's activation's
    ``gain()`` (1 when it reports none), a name forces torch's ``calculate_gain``. ``bias:
    zero`` zeroes biases, ``keep`` leaves them as built. The Gaussian is drawn from the
    generator on its device; the QR is computed there in float64.
    """

    cache_version: ClassVar[int] = 1
    Params = OrthogonalParams

    def gain(self, activation: Activation | None) -> float:
        p = self.params
        return resolve_gain(p.nonlinearity, p.negative_slope, activation, unknown=1.0)

    def draw(self, weight: torch.Tensor, generator: torch.Generator, gain: float) -> torch.Tensor:
        rows, cols = weight.shape[0], weight[0].numel()
        a = torch.empty((max(rows, cols), min(rows, cols)), dtype=torch.float64, device=generator.device)
        a.normal_(0.0, 1.0, generator=generator)
        q, r = torch.linalg.qr(a)
        q = q * torch.sign(torch.diagonal(r)).where(torch.diagonal(r) != 0, torch.ones((), dtype=torch.float64, device=a.device))
        if rows < cols:
            q = q.T
        return (gain * q).to(weight.dtype).reshape(weight.shape)
