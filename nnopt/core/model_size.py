"""How big a stage's model is, known at plan time without allocating it.

The architecture is built on torch's meta device, where tensors have shapes and dtypes but no
storage: a model of 10^12 weights is counted in milliseconds, and one too large for its
device is refused before anything runs instead of failing in the allocator. The data's
shapes come from ``Dataset.shapes``, cheap for the built-in datasets.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from .keys import canonical_json
from .kinds import Normalizer
from .model_spec import ModelSpec


@dataclass(frozen=True)
class ModelSize:
    """A model's parameter count, and the bytes of its weights (parameters and buffers)."""

    params: int
    bytes: int


class ModelSizes:
    """Sizes of the models of one planning, each (data, seed) and (model, shapes) done once:
    a matrix of many combinations usually builds one model many times over."""

    def __init__(self) -> None:
        self._shapes: dict[str, tuple[tuple[int, ...], int] | None] = {}
        self._sizes: dict[str, ModelSize | None] = {}

    def of(self, model: ModelSpec, data: Any, seed: int) -> ModelSize | None:
        """The size of ``model`` built for ``data`` (a resolved dataset reference), or None
        when it cannot be known before running (see ``measure``)."""
        data_key = canonical_json([data.name, data.resolved.model_dump(mode="json"), seed])
        if data_key not in self._shapes:
            self._shapes[data_key] = _shapes(data, seed)
        shapes = self._shapes[data_key]
        if shapes is None:
            return None
        model_key = canonical_json([model.model_dump(mode="json"), shapes])
        if model_key not in self._sizes:
            self._sizes[model_key] = measure(model, *shapes)
        return self._sizes[model_key]


def _shapes(data: Any, seed: int) -> tuple[tuple[int, ...], int] | None:
    # a dataset that cannot give its shapes now (a missing download, a malformed file) fails
    # its stage when it runs, with its own message; planning only loses the numbers
    try:
        input_shape, output_dim = data.instantiate().shapes(seed)
        return tuple(int(s) for s in input_shape), int(output_dim)
    except Exception:
        return None


def measure(model: ModelSpec, input_shape: tuple[int, ...], output_dim: int) -> ModelSize | None:
    """``model``'s size for data of ``input_shape`` and ``output_dim``, from a build on the
    meta device; None if the architecture cannot be built there (a plugin that reads tensor
    values while building): not knowing the size is no reason to refuse a stage."""
    import torch

    try:
        # the global RNG is forked as in build_model: building must not disturb the caller
        with torch.random.fork_rng(devices=[]), torch.device("meta"):
            normalizer = model.norm.instantiate() if model.norm is not None else Normalizer()
            module = model.arch.instantiate().build(tuple(input_shape), int(output_dim), normalizer)
        params = list(module.parameters())
        tensors = params + list(module.buffers())
        return ModelSize(sum(p.numel() for p in params), sum(t.numel() * t.element_size() for t in tensors))
    except Exception:
        return None


def device_memory(device: str) -> int | None:
    """Bytes of memory of ``device`` (``cpu``: physical RAM; ``cuda[:N]``: that GPU's), or None."""
    try:
        if device.startswith("cuda"):
            import torch

            index = int(device.partition(":")[2] or torch.cuda.current_device())
            return int(torch.cuda.get_device_properties(index).total_memory)
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError, RuntimeError):
        return None


def human_bytes(n: int) -> str:
    """``1536`` → ``1.5 KiB``: powers of 1024, one decimal."""
    units = ("B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB")
    size, i = float(n), 0
    while size >= 1024 and i < len(units) - 1:
        size, i = size / 1024, i + 1
    return f"{n} B" if i == 0 else f"{size:.1f} {units[i]}"
