"""Squared error for regression (survey §2, eq. (3) and the least squares problem (4))."""

from __future__ import annotations

from typing import Callable, ClassVar, Literal

import torch
import torch.nn.functional as F

from nnopt.core.kinds import Loss

from .cross_entropy import REDUCTIONS


class MSE(Loss):
    """Mean squared error, in ``torch.nn.functional.mse_loss``'s convention.

    For outputs z ∈ R^{n×k} and targets y ∈ R^{n×k}:

    - "mean": (1/(n·k)) Σ_i ‖z_i − y_i‖², the mean over *all elements* (torch's convention;
      it is the survey's (1/n) Σ_i ℓ(y_i, z_i) of eq. (3), with ℓ(y, z) = ‖y − z‖², divided
      by k — and no ½);
    - "sum": Σ_i ‖z_i − y_i‖²;
    - "none": ‖z_i − y_i‖² for each sample i, shape (n,): the survey's per-sample ℓ, summed
      over the k outputs. So sum(none) equals "sum" and mean(none) equals k times "mean".

    Targets are shaped to the outputs, never broadcast (broadcasting (n,) against (n, 1)
    would silently compare every output with every target):

    - integer targets of shape (n,) with k > 1 outputs are class indices and are one-hot
      encoded (squared-error classification, as in NTK / kernel regression studies);
    - targets of shape (n,) with k = 1 are reshaped to (n, 1), whatever their dtype;
    - targets of the outputs' own shape are used as they are (cast to the outputs' dtype);
    - any other pair of shapes is a ValueError naming both.
    """

    cache_version: ClassVar[int] = 1

    def build(self, reduction: Literal["mean", "sum", "none"] = "mean") -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        if reduction not in REDUCTIONS:
            raise ValueError(f"reduction must be one of {REDUCTIONS}, not {reduction!r}")

        def mse(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
            targets = match_targets(outputs, targets)
            if reduction != "none":
                return F.mse_loss(outputs, targets, reduction=reduction)
            squared = (outputs - targets).square()
            return squared.flatten(1).sum(1) if squared.dim() > 1 else squared

        return mse


def match_targets(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``targets`` in the shape and dtype of ``outputs`` (see ``MSE``)."""
    if targets.shape != outputs.shape:
        n = outputs.shape[0] if outputs.dim() else None
        if outputs.dim() == 2 and targets.shape == (n,):
            if outputs.shape[1] == 1:
                targets = targets.reshape(n, 1)
            elif not targets.is_floating_point() and not targets.is_complex():
                targets = F.one_hot(targets.long(), outputs.shape[1])
        if targets.shape != outputs.shape:
            raise ValueError(
                f"mse: targets of shape {tuple(targets.shape)} do not fit outputs of shape {tuple(outputs.shape)}"
            )
    return targets.to(outputs.dtype)
