"""Softmax cross-entropy for classification (survey §2, eq. (3))."""

from __future__ import annotations

from functools import partial
from typing import Callable, ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from nnopt.core.component import Params
from nnopt.core.kinds import Loss

REDUCTIONS = ("mean", "sum", "none")


class CrossEntropyParams(Params):
    label_smoothing: float = Field(
        0.0, ge=0.0, lt=1.0, description="ε of label smoothing: the target is (1−ε)·onehot(y) + ε/C"
    )


class CrossEntropy(Loss):
    """ℓ(y, z) = −log softmax(z)_y = log Σ_c e^{z_c} − z_y, the multiclass logistic loss.

    The multiclass form of the survey's log(1 + exp(−yz)) in eq. (3). With label smoothing
    ε (Szegedy et al. 2016) the target distribution is q = (1−ε)·onehot(y) + ε/C and
    ℓ = −Σ_c q_c log softmax(z)_c. Outputs are logits of shape (n, C); targets are class
    indices (int64, shape (n,)) or class probabilities (float, shape (n, C)).
    ``reduction``: "mean" averages ℓ over samples, "sum" adds them, "none" returns one ℓ per
    sample (shape (n,)).
    """

    tasks: ClassVar[frozenset[str]] = frozenset({"classification"})

    cache_version: ClassVar[int] = 1
    Params = CrossEntropyParams

    def build(self, reduction: Literal["mean", "sum", "none"] = "mean") -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        if reduction not in REDUCTIONS:
            raise ValueError(f"reduction must be one of {REDUCTIONS}, not {reduction!r}")
        return partial(F.cross_entropy, reduction=reduction, label_smoothing=self.params.label_smoothing)
