"""Parameterizations of a dense layer: standard (PyTorch's) and NTK (Jacot et al. 2018).

Under the NTK parameterization a layer of fan-in n computes

    z = (σ_w / √n) · W x + σ_b · b,        W_ij, b_i ~ N(0, 1),

so the trainable parameters are O(1) at any width and the function at initialization has
the same distribution as the standard parameterization with W ~ N(0, σ_w²/n),
b ~ N(0, σ_b²); the gradients differ, and only under this one does the neural tangent
kernel converge to a deterministic limit as the widths grow (Jacot, Gabriel & Hongler 2018;
Lee et al. 2019). σ_w and σ_b are neural-tangents' ``W_std`` and ``b_std``.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class NTKLinear(nn.Linear):
    """``nn.Linear`` under the NTK parameterization: y = (σ_w/√n)·x Wᵀ + σ_b·b, W, b ~ N(0, 1).

    ``weight_scale`` = σ_w/√n and ``bias_scale`` = σ_b are plain attributes (not parameters),
    read by kernels that compute the NTK layer by layer. A normalizer's parametrization of
    ``weight`` (weight or spectral normalization) applies before the scale.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, W_std: float = 1.0,
                 b_std: float = 0.0):
        self.weight_scale = W_std / math.sqrt(in_features)
        self.bias_scale = float(b_std)
        super().__init__(in_features, out_features, bias=bias)

    def reset_parameters(self) -> None:
        # N(0, 1) entries: the scales above carry σ_w/√n and σ_b (the point of the parameterization).
        nn.init.normal_(self.weight)
        if self.bias is not None:
            nn.init.normal_(self.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = nn.functional.linear(x, self.weight) * self.weight_scale
        if self.bias is not None:
            out = out + self.bias_scale * self.bias
        return out

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, weight_scale={self.weight_scale:.4g}, bias_scale={self.bias_scale:.4g}"


def standard_gaussian_(layer: nn.Linear, W_std: float, b_std: float) -> nn.Linear:
    """The standard parameterization with Gaussian init: W ~ N(0, σ_w²/n), b ~ N(0, σ_b²)."""
    with torch.no_grad():
        layer.weight.normal_(0.0, W_std / math.sqrt(layer.in_features))
        if layer.bias is not None:
            layer.bias.normal_(0.0, b_std)
    return layer
