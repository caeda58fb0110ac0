"""Margin losses of a real score z against a label y ∈ {−1, +1}: logistic and hinge
(survey §2, eq. (3): ℓ(y, z) = log(1 + exp(−yz)), and the hinge loss of SVMs).

Which data they take (checked at every call, with a message naming what was found):

- ``classification`` data (class indices, int64 of shape (n,)): binary labels c ∈ {0, 1} are
  mapped to y = 2c − 1. The model gives one output z per sample, shape (n,) or (n, 1), or
  two (a 2-class model, the dataset's ``output_dim``), read as the score z = z₁ − z₀ — then
  the logistic loss is exactly the 2-class cross-entropy. The hinge loss also takes C > 2
  classes (its multiclass forms); the logistic loss does not (use ``cross_entropy``).
- ``regression`` data (float targets) whose values are all −1 or +1, with one output.

``reduction``: "mean" averages ℓ over samples, "sum" adds them, "none" returns one ℓ per
sample (shape (n,)).
"""

from __future__ import annotations

from typing import Callable, ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from nnopt.core.component import Params
from nnopt.core.kinds import Loss

from .cross_entropy import REDUCTIONS


def signed_labels(targets: torch.Tensor, name: str) -> torch.Tensor:
    """y ∈ {−1, +1} as a float vector: class indices 0/1 mapped by 2c − 1, ±1 floats as they are."""
    targets = targets.reshape(-1) if targets.dim() == 2 and targets.shape[1] == 1 else targets
    if targets.dim() != 1:
        raise ValueError(f"{name}: expected one label per sample, got targets of shape {tuple(targets.shape)}")
    if targets.is_floating_point():
        if not bool(((targets == 1) | (targets == -1)).all()):
            raise ValueError(f"{name}: regression targets must be −1 or +1 (found values {_some(targets)})")
        return targets
    if not bool(((targets == 0) | (targets == 1)).all()):
        raise ValueError(f"{name}: binary class labels must be 0 or 1 (found {_some(targets)}); "
                         "for more classes use cross_entropy" + (" or hinge" if name == "logistic" else ""))
    return 2.0 * targets.to(torch.get_default_dtype()) - 1.0


def _some(t: torch.Tensor) -> str:
    values = torch.unique(t.detach().cpu())[:5].tolist()
    return ", ".join(f"{v:g}" for v in values)


def binary_score(outputs: torch.Tensor, name: str) -> torch.Tensor:
    """z per sample: the single output, or z₁ − z₀ of a two-output model."""
    if outputs.dim() == 1:
        return outputs
    if outputs.dim() == 2 and outputs.shape[1] == 1:
        return outputs[:, 0]
    if outputs.dim() == 2 and outputs.shape[1] == 2:
        return outputs[:, 1] - outputs[:, 0]
    raise ValueError(f"{name}: expected one score per sample (outputs of shape (n,), (n, 1) or (n, 2)), "
                     f"got outputs of shape {tuple(outputs.shape)}")


def _reduce(per_sample: torch.Tensor, reduction: str) -> torch.Tensor:
    return per_sample.mean() if reduction == "mean" else per_sample.sum() if reduction == "sum" else per_sample


def _check(reduction: str) -> None:
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, not {reduction!r}")


class Logistic(Loss):
    """ℓ(y, z) = log(1 + exp(−y·z)), y ∈ {−1, +1}: the logistic loss of the survey's eq. (3).

    Computed as softplus(−yz), which neither overflows for a large negative margin nor loses
    precision for a large positive one. Labels are class indices 0/1 (mapped to 2c − 1) or
    ±1 regression targets; scores are one output per sample or z₁ − z₀ of two (module
    docstring). Equivalent to binary cross-entropy with sigmoid(z) as the probability of +1.
    """

    cache_version: ClassVar[int] = 1

    def build(self, reduction: Literal["mean", "sum", "none"] = "mean") -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        _check(reduction)

        def logistic(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
            z = binary_score(outputs, "logistic")
            y = signed_labels(targets, "logistic").to(z.dtype)
            if y.shape != z.shape:
                raise ValueError(f"logistic: {y.shape[0]} labels for {z.shape[0]} scores")
            return _reduce(F.softplus(-y * z), reduction)

        return logistic


class HingeParams(Params):
    margin: float = Field(1.0, gt=0.0, description="m: a sample costs nothing once its margin y·z (or z_y − z_j) is ≥ m")
    power: Literal[1, 2] = Field(1, description="p: 1 is the hinge, 2 the squared hinge max(0, m − yz)²")
    multiclass: Literal["crammer_singer", "multi_margin"] = Field(
        "crammer_singer",
        description="for C > 2 classes: `crammer_singer` max(0, m − z_y + max_{j≠y} z_j)^p; `multi_margin` "
        "Σ_{j≠y} max(0, m − z_y + z_j)^p / C (torch's multi_margin_loss, Weston & Watkins up to 1/C)",
    )


class Hinge(Loss):
    """ℓ(y, z) = max(0, m − y·z)^p for y ∈ {−1, +1}; for C classes, a multiclass hinge.

    The support-vector-machine loss (Cortes & Vapnik 1995), m = ``margin``, p = ``power`` (2:
    squared hinge). Binary labels and scores as for ``logistic`` (class indices 0/1 or ±1
    targets; one output, or z₁ − z₀ of two, which is also the Crammer–Singer loss for C = 2).
    With C > 2 outputs and class-index targets: Crammer & Singer 2001's
    max(0, m − z_y + max_{j≠y} z_j)^p, or ``multi_margin`` (torch.nn.functional.multi_margin_loss):
    (1/C) Σ_{j≠y} max(0, m − z_y + z_j)^p.
    """

    cache_version: ClassVar[int] = 1
    Params = HingeParams

    def build(self, reduction: Literal["mean", "sum", "none"] = "mean") -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        _check(reduction)
        p = self.params

        def hinge(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
            if outputs.dim() == 2 and outputs.shape[1] > 2:
                return _reduce(self._multiclass(outputs, targets), reduction)
            z = binary_score(outputs, "hinge")
            y = signed_labels(targets, "hinge").to(z.dtype)
            if y.shape != z.shape:
                raise ValueError(f"hinge: {y.shape[0]} labels for {z.shape[0]} scores")
            return _reduce(torch.clamp(p.margin - y * z, min=0.0) ** p.power, reduction)

        return hinge

    def _multiclass(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        p, classes = self.params, outputs.shape[1]
        if targets.is_floating_point() or targets.shape != (outputs.shape[0],):
            raise ValueError(f"hinge: {classes} outputs need class-index targets of shape ({outputs.shape[0]},), "
                             f"got {targets.dtype} targets of shape {tuple(targets.shape)}")
        targets = targets.long()
        if bool(((targets < 0) | (targets >= classes)).any()):
            raise ValueError(f"hinge: class labels must lie in 0..{classes - 1} (found {_some(targets)})")
        if p.multiclass == "multi_margin":
            return F.multi_margin_loss(outputs, targets, p=p.power, margin=p.margin, reduction="none")
        true = outputs.gather(1, targets[:, None])[:, 0]
        others = outputs.scatter(1, targets[:, None], float("-inf")).amax(dim=1)
        return torch.clamp(p.margin - true + others, min=0.0) ** p.power
