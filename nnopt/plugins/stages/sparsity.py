"""Masks and their bookkeeping, shared by the ``prune``, ``rewind`` and masked ``train`` stages.

A mask set is ``{tensor name: 0/1 tensor of that tensor's shape}`` (1 = kept, 0 = pruned),
keyed by the same names as the state dict it constrains (``masks.safetensors``, SPEC §2).
Only the prunable tensors have masks; every other tensor (biases, normalization
parameters, buffers) is left as it is.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from torch import nn


def apply_masks(model_or_state: "nn.Module | Mapping[str, torch.Tensor]", masks: Mapping[str, "torch.Tensor"] | None):
    """Set every masked-out entry to exactly zero, in place, and return what was given.

    ``model_or_state`` is an ``nn.Module`` (its ``state_dict()`` tensors are multiplied in
    place, under ``no_grad``, so parameters stay the same leaf tensors an optimizer holds) or a
    state dict ``{name: tensor}`` (its tensors are changed in place). ``masks`` maps names to
    0/1 tensors of the same shapes; None or ``{}`` changes nothing. A mask naming a tensor the
    model does not have, or of another shape, raises ``ValueError`` naming it: masks applied
    to the wrong model would otherwise silently prune nothing.

    Implemented as ``w.masked_fill_(m == 0, 0)``: in place (no temporary of the weight's size,
    which matters when masked training calls this after every step), and exactly ``+0.0``
    where pruned even if the weight there is inf/nan, which a product ``w * m`` would keep
    as nan. Masks may be float or bool, on any device (moved to the tensor's device here;
    pass them on that device already to save the copy).
    """
    import torch

    if not masks:
        return model_or_state
    if isinstance(model_or_state, torch.nn.Module):
        state = model_or_state.state_dict(keep_vars=True)
    else:
        state = model_or_state
    with torch.no_grad():
        for name, mask in masks.items():
            if name not in state:
                known = ", ".join(sorted(state)[:8])
                raise ValueError(f"mask '{name}' names no tensor of the model (it has: {known}{', ...' if len(state) > 8 else ''})")
            tensor = state[name]
            if tuple(mask.shape) != tuple(tensor.shape):
                raise ValueError(f"mask '{name}' has shape {tuple(mask.shape)}, the tensor {tuple(tensor.shape)}")
            tensor.masked_fill_(mask.to(device=tensor.device) == 0, 0)
    return model_or_state


def sparsity_report(masks: Mapping[str, "torch.Tensor"]) -> dict[str, Any]:
    """How much of each masked tensor remains: ``{"layers": {name: {"weights": n,
    "remaining": k, "fraction": k/n}}, "total": {"weights": N, "remaining": K, "fraction":
    K/N, "sparsity": 1 - K/N}}`` (SPEC §2 results ``sparsity``). Counts are exact integers
    (the number of nonzero mask entries); ``fraction`` is the fraction *remaining*. Each
    layer also carries ``sparsity`` = 1 − fraction, for reading convenience. Layers are
    listed in the masks' order. An empty mask set reports zero weights (fraction 1.0).
    """
    layers: dict[str, dict[str, Any]] = {}
    total_n = total_k = 0
    for name, mask in masks.items():
        n = int(mask.numel())
        k = int(mask.count_nonzero().item())
        layers[name] = {"weights": n, "remaining": k, "fraction": k / n if n else 1.0, "sparsity": 1.0 - (k / n if n else 1.0)}
        total_n += n
        total_k += k
    fraction = total_k / total_n if total_n else 1.0
    return {"layers": layers, "total": {"weights": total_n, "remaining": total_k, "fraction": fraction, "sparsity": 1.0 - fraction}}


def ones_like_masks(state: Mapping[str, "torch.Tensor"], names) -> dict[str, "torch.Tensor"]:
    """All-ones masks (nothing pruned) for the named tensors of ``state``: the ``current``
    masks of a dense model."""
    import torch

    return {name: torch.ones_like(state[name], dtype=torch.float32) for name in names}


def check_masks_fit(masks: Mapping[str, "torch.Tensor"], state: Mapping[str, "torch.Tensor"], where: str) -> None:
    """Raise ``StageError`` if a mask names a tensor ``state`` lacks or has another shape."""
    from nnopt.core.errors import StageError

    for name, mask in masks.items():
        if name not in state:
            raise StageError(f"the masks of {where} name '{name}', which the model does not have")
        if tuple(mask.shape) != tuple(state[name].shape):
            raise StageError(f"the mask '{name}' of {where} has shape {tuple(mask.shape)}, the weight {tuple(state[name].shape)}")


__all__ = ["apply_masks", "sparsity_report", "ones_like_masks", "check_masks_fit"]
