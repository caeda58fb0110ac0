"""An optimizer's state as a stage artifact: safetensors for the tensors, JSON for the rest.

``torch.optim.Optimizer.state_dict()`` is ``{"state": {index: {name: tensor | number}},
"param_groups": [...]}``, parameters named by their index in the optimizer's order. It is
kept as two files side by side, never a pickle: ``optimizer/step_N.safetensors`` holds every
tensor under ``"{index}.{name}"``, ``optimizer/step_N.json`` the optimizer's class, the
number and shapes of its parameters, the non-tensor state values and the param groups (for
reading only: a stage that loads the state keeps its own hyperparameters) and, given the
model, each parameter's qualified name: a stage that groups its parameters in another
order (``param_groups``) still gets each parameter's own state.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    import torch

FORMAT = 1


def optimizer_files(step: int | None) -> tuple[str, str]:
    """The two files (tensors, rest) of the optimizer state at step N, or of ``final``."""
    stem = "optimizer/final" if step is None else f"optimizer/step_{step}"
    return f"{stem}.safetensors", f"{stem}.json"


def parameter_names(optimizer: "torch.optim.Optimizer", model: "torch.nn.Module | None") -> list[str] | None:
    """The qualified name of each of ``optimizer``'s parameters in its order (None without a model)."""
    if model is None:
        return None
    by_id = {id(p): name for name, p in model.named_parameters()}
    return [by_id.get(id(p), f"?{i}") for i, p in enumerate(p for g in optimizer.param_groups for p in g["params"])]


def save_optimizer_state(optimizer: "torch.optim.Optimizer", out_dir: Path, step: int | None,
                         model: "torch.nn.Module | None" = None) -> Path:
    """Write ``optimizer``'s state under ``out_dir`` (see the module docstring); returns the JSON file."""
    import torch
    from safetensors.torch import save_file

    state = optimizer.state_dict()
    params = [p for group in optimizer.param_groups for p in group["params"]]
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for index, entries in state["state"].items():
        for name, value in entries.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{index}.{name}"] = value.detach().contiguous().cpu().clone()
            else:
                scalars.setdefault(str(index), {})[name] = value
    tensor_file, meta_file = (out_dir / f for f in optimizer_files(step))
    tensor_file.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(tensor_file))
    meta = {"format": FORMAT, "optimizer": type(optimizer).__name__, "shapes": [list(p.shape) for p in params],
            "names": parameter_names(optimizer, model),
            "scalars": scalars, "param_groups": [{k: v for k, v in g.items() if k != "params"} for g in state["param_groups"]]}
    meta_file.write_text(json.dumps(meta, default=str), encoding="utf-8")
    return meta_file


def read_optimizer_state(stage_dir: Path, step: int | None) -> tuple[dict[str, Any], dict[int, dict[str, Any]]] | None:
    """``(meta, state)`` of the state kept in ``stage_dir`` at ``step`` (``state``: index ->
    name -> tensor or number, as ``state_dict()["state"]``); None when none was kept."""
    from safetensors.torch import load_file

    tensor_file, meta_file = (stage_dir / f for f in optimizer_files(step))
    if not (tensor_file.is_file() and meta_file.is_file()):
        return None
    meta = json.loads(meta_file.read_text(encoding="utf-8"))
    state: dict[int, dict[str, Any]] = {}
    for key, value in load_file(str(tensor_file)).items():
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    for index, entries in meta.get("scalars", {}).items():
        state.setdefault(int(index), {}).update(entries)
    return meta, state


def write_optimizer_state(meta: dict[str, Any], state: dict[int, dict[str, Any]], out_dir: Path,
                          step: int | None = None) -> None:
    """Write a ``(meta, state)`` pair read by ``read_optimizer_state`` (a rewind's copy)."""
    import torch
    from safetensors.torch import save_file

    tensors = {f"{i}.{n}": v.detach().contiguous().cpu().clone() for i, e in state.items() for n, v in e.items()
               if isinstance(v, torch.Tensor)}
    scalars = {str(i): {n: v for n, v in e.items() if not isinstance(v, torch.Tensor)} for i, e in state.items()}
    tensor_file, meta_file = (out_dir / f for f in optimizer_files(step))
    tensor_file.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(tensor_file))
    meta_file.write_text(json.dumps({**meta, "scalars": {k: v for k, v in scalars.items() if v}}, default=str),
                         encoding="utf-8")


def load_into(optimizer: "torch.optim.Optimizer", meta: dict[str, Any], state: dict[int, dict[str, Any]],
              model: "torch.nn.Module | None" = None) -> None:
    """Put a kept state into ``optimizer`` (its own param groups and hyperparameters stay),
    each parameter's state matched by name where both sides know the names, else by
    position. Raises ``ValueError`` naming the mismatch when the state is another
    optimizer's or for other parameters."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    if meta.get("optimizer") != type(optimizer).__name__:
        raise ValueError(f"the kept state is a {meta.get('optimizer')}'s, and this stage's optimizer is a "
                         f"{type(optimizer).__name__}")
    old_names, new_names = meta.get("names"), parameter_names(optimizer, model)
    if old_names and new_names:
        if sorted(old_names) != sorted(new_names):
            missing = sorted(set(new_names) - set(old_names)) or sorted(set(old_names) - set(new_names))
            raise ValueError(f"the kept state is for other parameters (differing in: {', '.join(missing[:3])})")
        position = {name: i for i, name in enumerate(new_names)}
        state = {position[old_names[i]]: entries for i, entries in state.items()}
    shapes = [list(p.shape) for p in params]
    kept_shapes = meta.get("shapes") or []
    if old_names and new_names:
        kept_shapes = [kept_shapes[old_names.index(n)] for n in new_names]
    if kept_shapes != shapes:
        raise ValueError(f"the kept state is for {len(meta.get('shapes') or [])} parameters of other shapes than "
                         f"this model's {len(shapes)}")
    current = optimizer.state_dict()
    optimizer.load_state_dict({"state": state, "param_groups": current["param_groups"]})
