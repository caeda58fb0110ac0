"""The gradient noise scale: the batch size beyond which a larger batch stops paying.

McCandlish, Kaplan, Amodei et al. 2018 ("An empirical model of large-batch training") model
an SGD step on a batch of B examples: the gain per step saturates once B exceeds the noise
scale, and its simple form

    B_simple = tr(Σ) / |G|²

(G the full-batch gradient, Σ the covariance of per-example gradients) predicts the critical
batch size: much below it each example is nearly as useful as in the full batch (a bigger
batch is almost free speed-up); much above it a bigger batch only wastes compute. The
diagnose stage reads ``batch_too_small`` / ``batch_too_large`` from it (survey §5.1 on
mini-batch SGD, §5.5 on large-batch training).

Estimated without per-example gradients, from mini-batch gradient norms at two sizes
(McCandlish et al., appendix A.1): E|G_B|² = |G|² + tr(Σ)/B, so for B_s < B_b

    |G|² ≈ (B_b|G_Bb|² − B_s|G_Bs|²)/(B_b − B_s),    tr Σ ≈ (|G_Bs|² − |G_Bb|²)/(1/B_s − 1/B_b),

each unbiased; the norms are averaged over repeated draws *before* the ratio (a ratio of
means, since the mean of ratios of noisy estimates is biased and may divide by a negative).
"""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from torch import nn


def _grad_sq(model: "nn.Module", params: list["torch.Tensor"], loss_fn: Callable[..., "torch.Tensor"],
             x: "torch.Tensor", y: "torch.Tensor") -> float:
    """|∇L_B|² of the batch-mean loss, without touching ``.grad``."""
    import torch

    grads = torch.autograd.grad(loss_fn(model(x), y), params, allow_unused=True)
    return float(sum((g.double() ** 2).sum() for g in grads if g is not None))


def gradient_noise_scale(model: "nn.Module", loss_fn: Callable[..., "torch.Tensor"], x: "torch.Tensor",
                         y: "torch.Tensor", generator: "torch.Generator", small_batch: int, big_batch: int,
                         repeats: int = 8, finite_population: bool = True) -> dict[str, Any]:
    """The simple noise scale B_simple = tr(Σ)/|G|² of McCandlish et al. 2018 (appendix A.1;
    module docstring) at the model's current weights, over the examples (x, y).

    Each of ``repeats`` draws takes a random permutation of the n examples (from
    ``generator``) and cuts from it a small batch of ``small_batch`` and, disjoint from it
    where n ≥ B_s + B_b, a big batch of ``big_batch``; the squared gradient norms S_s, S_b are
    averaged over the draws, then solved for |G|² and tr Σ. Batches drawn *without*
    replacement from n examples have E|G_B|² = |G|² + tr(Σ)·c(B), c(B) = (n − B)/((n − 1)B)
    (the finite-population correction); with ``finite_population`` (default) that c(B) is
    used — exact for this population, Σ = (1/n) Σ_i (g_i − G)(g_i − G)ᵀ —, without it the
    paper's c(B) = 1/B (an infinite population). The model is in eval mode while measuring
    (dropout off, BatchNorm on running statistics: examples independent) and gets its mode
    back; weights and ``.grad`` are untouched.

    Returns ``{"b_simple", "grad_sq", "trace_sigma", "small_batch", "big_batch", "repeats",
    "seconds"}``; ``b_simple`` is inf when the |G|² estimate is ≤ 0 (at this scale the
    gradient is pure noise), and a negative tr Σ estimate counts as 0.
    """
    from nnopt.plugins.analyzers.hvp import analysis_mode

    t0 = time.perf_counter()
    n = int(x.shape[0])
    if not 1 <= small_batch < big_batch <= n:
        raise ValueError(f"need 1 ≤ small_batch < big_batch ≤ n examples; got {small_batch}, {big_batch}, n={n}")
    if repeats < 1:
        raise ValueError("repeats must be ≥ 1")
    import torch

    params = [p for p in model.parameters() if p.requires_grad]
    disjoint = n >= small_batch + big_batch
    s_small = s_big = 0.0
    with analysis_mode(model, "eval", x, n):
        for _ in range(repeats):
            perm = torch.randperm(n, generator=generator).to(x.device)
            small = perm[:small_batch]
            big = perm[small_batch : small_batch + big_batch] if disjoint else perm[n - big_batch :]
            s_small += _grad_sq(model, params, loss_fn, x[small], y[small])
            s_big += _grad_sq(model, params, loss_fn, x[big], y[big])
    s_small, s_big = s_small / repeats, s_big / repeats

    def c(b: int) -> float:
        return (n - b) / ((n - 1) * b) if finite_population and n > 1 else 1.0 / b

    trace_sigma = (s_small - s_big) / (c(small_batch) - c(big_batch))
    grad_sq = s_big - trace_sigma * c(big_batch)  # = (B_b S_b − B_s S_s)/(B_b − B_s) when c = 1/B
    if grad_sq <= 0:
        b_simple = math.inf
    else:
        b_simple = max(trace_sigma, 0.0) / grad_sq
    return {"b_simple": float(b_simple), "grad_sq": float(grad_sq), "trace_sigma": float(trace_sigma),
            "small_batch": int(small_batch), "big_batch": int(big_batch), "repeats": int(repeats),
            "seconds": time.perf_counter() - t0}
