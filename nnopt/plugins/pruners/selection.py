"""Which tensors of a model a pruner may prune (the pruners' ``prunable`` param).

The default is what the lottery-ticket literature prunes (Frankle & Carbin 2019; Han et al.
2015): the ``weight`` of every linear and convolution layer. Biases and normalization
parameters are left dense: they are few, and pruning a BatchNorm scale or a bias removes a
whole unit's offset rather than one connection.
"""

from __future__ import annotations

import fnmatch
from typing import TYPE_CHECKING

from pydantic import Field, field_validator

from nnopt.core.component import Params
from nnopt.core.errors import StageError

if TYPE_CHECKING:  # pragma: no cover
    from torch import nn

#: selectors with a meaning of their own; anything else is a glob on qualified parameter names
SELECTORS = {
    "linear": "the `weight` of every nn.Linear",
    "conv": "the `weight` of every convolution (nn.Conv1d/2d/3d and their transposes)",
}
DEFAULT_PRUNABLE = ("linear", "conv")


class PrunerParams(Params):
    """The ``prunable`` param every built-in pruner takes."""

    prunable: list[str] = Field(
        list(DEFAULT_PRUNABLE), min_length=1,
        description="which tensors may be pruned: " + "; ".join(f"`{k}`: {v}" for k, v in SELECTORS.items())
        + "; or glob patterns on qualified parameter names (`features.*.weight`, `output.weight`). "
        "A tensor is prunable when any entry selects it; each entry must select at least one parameter. "
        "Default [linear, conv]: biases and normalization parameters are not pruned",
    )

    @field_validator("prunable")
    @classmethod
    def _not_empty(cls, value: list[str]) -> list[str]:
        if any(not s.strip() for s in value):
            raise ValueError("a prunable selector cannot be empty")
        return value


def _layer_weights(model: "nn.Module", selector: str) -> list[str]:
    from torch import nn

    types: tuple[type, ...] = (nn.Linear,) if selector == "linear" else (nn.modules.conv._ConvNd,)
    params = dict(model.named_parameters())
    out = []
    for mod_name, module in model.named_modules():
        name = f"{mod_name}.weight" if mod_name else "weight"
        # a reparametrized weight (weight/spectral norm) is a function, not a parameter of its
        # own: masking its `original` would not make the weight sparse, so it is not selected
        # by default (a glob on `*.parametrizations.weight.original*` selects it deliberately)
        if isinstance(module, types) and name in params:
            out.append(name)
    return out


def prunable_names(model: "nn.Module", patterns: "list[str] | tuple[str, ...] | None" = None) -> list[str]:
    """The names (state-dict keys) of ``model``'s prunable tensors, in the model's parameter
    order. ``patterns`` are selectors (``linear``, ``conv``) or globs on qualified parameter
    names; None means ``[linear, conv]``. Only parameters are selectable (never buffers such
    as BatchNorm's running statistics), and only floating ones.

    A pattern selecting nothing raises ``StageError`` naming it (a misspelt glob would
    otherwise silently prune nothing), except a default selector on a model that lacks that
    layer type (an MLP has no convolutions); so does a selection that is empty as a whole.
    """
    patterns = list(DEFAULT_PRUNABLE if patterns is None else patterns)
    explicit = patterns != list(DEFAULT_PRUNABLE)
    params = {n: p for n, p in model.named_parameters() if p.is_floating_point()}
    chosen: set[str] = set()
    for pattern in patterns:
        if pattern in SELECTORS:
            hits = _layer_weights(model, pattern)
        else:
            hits = [n for n in params if fnmatch.fnmatchcase(n, pattern)]
        if not hits and explicit:
            sample = ", ".join(list(params)[:6]) + (", ..." if len(params) > 6 else "")
            raise StageError(f"prunable: '{pattern}' selects no parameter of this model (its parameters: {sample})")
        chosen.update(hits)
    if not chosen:
        raise StageError("prunable: nothing to prune: this model has no linear or convolution weights "
                         "(name the tensors to prune with `prunable`)")
    return [n for n in params if n in chosen]


__all__ = ["DEFAULT_PRUNABLE", "PrunerParams", "SELECTORS", "prunable_names"]
