"""Full-batch gradient descent (survey §5.1: the batch method SGD is compared against)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, Iterable

import torch
from pydantic import Field

from nnopt.core.component import Params
from nnopt.core.errors import StageError
from nnopt.core.kinds import Optimizer
from nnopt.core.loop import StepRule

from .fused import build_fused_if_supported

if TYPE_CHECKING:  # pragma: no cover
    from nnopt.core.loop import TrainLoop


# Rows of the train split per forward pass of a full-batch gradient, where a method has no
# `chunk_size` of its own: bounds the activations held at once (the chunks' mean losses are
# weighted by their sizes, so the sum is the full-batch mean up to rounding).
DEFAULT_CHUNK = 8192


def require_full_batch(loop: "TrainLoop", method: str) -> None:
    """Refuse a stage whose epoch has more than one step: a full-batch method takes the whole
    train split at every step, so with ``batch_size < n_train`` the stage's ``epochs`` and
    logged ``epoch`` would count ⌈n/b⌉ full passes as one epoch."""
    if loop.per_epoch != 1:
        n = loop.data.n_train
        raise StageError(
            f"{method} uses the whole train split ({n} examples) at every step, so an epoch is one step: "
            f"set the data's batch_size to at least {n} (it is {loop.batch_size}); the chunk size of the "
            f"gradient sum is the optimizer's `chunk_size`"
        )


def full_batch_loss(loop: "TrainLoop", chunk_size: int, backward: bool = True) -> torch.Tensor:
    """L(θ) = (1/n) Σ_i ℓ_i(θ) over the whole train split, and (with ``backward``) its gradient
    accumulated into ``p.grad``.

    The split is taken in its stored order in chunks C of at most ``chunk_size`` examples;
    each chunk's mean loss enters with weight |C|/n, so for a loss with ``mean`` reduction
    the sum is exactly the full-batch mean, whatever the chunking (up to rounding). Gradients
    accumulate, so the caller zeroes them first. Returns the detached loss (a 0-d tensor).
    """
    x, y, n = loop.data.x_train, loop.data.y_train, loop.data.n_train
    total, dtype = torch.zeros((), device=x.device, dtype=torch.float64), torch.get_default_dtype()
    for start in range(0, n, chunk_size):
        xb, yb = x[start : start + chunk_size], y[start : start + chunk_size]
        with loop.forward():
            loss = loop.loss_fn(loop.model(xb), yb) * (xb.shape[0] / n)
        if backward:
            loss.backward()
        total += loss.detach().double()  # summed in float64, returned in the loss's own dtype
        dtype = loss.dtype
    return total.to(dtype)


class FullBatchStep(StepRule):
    """One step on the full-batch gradient ∇L(θ) = (1/n) Σ_i ∇ℓ_i(θ) (the loop's batch is not
    used); the reported loss is L(θ) at the weights before the update."""

    def __init__(self, chunk_size: int = DEFAULT_CHUNK, method: str = "gd", one_step_epochs: bool = True):
        # one_step_epochs: refuse a batch_size that makes an epoch more than one step (gd,
        # lbfgs); a method that is full-batch only by option (barzilai_borwein) counts
        # epochs by the data's batch_size like any other
        self.chunk_size, self.method, self.one_step_epochs = chunk_size, method, one_step_epochs

    def step(self, loop: "TrainLoop", xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        if self.one_step_epochs and (loop.step == 0 or loop.per_epoch != 1):
            require_full_batch(loop, self.method)
        loop.optimizer.zero_grad(set_to_none=True)
        loss = full_batch_loss(loop, self.chunk_size)
        for hook in loop.hooks.after_backward:
            hook(loop)
        loop.optimizer.step()
        return loss


class GDParams(Params):
    lr: float = Field(0.1, gt=0.0, description="learning rate η (scaled by the schedule)")
    momentum: float = Field(0.0, ge=0.0, lt=1.0, description="heavy-ball coefficient μ (torch's form b = μb + ∇L); 0 is plain GD")
    weight_decay: float = Field(0.0, ge=0.0, description="L2 coefficient λ added to the gradient as λθ")
    chunk_size: int = Field(
        4096, ge=1,
        description="examples per forward/backward while summing the full gradient: bounds memory; the sum is the "
        "same up to float rounding (so it is part of the stage key)",
    )


class GD(Optimizer):
    """Gradient descent on the full training loss: θ_{t+1} = θ_t − η_t (∇L(θ_t) + λθ_t),
    L(θ) = (1/n) Σ_{i=1}^n ℓ(f_θ(x_i), y_i) — the batch gradient method of the survey's §5.1
    (Robbins–Monro's SGD replaces ∇L by one sample's or one mini-batch's gradient).

    With ``momentum`` μ > 0 it is heavy ball on the full gradient, in torch's form
    b_t = μ b_{t−1} + g_t (b_1 = g_1), θ_{t+1} = θ_t − η_t b_t (Polyak 1964). The update is
    ``torch.optim.SGD``; the gradient is the sum over the whole train split in chunks of
    ``chunk_size`` examples (``FullBatchStep``), so every step is one pass over the data.

    Steps and epochs: an epoch of gd is one step. The train stage counts ⌈n/batch_size⌉ steps
    per epoch, so gd requires the data's ``batch_size`` ≥ n_train (a stage-level ``data``
    override is the way to give it its own), and a stage with a smaller batch fails at its
    first step saying so; then ``steps``, ``epochs`` and the logged ``epoch`` all count
    gradient evaluations over the full set. The logged train loss of a step is the full-batch
    loss L(θ_t) before its update, and ``batch_size`` does not enter the result.
    """

    cache_version: ClassVar[int] = 1
    Params = GDParams

    def build(self, params: Iterable[Any], device: torch.device) -> torch.optim.Optimizer:
        options = self.params.model_dump(exclude={"chunk_size"})
        # the fused SGD kernel, as for `momentum` (momentum.py has the numbers); a gd step is
        # dominated by the pass over the data anyway
        return build_fused_if_supported(torch.optim.SGD, params, device, fused_on=("cpu", "cuda"), **options)

    def step_rule(self) -> StepRule:
        return FullBatchStep(self.params.chunk_size, "gd")
