"""Input preprocessing every dataset offers (``DatasetParams.preprocess``; survey §4.3).

The survey motivates normalizing the inputs as preconditioning: for least squares the
Hessian is the input covariance, so centring and scaling each feature brings its condition
number toward that of the correlation matrix, and gradient descent's rate with it.

- ``standardize``: x_j ← (x_j − m_j)/s_j for every feature j (each pixel of each channel of an
  image), with m_j and s_j the mean and (biased) standard deviation over the *train* split;
  the test split uses the same m, s, so no test statistics leak into training. A feature
  constant on the train split (s_j = 0) is only centred.
- ``unit_norm``: x_i ← x_i/‖x_i‖₂ for every example (all features together); an all-zero
  example stays zero.
- ``none``: the inputs as the dataset loads them.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from .kinds import DataSplit


def preprocess(data: "DataSplit", mode: str) -> "DataSplit":
    """``data`` with its inputs normalized by ``mode`` (``none``, ``standardize``, ``unit_norm``)."""
    if mode == "none":
        return data
    if mode == "standardize":
        return _standardize(data)
    if mode == "unit_norm":
        return replace(data, x_train=_unit_norm(data.x_train), x_test=_unit_norm(data.x_test),
                       meta={**data.meta, "preprocess": "unit_norm"})
    raise ValueError(f"unknown preprocess mode {mode!r}")


def _standardize(data: "DataSplit") -> "DataSplit":
    import torch

    x = data.x_train.to(torch.float64)  # statistics in float64: large sets of float32 lose digits
    mean = x.mean(dim=0)
    std = x.std(dim=0, unbiased=False)
    scale = torch.where(std > 0, std, torch.ones_like(std))

    def apply(t: "torch.Tensor") -> "torch.Tensor":
        return ((t.to(torch.float64) - mean) / scale).to(t.dtype)

    return replace(data, x_train=apply(data.x_train), x_test=apply(data.x_test),
                   meta={**data.meta, "preprocess": "standardize"})


def _unit_norm(x: "torch.Tensor") -> "torch.Tensor":
    import torch

    flat = x.reshape(x.shape[0], -1)
    norms = flat.norm(dim=1, keepdim=True)
    return (flat / torch.where(norms > 0, norms, torch.ones_like(norms))).reshape(x.shape)
