"""Layer-sequential unit-variance (LSUV) initialization (Mishkin & Matas 2016; survey §4.2)."""

from __future__ import annotations

from typing import Callable, ClassVar

import torch
from pydantic import Field
from torch import nn

from nnopt.core.component import Params
from nnopt.core.kinds import Activation, Initializer

from ._common import BiasMode, assign, bias_field, weight_layers
from .orthogonal import Orthogonal


class LSUVParams(Params):
    tolerance: float = Field(0.1, gt=0.0, description="stop rescaling a layer once |Var(output) − 1| < tolerance")
    max_iterations: int = Field(10, ge=1, description="at most this many rescalings of each layer")
    batch_size: int = Field(256, ge=1, description="training inputs in the batch whose outputs are measured")
    bias: BiasMode = bias_field()


class LSUV(Initializer):
    """Mishkin & Matas 2016, "All you need is a good init" (ICLR; survey §4.2).

    1. Every Linear/Conv weight is set to an orthogonal matrix, W = Q (Saxe et al. 2014,
       drawn exactly as ``orthogonal`` with gain 1), and biases are zeroed (``bias: keep``
       leaves them as built).
    2. One batch B of ``batch_size`` training inputs is drawn (``sample_inputs``), and the
       layers are visited in the order the forward pass first calls them. For layer l, with
       its output y^l(B) recorded by a forward hook, and Var the variance over all entries of
       that output (batch, features and positions together):

           while |Var(y^l(B)) − 1| ≥ tolerance and fewer than max_iterations rescalings:
               W^l ← W^l / √Var(y^l(B))

       Earlier layers are already fixed, so each layer's input is final when it is scaled;
       with zero biases one rescaling gives Var = 1 on B exactly, and the loop matters only
       for kept biases (or modules whose output is not linear in W, such as normalization
       right after the layer). A layer whose output has zero or non-finite variance is left
       as it is; a layer the forward pass never calls keeps its orthogonal weight.

    The passes run under ``torch.no_grad`` with the model in eval mode (dropout off, batch
    norm does not update its running statistics); each module's train/eval flag is restored
    afterwards. A layer whose weight is reparametrized (weight / spectral normalization) is
    assigned the rescaled matrix through its parametrization's ``right_inverse``. Randomness
    comes only from the generator (the orthogonal draws, and the batch's indices through
    ``sample_inputs``).
    """

    cache_version: ClassVar[int] = 1
    Params = LSUVParams

    def initialize(
        self, model: nn.Module, sample_inputs: Callable[..., torch.Tensor], generator: torch.Generator,
        activation: Activation | None = None,
    ) -> None:
        p = self.params
        orthogonal = Orthogonal(Orthogonal.Params())
        layers = list(weight_layers(model))
        for module in layers:
            assign(module, "weight", orthogonal.draw(module.weight, generator, 1.0))
            if p.bias == "zero" and module.bias is not None:
                assign(module, "bias", torch.zeros_like(module.bias))
        if not layers:
            return

        modes = {module: module.training for module in model.modules()}
        model.eval()
        try:
            with torch.no_grad():
                batch = sample_inputs(p.batch_size)
                for module in _forward_order(model, layers, batch):
                    for _ in range(p.max_iterations):
                        var = _output_variance(model, module, batch)
                        if not torch.isfinite(torch.tensor(var)) or var <= 0.0 or abs(var - 1.0) < p.tolerance:
                            break
                        assign(module, "weight", module.weight / var**0.5)
        finally:
            for module, training in modes.items():
                module.training = training


def _forward_order(model: nn.Module, layers: list[nn.Module], batch: torch.Tensor) -> list[nn.Module]:
    """``layers`` in the order one forward pass of ``batch`` first calls them (uncalled: dropped)."""
    order: list[nn.Module] = []
    seen: set[int] = set()

    def record(module: nn.Module, inputs: object, output: object) -> None:
        if id(module) not in seen:
            seen.add(id(module))
            order.append(module)

    handles = [layer.register_forward_hook(record) for layer in layers]
    try:
        model(batch)
    finally:
        for handle in handles:
            handle.remove()
    return order


def _output_variance(model: nn.Module, layer: nn.Module, batch: torch.Tensor) -> float:
    """The variance of all entries of ``layer``'s output (its first call) in a forward pass of ``batch``."""
    outputs: list[torch.Tensor] = []

    def capture(module: nn.Module, inputs: object, output: torch.Tensor) -> None:
        if not outputs:
            outputs.append(output.detach())

    handle = layer.register_forward_hook(capture)
    try:
        model(batch)
    finally:
        handle.remove()
    return float(outputs[0].double().var())
