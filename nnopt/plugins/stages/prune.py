"""The ``prune`` stage: applies a pruner to another stage's weights (SPEC §2)."""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import Field

from nnopt.core.component import PrunerRef, WeightRef
from nnopt.core.errors import StageError
from nnopt.core.stage import Stage, StageContext, StageOutcome, StageSpec

from ._common import derived_generator, evaluate, seed_everything
from .sparsity import apply_masks, check_masks_fit, sparsity_report

#: salt of the generator handed to the pruner (``_common.derived_generator``)
_PRUNE_STREAM = 11


class PruneSpec(StageSpec):
    """``kind: prune``: the weights to prune (``from``) and the pruner (``method``)."""

    from_: WeightRef = Field(..., alias="from", description="stage (or STAGE@N) whose weights are pruned; "
                             "if it has masks (a later pruning round), they are the starting masks")
    method: PrunerRef = Field(  # type: ignore[valid-type]
        ..., description="the pruner (kind `pruners`), e.g. {name: magnitude, scope: global, fraction: 0.2}")


class Prune(Stage):
    """Prune ``from``'s weights: ``m' = pruner(θ_from, m)``, ``θ' = θ_from ⊙ m'``.

    The model of ``from`` is loaded; its prunable tensors are chosen by the pruner's
    ``prunable`` param (``nnopt.plugins.pruners.selection.prunable_names``; default: the
    weights of linear and convolution layers). Their current masks are ``from``'s masks if it
    has any (an iterative-pruning round continues where the last stopped; a tensor masked
    there but not prunable now keeps its mask), else all ones. The pruner (given a CPU
    generator seeded from the stage seed) returns the new masks; a pruned entry cannot come
    back. Outputs: ``weights/final.safetensors`` (every tensor of ``from``, pruned entries
    exactly 0), ``masks.safetensors`` (the masked tensors' names only), results
    ``sparsity`` (``sparsity.sparsity_report``: per layer and total, weights / remaining /
    fraction) and metrics ``weights_remaining`` (total fraction) with the pruned network's
    ``test_loss`` / ``test_accuracy`` (not retrained) when the stage has a loss.
    """

    Params: ClassVar[type[PruneSpec]] = PruneSpec
    cache_version: ClassVar[int] = 1
    needs: ClassVar[frozenset[str]] = frozenset({"data", "model"})
    provides_weights: ClassVar[bool] = True

    params: PruneSpec

    def run(self, ctx: StageContext) -> StageOutcome:
        from nnopt.plugins.pruners.selection import prunable_names

        spec = self.params
        seed_everything(ctx.seed)
        model = ctx.load_model(spec.from_)
        state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        previous = ctx.load_masks(spec.from_) or {}
        check_masks_fit(previous, state, f"'{spec.from_}'")
        pruner = spec.method.instantiate()
        names = prunable_names(model, getattr(pruner.params, "prunable", None))
        # entries already pruned are zero in `from` already when it was trained masked; applying
        # the masks again costs nothing and makes that so for any source
        apply_masks(state, previous)
        current = {n: (previous[n] != 0).float() if n in previous else _ones(state[n]) for n in names}
        weights = {n: state[n] for n in names}
        try:
            new = pruner.masks(weights, current, derived_generator(ctx.seed, _PRUNE_STREAM))
        except (ValueError, RuntimeError) as err:
            raise StageError(f"pruner '{spec.method.name}': {err}") from None
        _check_output(spec.method.name, new, current)
        masks = {**{n: (m != 0).float() for n, m in previous.items()}, **{n: (new[n] != 0).float() for n in names}}
        apply_masks(state, masks)
        ctx.save_weights(state)
        ctx.save_masks(masks)
        report = sparsity_report(masks)
        metrics: dict[str, Any] = {"weights_remaining": report["total"]["fraction"]}
        if ctx.loss_ref is not None:
            model.load_state_dict(state)
            data = ctx.load_data()
            scores = evaluate(model, ctx.loss_fn(), data.x_test, data.y_test, data.task == "classification")
            metrics.update({f"test_{k}": v for k, v in scores.items()})
        return StageOutcome(metrics=metrics, results={"sparsity": report})


def _ones(tensor):
    import torch

    return torch.ones(tensor.shape, dtype=torch.float32, device=tensor.device)


def _check_output(name: str, new: dict, current: dict) -> None:
    """A pruner's masks must cover the same tensors, with their shapes, and never revive an
    entry: checked here once, for built-in and third-party pruners alike."""
    missing = sorted(set(current) - set(new))
    if missing:
        raise StageError(f"pruner '{name}' returned no mask for {', '.join(missing)}")
    for n, m in current.items():
        if tuple(new[n].shape) != tuple(m.shape):
            raise StageError(f"pruner '{name}' returned a mask of shape {tuple(new[n].shape)} for '{n}' {tuple(m.shape)}")
        if bool(((new[n] != 0) & (m == 0)).any()):
            raise StageError(f"pruner '{name}' revived pruned entries of '{n}' (pruned entries must stay pruned)")
