"""Normalization by reparametrizing each weight: weight and spectral normalization (survey §4.3).

Both use ``torch.nn.utils.parametrizations``: the layer keeps ``weight`` as a function of
its original parameters, recomputed at every forward pass, so the optimizer moves the
original parameters.
"""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field
from torch import nn

from nnopt.core.component import Params
from nnopt.core.kinds import Normalizer


class WeightNorm(Normalizer):
    """Weight normalization (Salimans & Kingma 2016; survey §4.3): w = g · v / ‖v‖.

    Each output unit's weight vector w_i (a row of a linear layer's W, one output channel of
    a convolution) is written as a magnitude g_i and a direction v_i, trained separately;
    at construction g_i = ‖w_i‖ and v_i = w_i, so the function is unchanged.
    ``torch.nn.utils.parametrizations.weight_norm`` (dim 0).
    """

    cache_version: ClassVar[int] = 1

    def parametrize(self, layer: nn.Module) -> nn.Module:
        from torch.nn.utils.parametrizations import weight_norm

        return weight_norm(layer, name="weight", dim=0)


class SpectralNormParams(Params):
    power_iterations: int = Field(1, ge=1, description="power-iteration steps per forward pass in training")
    eps: float = Field(1e-12, gt=0.0, description="ε guarding the normalization of the power-iteration vectors")


class SpectralNorm(Normalizer):
    """Spectral normalization (Miyato et al. 2018; survey §4.3): W̄ = W / σ_max(W).

    σ_max(W), the largest singular value (a convolution's kernel reshaped to (out, in·k)), is
    estimated by power iteration, u ← Wv/‖Wv‖, v ← Wᵀu/‖Wᵀu‖, σ ≈ uᵀWv, carrying u and v over
    from step to step (``power_iterations`` steps per training forward pass), so every layer
    is 1-Lipschitz up to the estimate. ``torch.nn.utils.parametrizations.spectral_norm``.
    """

    cache_version: ClassVar[int] = 1
    Params = SpectralNormParams

    def parametrize(self, layer: nn.Module) -> nn.Module:
        from torch.nn.utils.parametrizations import spectral_norm

        return spectral_norm(layer, name="weight", n_power_iterations=self.params.power_iterations, eps=self.params.eps)
