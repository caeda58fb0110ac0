"""Reddi, Kale & Kumar (2018)'s online linear problem, on which Adam converges to the worst point."""

from __future__ import annotations

from typing import ClassVar

import torch
from pydantic import Field

from nnopt.core.kinds import Dataset, DatasetParams, DataSplit


class OnlineParams(DatasetParams):
    batch_size: int = Field(1, ge=1, description="examples per step: 1 is the online setting, one f_t per step")
    c: float = Field(3.0, gt=0.0, description="C: the rare gradient; Reddi et al.'s counterexample needs C > 2")
    period: int = Field(3, ge=2, description="p: f_t(x) = C·x when t mod p = 1, else −x")


class Online(Dataset):
    """The online linear losses of Reddi et al. 2018 (Theorem 1; survey §5.4): over x ∈ [−1, 1],

        f_t(x) = C·x   if t mod p = 1,        f_t(x) = −x   otherwise      (t = 1, 2, …).

    One period is the training split: examples i = 0 … p−1 with input a_i = C for i = 0 and
    −1 else, and target 0, so that taken in order (``shuffle: false``, ``batch_size: 1``) step
    t sees a_{(t−1) mod p}. A model turns (a, x) into the loss through its output — the
    ``scalar`` architecture's √(a·x + K) under the squared loss gives exactly a·x + K, a
    linear f_t with gradient a. The average loss (1/p)Σ_i f_i(x) = (C − (p−1))x/p is
    minimized at x = −1 when C > p − 1; the test split is the same period, so the test loss
    of ``scalar`` + ``mse`` is K + (C − p + 1)x/p and says where x is. Shuffled
    (``shuffle: true``) each period is a random order of the same p losses: a stochastic
    version of the problem, with the same expected loss.

    The data are fixed by the params (no randomness): inputs of shape (1,), one output.
    """

    cache_version: ClassVar[int] = 1
    Params = OnlineParams

    def shapes(self, seed: int) -> tuple[tuple[int, ...], int]:
        return (1,), 1

    def load(self, seed: int) -> DataSplit:
        p = self.params
        a = torch.full((p.period, 1), -1.0)
        a[0, 0] = p.c
        y = torch.zeros(p.period, 1)
        return DataSplit(x_train=a, y_train=y, x_test=a.clone(), y_test=y.clone(), task="regression",
                         input_shape=(1,), output_dim=1, meta={"task": "online_linear"})
