"""The ``model:`` section of a pipeline, and how a model is built from it.

``arch`` builds the module for the data's shape, ``norm`` is handed to the architecture so it
can place normalization layers, and ``init`` (when given) re-initializes the parameters; when
``init`` is absent the architecture's own (PyTorch default) initialization stands.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

from pydantic import BaseModel, ConfigDict, Field

from .component import ArchitectureRef, InitializerRef, NormalizerRef
from .kinds import DataSplit, Normalizer

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from torch import nn


class ModelSpec(BaseModel):
    """``model: {arch: ..., init: ..., norm: ...}``."""

    model_config = ConfigDict(extra="forbid")

    arch: ArchitectureRef = Field(  # type: ignore[valid-type]
        ..., description="the architecture (kind `architectures`), built for the data's input shape and output size")
    init: InitializerRef | None = Field(  # type: ignore[valid-type]
        None, description="re-initializes the parameters after the build (None: the architecture's own init)")
    norm: NormalizerRef | None = Field(  # type: ignore[valid-type]
        None, description="the normalizer the architecture places in its layers (None: none)")


def build_model(
    spec: ModelSpec, data: DataSplit, seed: int, device: "torch.device", initialize: bool = True
) -> "nn.Module":
    """A freshly initialized model for ``data``; the same (spec, data, seed) gives the same bits.

    ``initialize=False`` skips ``init`` (for a model whose weights are loaded right after).
    """
    import torch

    generator = torch.Generator(device="cpu").manual_seed(seed)
    # Architectures build layers with torch's global RNG (nn.Linear's own reset_parameters);
    # fork it so that building a model never disturbs the caller's random stream.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        normalizer = spec.norm.instantiate() if spec.norm is not None else Normalizer()
        arch = spec.arch.instantiate()
        model = arch.build(tuple(data.input_shape), int(data.output_dim), normalizer)
    model = model.to(device)
    if initialize and spec.init is not None:
        sample_inputs = _sampler(data, generator, device)
        spec.init.instantiate().initialize(model, sample_inputs, generator, activation=arch.activation())
    return model


def _sampler(data: DataSplit, generator: "torch.Generator", device: "torch.device") -> Callable[[], "torch.Tensor"]:
    import torch

    def sample_inputs(batch_size: int = 256) -> "torch.Tensor":
        n = data.n_train
        idx = torch.randperm(n, generator=generator)[: min(batch_size, n)]
        return data.x_train[idx.to(data.x_train.device)].to(device)

    return sample_inputs
