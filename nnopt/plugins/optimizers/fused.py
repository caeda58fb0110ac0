"""Building a torch optimizer with its fused kernel where that is the faster choice."""

from __future__ import annotations

from typing import Any, Iterable

import torch


def build_fused_if_supported(
    cls: type[torch.optim.Optimizer], params: Iterable[Any], device: torch.device | str,
    fused_on: tuple[str, ...] = ("cpu", "cuda"), **options: Any,
) -> torch.optim.Optimizer:
    """``cls(params, fused=True, **options)`` on the device types in ``fused_on``, else without.

    Fused kernels update every parameter in one kernel. Whether torch can fuse is not
    guessed: it checks the parameters' devices and dtypes when the optimizer is built, and
    raises if it cannot; the optimizer is then built with torch's default (``foreach``).
    """
    params = list(params)  # may be a generator: it is consumed at most twice
    if torch.device(device).type not in fused_on:
        return cls(params, **options)
    try:
        return cls(params, fused=True, **options)
    except (RuntimeError, ValueError, TypeError):  # torch cannot fuse these parameters
        return cls(params, **options)
