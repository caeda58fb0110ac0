"""Magnitude pruning (Han et al. 2015; Frankle & Carbin 2019) and its random control.

Counts are exact. A pruning step removes ``n = ⌊f·r + ½⌋`` entries (round half up) from ``r``
still-unpruned ones, where ``f·r`` is computed exactly on the fraction *as written* (``0.2``
is 1/5, not the binary float just below it), so ``f = 0.5`` of ``r = 3`` removes 2 and
``0.2`` of ``r = 5`` removes exactly 1 on every platform. Which entries go is decided by a
stable sort on ``(|w|, position)``: among equal magnitudes the earlier entry (flat index
within a tensor; with global scope, tensors in the order given, i.e. the model's parameter
order) is removed first. Counts therefore never drift by one when many weights tie (a
threshold ``|w| ≤ t`` would remove every tied entry; ``torch.kthvalue``'s choice among ties
is unspecified).
"""

from __future__ import annotations

import fnmatch
from fractions import Fraction
from typing import TYPE_CHECKING, ClassVar, Literal

from pydantic import Field, field_validator

from nnopt.core.errors import StageError
from nnopt.core.kinds import Pruner

from .selection import PrunerParams

if TYPE_CHECKING:  # pragma: no cover
    import torch


class MagnitudeParams(PrunerParams):
    """How much to prune and how the threshold is shared between tensors."""

    scope: Literal["global", "layerwise"] = Field(
        "global",
        description="`global`: one ranking of |w| over all prunable tensors (those without a `layer_fractions` entry), "
        "removing `fraction` of their unpruned entries together; `layerwise`: each tensor loses `fraction` of its own "
        "unpruned entries",
    )
    fraction: float = Field(0.2, gt=0.0, lt=1.0, description="fraction of the still-unpruned prunable weights removed "
                            "(⌊fraction·remaining + ½⌋ of them)")
    layer_fractions: dict[str, float] = Field(
        {},
        description="per-tensor fractions overriding `fraction`, by tensor name or glob (`output.weight: 0.1`, as "
        "Frankle & Carbin prune the output layer at half the rate); an exact name wins over globs, and among globs "
        "the first listed. A tensor with an entry is always pruned on its own (also with global scope); 0 leaves it dense",
    )

    @field_validator("layer_fractions")
    @classmethod
    def _fractions_in_range(cls, value: dict[str, float]) -> dict[str, float]:
        for name, f in value.items():
            if not name.strip():
                raise ValueError("a layer_fractions key cannot be empty")
            if not 0.0 <= f < 1.0:
                raise ValueError(f"layer_fractions['{name}'] = {f}: a fraction must be in [0, 1)")
        return value


def removal_count(fraction: float, remaining: int) -> int:
    """``⌊fraction·remaining + ½⌋``, exact: the fraction is taken as its shortest decimal
    (``repr``), the way it was written in the file."""
    return int(Fraction(repr(float(fraction))) * remaining + Fraction(1, 2))


def _fraction_for(name: str, overrides: dict[str, float]) -> float | None:
    if name in overrides:
        return overrides[name]
    for pattern, f in overrides.items():
        if fnmatch.fnmatchcase(name, pattern):
            return f
    return None


def _check(weights: dict[str, "torch.Tensor"], current: dict[str, "torch.Tensor"]) -> None:
    import torch

    if set(weights) != set(current):
        raise StageError(f"pruner: weights and masks name different tensors ({sorted(set(weights) ^ set(current))})")
    for name, w in weights.items():
        if tuple(w.shape) != tuple(current[name].shape):
            raise StageError(f"pruner: the mask of '{name}' has shape {tuple(current[name].shape)}, the weight {tuple(w.shape)}")
        if not bool(torch.isfinite(w).all()):
            raise StageError(f"pruner: '{name}' has non-finite weights (nan or inf): magnitudes cannot be ranked")


def _remove_smallest(weights, current, names: list[str], n_remove: int, out: dict) -> None:
    """Zero in ``out`` the ``n_remove`` unpruned entries of ``names`` with the smallest
    ``(|w|, position)``, positions running through the tensors in the order of ``names``."""
    import torch

    if n_remove <= 0 or not names:
        return
    positions, scores = [], []
    for name in names:
        pos = (current[name].reshape(-1) != 0).nonzero().squeeze(1)
        positions.append(pos)
        # float64: any float dtype's magnitudes compare exactly, and ties stay ties
        scores.append(weights[name].reshape(-1)[pos].abs().double())
    order = torch.sort(torch.cat(scores), stable=True).indices[:n_remove]
    start = 0
    for name, pos in zip(names, positions):
        stop = start + pos.numel()
        hit = order[(order >= start) & (order < stop)] - start
        out[name].view(-1)[pos[hit]] = 0
        start = stop


def _remove_random(current: "torch.Tensor", out: "torch.Tensor", n_remove: int, generator: "torch.Generator") -> None:
    """Zero in ``out`` ``n_remove`` of ``current``'s unpruned entries, chosen uniformly (a
    uniform random permutation of them, drawn on the CPU from ``generator``)."""
    import torch

    if n_remove <= 0:
        return
    pos = (current.reshape(-1) != 0).nonzero().squeeze(1)
    pick = torch.randperm(pos.numel(), generator=generator)[:n_remove].to(pos.device)
    out.view(-1)[pos[pick]] = 0


def random_masks_like(masks: dict[str, "torch.Tensor"], generator: "torch.Generator") -> dict[str, "torch.Tensor"]:
    """Fresh masks keeping, in each tensor, as many entries as ``masks`` does, chosen uniformly
    among all of its entries (the ``random_mask`` control of the ``rewind`` stage: the same
    per-layer sparsity, a random pattern). Tensors are drawn in the order of ``masks``."""
    import torch

    out = {}
    for name, mask in masks.items():
        fresh = torch.ones_like(mask)
        _remove_random(fresh, fresh, int(mask.numel() - mask.count_nonzero().item()), generator)
        out[name] = fresh
    return out


class Magnitude(Pruner):
    """Magnitude pruning: remove the unpruned weights of smallest |w| (Han et al. 2015,
    "Learning both weights and connections"; the pruning step of Frankle & Carbin 2019's
    iterative magnitude pruning).

    With ``scope: layerwise`` each prunable tensor with ``r`` unpruned entries loses its
    ``⌊f·r + ½⌋`` smallest ones (``f`` = its ``layer_fractions`` entry, else ``fraction``).
    With ``scope: global`` (OpenLTH's ``sparse_global``) the tensors without an override are
    ranked together: ``⌊f·R + ½⌋`` of their ``R`` unpruned entries in all are removed, smallest
    first, so layers lose different fractions; tensors with an override are pruned on their
    own at their fraction. Ties are broken by a stable sort on ``(|w|, position)`` (see the
    module), so counts are exact. Entries already pruned stay pruned and do not compete.
    Deterministic: the generator is not used.
    """

    Params: ClassVar[type[MagnitudeParams]] = MagnitudeParams
    cache_version: ClassVar[int] = 1
    params: MagnitudeParams

    def masks(self, weights, current, generator):
        _check(weights, current)
        p = self.params
        for pattern in p.layer_fractions:
            if pattern not in weights and not any(fnmatch.fnmatchcase(n, pattern) for n in weights):
                raise StageError(f"layer_fractions: '{pattern}' names no prunable tensor (prunable: {', '.join(weights)})")
        out = {name: m.clone() for name, m in current.items()}
        pooled = []
        for name in weights:
            f = _fraction_for(name, p.layer_fractions)
            if f is None and p.scope == "global":
                pooled.append(name)
                continue
            remaining = int(current[name].count_nonzero().item())
            _remove_smallest(weights, current, [name], removal_count(p.fraction if f is None else f, remaining), out)
        if pooled:
            remaining = sum(int(current[n].count_nonzero().item()) for n in pooled)
            _remove_smallest(weights, current, pooled, removal_count(p.fraction, remaining), out)
        return out


class Random(Magnitude):
    """Random pruning, the control of Frankle & Carbin 2019: in every tensor, remove exactly
    as many unpruned entries as ``magnitude`` with the same params would (same scope,
    fractions and overrides, so global scope's per-layer counts carry over), but chosen
    uniformly at random among that tensor's unpruned entries, from the stage's seeded
    generator (tensors drawn in order). Same seed, same mask; pruned entries stay pruned.
    """

    cache_version: ClassVar[int] = 1

    def masks(self, weights, current, generator):
        by_magnitude = super().masks(weights, current, generator)
        out = {name: m.clone() for name, m in current.items()}
        for name in weights:
            n_remove = int(current[name].count_nonzero().item() - by_magnitude[name].count_nonzero().item())
            _remove_random(current[name], out[name], n_remove, generator)
        return out


__all__ = ["Magnitude", "MagnitudeParams", "Random", "random_masks_like", "removal_count"]
