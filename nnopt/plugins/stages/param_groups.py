"""Per-parameter groups of a train stage: which parameters get their own weight decay or rate.

The common case is no weight decay on biases and normalization parameters (decay pulls a
BatchNorm scale γ toward 0, which changes nothing the layer can express but its effective
learning rate; Loshchilov & Hutter 2019, and timm's ``filter_bias_and_bn``)::

    param_groups:
      - {params: [bias, norm], weight_decay: 0.0}
      - {params: ["output.*"], lr_scale: 0.1}
"""

from __future__ import annotations

import fnmatch
from typing import TYPE_CHECKING, Any

from pydantic import Field, field_validator

from nnopt.core.component import Params
from nnopt.core.errors import StageError

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from torch import nn

#: selectors with a meaning of their own; anything else is a glob on qualified parameter names
SELECTORS = {
    "bias": "every parameter named `bias`",
    "weight": "every parameter named `weight` (or the original of a reparametrized weight)",
    "norm": "every parameter of a normalization layer (torch's Batch/Instance/Layer/Group/RMS norms, or a module "
            "whose class sets `is_normalization = True`)",
    "1d": "every parameter with at most one dimension (biases, normalization scales and shifts)",
}


class ParamGroup(Params):
    """One group: the parameters it selects and the options it overrides for them."""

    params: list[str] = Field(
        ..., min_length=1,
        description="which parameters: " + "; ".join(f"`{k}`: {v}" for k, v in SELECTORS.items())
        + "; or glob patterns on qualified names (`output.*`, `*.linear1.weight`)",
    )
    weight_decay: float | None = Field(None, ge=0.0, description="this group's weight decay (None: the optimizer's)")
    lr_scale: float | None = Field(None, gt=0.0, description="this group's learning rate as a multiple of the optimizer's")

    @field_validator("params")
    @classmethod
    def _not_empty(cls, value: list[str]) -> list[str]:
        if any(not s.strip() for s in value):
            raise ValueError("a parameter selector cannot be empty")
        return value


def _is_norm(module: "nn.Module") -> bool:
    from torch import nn

    norms: tuple[type, ...] = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm, nn.LocalResponseNorm)
    if hasattr(nn, "RMSNorm"):
        norms += (nn.RMSNorm,)
    return isinstance(module, norms) or bool(getattr(type(module), "is_normalization", False))


def _selected(selector: str, name: str, param: "torch.Tensor", norm_params: set[int]) -> bool:
    leaf = name.rsplit(".", 1)[-1]
    if selector == "bias":
        return leaf == "bias"
    if selector == "weight":  # parametrized weights live at `<layer>.parametrizations.weight.original`
        return leaf == "weight" or ".parametrizations.weight." in f".{name}"
    if selector == "norm":
        return id(param) in norm_params
    if selector == "1d":
        return param.dim() <= 1
    return fnmatch.fnmatchcase(name, selector)


def build_param_groups(model: "nn.Module", groups: list[ParamGroup], optimizer_defaults: dict[str, Any] | None = None
                       ) -> list[dict[str, Any]] | list["torch.Tensor"]:
    """The ``params`` argument of the optimizer: the model's trainable parameters, or with
    ``groups`` a list of param-group dicts.

    Each parameter joins the first group that selects it; the rest form the default group,
    which comes first (so the logged ``lr`` is the optimizer's own). A group that selects no
    parameter is a mistake worth a message, not a silent no-op. ``lr_scale`` needs the
    optimizer's ``lr`` (from ``optimizer_defaults``) and is turned into an absolute ``lr``.
    """
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if not groups:
        return [p for _, p in named]
    norm_params = {id(p) for m in model.modules() if _is_norm(m) for p in m.parameters(recurse=False)}
    members: list[list[torch.Tensor]] = [[] for _ in groups]
    rest = []
    for name, param in named:
        index = next((i for i, g in enumerate(groups) if any(_selected(s, name, param, norm_params) for s in g.params)), None)
        (rest if index is None else members[index]).append(param)
    out: list[dict[str, Any]] = [{"params": rest}] if rest else []
    for i, (group, params) in enumerate(zip(groups, members)):
        if not params:
            names = ", ".join(n for n, _ in named[:8]) + (", ..." if len(named) > 8 else "")
            raise StageError(f"param_groups[{i}] ({', '.join(group.params)}) selects no parameter that an earlier group "
                             f"did not take (the model's parameters: {names})")
        entry: dict[str, Any] = {"params": params}
        if group.weight_decay is not None:
            entry["weight_decay"] = group.weight_decay
        if group.lr_scale is not None:
            lr = (optimizer_defaults or {}).get("lr")
            if not isinstance(lr, (int, float)):
                raise StageError(f"param_groups[{i}].lr_scale needs an optimizer with a learning rate `lr`")
            entry["lr"] = float(lr) * group.lr_scale
        out.append(entry)
    return out


def check_group_options(optimizer: "torch.optim.Optimizer", groups: list[ParamGroup]) -> None:
    """A group option the optimizer does not have would be stored and silently ignored by
    ``torch.optim``: refuse it instead."""
    for i, group in enumerate(groups):
        if group.weight_decay is not None and "weight_decay" not in optimizer.defaults:
            raise StageError(f"param_groups[{i}].weight_decay: optimizer {type(optimizer).__name__} has no weight decay")
