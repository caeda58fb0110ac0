"""The learning-rate range test (Smith 2017, "Cyclical learning rates for training neural
networks", §3.3; survey §5.1 on learning-rate schedules and cyclical rates).

A copy of the model trains for a few steps while the rate grows exponentially from
``lr_min`` to ``lr_max``; the batch loss, smoothed, falls while the rate is useful and
rises sharply once it is too large (on a quadratic: once η > 2/λ_max, where gradient
descent becomes unstable, ``curvature.stability_threshold``). The rate where the loss falls
fastest per decade of rate is the suggestion (the choice fastai's ``lr_find`` popularized);
the rate of the minimum is an upper guide, and the rate where the run blew up bounds it.
"""

from __future__ import annotations

import copy
import math
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable
from nnopt.core import figure_style as fs

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from torch import nn


def _suggestion(lrs: list[float], losses: list[float], window: int) -> float | None:
    """The lr of the most negative d loss / d log lr over the points up to the minimum of
    ``losses``; None when the minimum is the first point (the loss never decreased).

    The slope at i is the difference quotient across i ± ``window``//2 (clipped at the ends),
    and the first ``window`` points are not candidates: a moving average of ``window`` ≈
    1/(1 − β) batch losses still averages fewer than that many there, and the batch-to-batch
    noise it passes is as steep, per step, as the descent itself (fastai's ``lr_find`` skips
    the first points for the same reason).
    """
    if len(losses) < 2:
        return None
    best = min(range(len(losses)), key=losses.__getitem__)
    if best == 0:
        return None
    logs = [math.log(v) for v in lrs[: best + 1]]
    part = losses[: best + 1]
    half = max(1, window // 2)
    start = min(window, best)  # a minimum inside the warm-up still gets a candidate
    steepest, slope = None, 0.0
    for i in range(start, best + 1):
        lo, hi = max(i - half, 0), min(i + half, best)
        if hi == lo:
            continue
        d = (part[hi] - part[lo]) / (logs[hi] - logs[lo])
        if d < slope:
            steepest, slope = i, d
    return float(lrs[steepest]) if steepest is not None else None


def lr_range_test(model: "nn.Module", make_optimizer: Callable[[list["torch.Tensor"]], "torch.optim.Optimizer"],
                  loss_fn: Callable[..., "torch.Tensor"], x: "torch.Tensor", y: "torch.Tensor", batch_size: int,
                  generator: "torch.Generator", lr_min: float, lr_max: float, steps: int = 100,
                  smoothing: float = 0.9, diverge_factor: float = 4.0) -> dict[str, Any]:
    """Smith's (2017) LR range test on a deep copy of ``model`` (the original is untouched).

    Before step t = 0..steps−1 the lr of every param group is set to
    η_t = lr_min·(lr_max/lr_min)^{t/(steps−1)}; the step trains on a batch of ``batch_size``
    examples (each epoch a permutation drawn from ``generator``, as ``TrainLoop`` batches),
    through ``optimizer.step(closure)`` so closure optimizers (L-BFGS) work too. The recorded
    loss is the exponential moving average a_t = β a_{t−1} + (1 − β) ℓ_t of the batch losses
    ℓ_t (β = ``smoothing``), bias-corrected a_t/(1 − β^{t+1}) (as Adam corrects its moments),
    each at the lr of its step. The run stops when a batch loss is not finite or the smoothed
    loss exceeds ``diverge_factor`` × its minimum so far.

    Returns ``{"lrs", "losses", "suggested_lr", "min_loss_lr", "diverged_at", "steps",
    "seconds"}``: ``suggested_lr`` is the lr of the steepest descent of the smoothed loss in
    log lr before its minimum (None if it never decreases), ``diverged_at`` the lr of the
    step where the run stopped (None if it ran all ``steps``), ``steps`` the steps taken.
    """
    import torch

    if not 0 < lr_min < lr_max:
        raise ValueError(f"need 0 < lr_min < lr_max; got {lr_min}, {lr_max}")
    if steps < 2:
        raise ValueError("steps must be ≥ 2")
    t0 = time.perf_counter()
    net = copy.deepcopy(model)
    net.train()
    params = [p for p in net.parameters() if p.requires_grad]
    opt = make_optimizer(params)
    n = int(x.shape[0])
    batch_size = max(1, min(batch_size, n))
    perm, pos = None, n
    lrs: list[float] = []
    losses: list[float] = []
    avg, best = 0.0, math.inf
    diverged_at = None
    taken = 0
    ratio = lr_max / lr_min
    for t in range(steps):
        lr = lr_min * ratio ** (t / (steps - 1))
        for group in opt.param_groups:
            group["lr"] = lr
        if pos + batch_size > n:  # a new epoch: every example once before any repeats
            perm, pos = torch.randperm(n, generator=generator).to(x.device), 0
        idx = perm[pos : pos + batch_size]
        pos += batch_size
        xb, yb = x[idx], y[idx]
        first: list[torch.Tensor] = []

        def closure() -> "torch.Tensor":
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(net(xb), yb)
            loss.backward()
            if not first:
                first.append(loss.detach())
            return loss

        opt.step(closure)
        taken = t + 1
        value = float(first[0])
        if not math.isfinite(value):
            diverged_at = lr
            break
        avg = smoothing * avg + (1 - smoothing) * value
        smoothed = avg / (1 - smoothing ** (t + 1))
        lrs.append(lr)
        losses.append(smoothed)
        best = min(best, smoothed)
        if not math.isfinite(smoothed) or (t > 0 and smoothed > diverge_factor * best):
            diverged_at = lr
            break
    best_i = min(range(len(losses)), key=losses.__getitem__) if losses else None
    return {"lrs": lrs, "losses": losses, "suggested_lr": _suggestion(lrs, losses, max(2, round(1 / (1 - smoothing)))),
            "min_loss_lr": float(lrs[best_i]) if best_i is not None else None,
            "diverged_at": diverged_at, "steps": taken, "seconds": time.perf_counter() - t0}


def plot_lr_range(result: dict[str, Any], path: Path | str) -> Path:
    """The smoothed loss against the learning rate on a log x-axis, with vertical lines at the
    suggested rate, at the pipeline's rate ``result.get("lr")`` where given, and where the run
    diverged; written as PNG to ``path`` (OO matplotlib through ``analyzers._plot``)."""
    from matplotlib.ticker import LogFormatter

    from nnopt.plugins.analyzers._plot import finite_pairs, new_figure, save, set_log_y

    class PlainLogFormatter(LogFormatter):
        """Plain-text log tick labels (``0.01``), not mathtext: see ``analyzers._plot``."""

        def __call__(self, x: float, pos: Any = None) -> str:
            return self.fix_minus(f"{x:g}") if super().__call__(x, pos) else ""

    fig, ax = new_figure()
    xs, ys = finite_pairs(result.get("lrs", []), result.get("losses", []))
    if xs:
        ax.plot(xs, ys, color=fs.BLUE, linewidth=1.4, label="smoothed batch loss")
        set_log_y(ax, ys)
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(PlainLogFormatter(10))
    marks = [("suggested_lr", "suggested", fs.GREEN, "-"), ("lr", "pipeline lr", fs.BLACK, "--"),
             ("diverged_at", "diverged", fs.VERMILLION, ":")]
    for key, label, color, style in marks:
        value = result.get(key)
        if isinstance(value, (int, float)) and math.isfinite(value) and value > 0:
            ax.axvline(value, color=color, linestyle=style, linewidth=1.2, label=f"{label} {value:.3g}")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("loss (smoothed)")
    ax.set_title("learning-rate range test")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    return save(fig, Path(path))
