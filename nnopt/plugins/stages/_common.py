"""Helpers shared by the built-in stages: seeding and batched evaluation."""

from __future__ import annotations

import random
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Container

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from torch import nn


def seed_everything(seed: int) -> None:
    """Seed Python's ``random``, NumPy's global generator and torch (CPU and CUDA) from ``seed``."""
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def derived_generator(seed: int, salt: int) -> "torch.Generator":
    """A CPU generator for one purpose (``salt``) of a stage, independent of the others."""
    import torch

    return torch.Generator(device="cpu").manual_seed((seed * 1_000_003 + salt) % 2**63)


def fork_rng(device: "torch.device"):
    """``torch.random.fork_rng`` over the CPU generator and, on CUDA, the device's own."""
    import torch

    devices = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else []
    return torch.random.fork_rng(devices=devices)


def labels_of(targets: "torch.Tensor") -> "torch.Tensor":
    """Class indices of classification targets (indices as given, one-hot/soft by argmax)."""
    return targets if targets.ndim == 1 else targets.argmax(-1)


def predictions_of(outputs: "torch.Tensor") -> "torch.Tensor":
    """Predicted classes: argmax of the logits, or ``logit > 0`` for a single output."""
    if outputs.ndim == 1 or outputs.shape[-1] == 1:
        return (outputs.reshape(outputs.shape[0]) > 0).long()
    return outputs.argmax(-1)


def evaluate(
    model: "nn.Module",
    loss_fn: Callable[["torch.Tensor", "torch.Tensor"], "torch.Tensor"],
    x: "torch.Tensor",
    y: "torch.Tensor",
    classification: bool,
    batch_size: int = 1024,
) -> dict[str, Any]:
    """Mean loss (and accuracy for classification) of ``model`` over ``(x, y)``, in eval mode.

    Batched under ``torch.no_grad``; the per-batch mean losses are weighted by batch size, so
    the result is the exact mean over all examples. One host sync at the end. The model's
    train/eval mode is restored. Returns ``{}`` for an empty split.
    """
    import torch

    n = int(x.shape[0])
    if n == 0:
        return {}
    was_training = model.training
    model.eval()
    loss_sum = torch.zeros((), dtype=torch.float64, device=x.device)
    correct = torch.zeros((), dtype=torch.float64, device=x.device)
    try:
        with torch.no_grad():
            for start in range(0, n, batch_size):
                xb, yb = x[start : start + batch_size], y[start : start + batch_size]
                out = model(xb)
                loss_sum += loss_fn(out, yb).double() * xb.shape[0]
                if classification:
                    correct += (predictions_of(out) == labels_of(yb)).sum()
    finally:
        model.train(was_training)
    loss, accuracy = (torch.stack([loss_sum, correct]) / n).tolist()
    return {"loss": loss, "accuracy": accuracy} if classification else {"loss": loss}


def unique_key(name: str, taken: Container[str]) -> str:
    """``name``, or ``name_2``, ``name_3``, ... for the second, third, ... use of a name."""
    if name not in taken:
        return name
    i = 2
    while f"{name}_{i}" in taken:
        i += 1
    return f"{name}_{i}"


def draw_plots(out_dir: Path, key: str, name: str, draw: Callable[[Any, Path], list[Path]], what: Any) -> list[Path]:
    """``draw(what, plots_dir)`` (an analyzer's ``plot`` or ``plot_series``) for the analyzer keyed
    ``key`` in a stage writing to ``out_dir``.

    The first use of a name draws into ``out_dir/plots`` itself; a repeat (``key != name``)
    draws into a scratch directory and its files are moved in prefixed ``{key}_``, so that two
    uses of one analyzer never overwrite each other's plots.
    """
    plots = out_dir / "plots"
    plots.mkdir(parents=True, exist_ok=True)
    if key == name:
        return list(draw(what, plots))
    scratch = out_dir / f".plots_{key}"
    try:
        moved = []
        for path in draw(what, scratch):
            target = plots / f"{key}_{Path(path).name}"
            shutil.move(str(path), target)
            moved.append(target)
        return moved
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
