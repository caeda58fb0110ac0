"""The ``rewind`` stage: keep a pruned stage's masks, reset the weights (SPEC §2)."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from nnopt.core.component import WeightRef
from nnopt.core.errors import StageError
from nnopt.core.stage import Stage, StageContext, StageOutcome, StageSpec

from ._common import derived_generator, seed_everything
from .sparsity import apply_masks, check_masks_fit, sparsity_report

#: salts (``_common.derived_generator``) of the controls' random streams
_RANDOM_MASK_STREAM = 21
_REINIT_STREAM = 22

CONTROLS = ("none", "reinit", "random_mask", "sign_only")


def reinit_seed(seed: int) -> int:
    """The seed of the ``reinit`` control's fresh model: derived from the stage seed, never the
    stage seed itself. A rewind stage inherits its seed from the chain it continues (the dense
    run's), and a model built from that seed is the original initialization: the winning
    ticket itself, not a control."""
    return (seed * 1_000_003 + _REINIT_STREAM) % 2**63


class RewindSpec(StageSpec):
    """``kind: rewind``: the masks to keep (``from``), the weights to reset to (``to``), a control."""

    from_: WeightRef = Field(..., alias="from", description="the pruned stage whose masks are kept (a prune stage, or "
                             "a stage trained from one)")
    to: WeightRef = Field(..., description="the weights to reset to: STAGE@N (N = 0 or init: the original "
                          "initialization; N > 0: late rewinding)")
    control: Literal["none", "reinit", "random_mask", "sign_only"] = Field(
        "none",
        description="`none`: θ_to ⊙ m; `reinit`: a fresh initialization (seed derived from the stage seed) ⊙ m; "
        "`random_mask`: θ_to ⊙ m_rand, a uniformly random mask with m's per-layer counts; `sign_only`: "
        "sign(θ_to)·σ_layer ⊙ m (Zhou et al. 2019), σ_layer the standard deviation of the layer's θ_to",
    )
    optimizer_state: bool = Field(
        False, description="also rewind the optimizer state kept at step N (the `to` stage must set keep_optimizer: "
        "true); masked like the weights, it starts the next train stage's optimizer. false: that optimizer starts "
        "fresh, as Frankle & Carbin's does")


class Rewind(Stage):
    """Reset a pruned network to earlier weights under its mask: the winning ticket
    ``θ_N ⊙ m`` of Frankle & Carbin 2019 (N = 0) or of late rewinding (Frankle et al. 2019,
    "Stabilizing the lottery ticket hypothesis"; N > 0), and its controls.

    ``from``'s masks ``m`` (it must have some) are kept; ``to`` = ``STAGE@N`` gives ``θ_N``.
    ``control``:

    - ``none``: ``θ_N ⊙ m``.
    - ``reinit`` (Frankle & Carbin's random reinitialization): the stage's model freshly
      built and initialized (its ``model`` spec: architecture, initializer, normalizer) from
      the seed ``reinit_seed(stage seed)`` (= (seed·1000003 + 22) mod 2⁶³; not the stage seed,
      which would rebuild ``θ_0`` itself), ``⊙ m``. Unlike OpenLTH's, seeded: same seed, same
      weights.
    - ``random_mask`` (random pruning): a new mask ``m_r`` with exactly ``m``'s number of kept
      entries in every tensor, uniform among all the tensor's entries (a CPU generator seeded
      from the stage seed); ``θ_N ⊙ m_r``, and ``m_r`` is the stage's mask.
    - ``sign_only`` (Zhou et al. 2019, "Deconstructing lottery tickets", signed constant):
      each masked tensor becomes ``sign(θ_N)·σ ⊙ m``, ``σ`` the standard deviation (population,
      over all entries) of that tensor in ``θ_N``: with N = 0, the empirical standard deviation
      of the layer's initialization distribution, Zhou et al.'s constant. Unmasked tensors
      (biases, normalization parameters) keep ``θ_N``.

    Every other tensor (unmasked: biases, normalization parameters, buffers) is ``θ_N``'s,
    except under ``reinit``, where it is the fresh model's. Outputs ``weights/final``
    (masked entries exactly 0), ``masks.safetensors``, results ``sparsity`` and ``rewind``
    (``to``, ``control``), metric ``weights_remaining``.
    """

    Params: ClassVar[type[RewindSpec]] = RewindSpec
    cache_version: ClassVar[int] = 1
    needs: ClassVar[frozenset[str]] = frozenset({"data", "model"})
    provides_weights: ClassVar[bool] = True

    params: RewindSpec

    def _rewind_optimizer(self, ctx: StageContext, model, masks) -> None:
        """Copy the optimizer state kept at ``to`` into this stage, each per-parameter tensor
        of a masked parameter's shape multiplied by its mask (momentum and moment estimates of
        pruned weights are 0: they must not push them back)."""
        from nnopt.core.optimizer_state import write_optimizer_state

        kept = ctx.load_optimizer(self.params.to)
        if kept is None:
            raise StageError(f"'{self.params.to}' kept no optimizer state: set keep_optimizer: true on stage "
                             f"'{self.params.to.stage}' (or leave optimizer_state false)")
        meta, state = kept
        names = meta.get("names") or [name for name, _ in model.named_parameters()]
        if len(names) != len(meta.get("shapes") or []):
            raise StageError(f"the optimizer state kept with '{self.params.to}' is for {len(meta.get('shapes') or [])} "
                             f"parameters, and this model has {len(names)}")
        for index, entries in state.items():
            mask = masks.get(names[index]) if index < len(names) else None
            if mask is None:
                continue
            for key, value in entries.items():
                if hasattr(value, "shape") and tuple(value.shape) == tuple(mask.shape):
                    entries[key] = value * mask.to(value.dtype)
        write_optimizer_state(meta, state, ctx.out_dir)

    def run(self, ctx: StageContext) -> StageOutcome:
        import torch

        from nnopt.core.model_spec import build_model

        spec = self.params
        seed_everything(ctx.seed)
        masks = ctx.load_masks(spec.from_)
        if masks is None:
            raise StageError(f"'{spec.from_}' has no masks to keep: rewind starts from a prune stage (or a stage "
                             "trained from one)")
        masks = {n: (m != 0).float() for n, m in masks.items()}
        target = ctx.load_model(spec.to)
        state = {k: v.detach().clone() for k, v in target.state_dict().items()}
        check_masks_fit(masks, state, f"'{spec.from_}' (against the weights of '{spec.to}')")

        if spec.control == "reinit":
            fresh = build_model(ctx.model_spec, ctx.load_data(), reinit_seed(ctx.seed), ctx.device)
            state = {k: v.detach().clone() for k, v in fresh.state_dict().items()}
            check_masks_fit(masks, state, f"'{spec.from_}' (against this stage's model)")
        elif spec.control == "random_mask":
            from nnopt.plugins.pruners.magnitude import random_masks_like

            masks = random_masks_like(masks, derived_generator(ctx.seed, _RANDOM_MASK_STREAM))
        elif spec.control == "sign_only":
            for name in masks:
                w = state[name]
                sigma = w.double().std(correction=0) if w.numel() > 1 else w.double().abs().reshape(())
                state[name] = (torch.sign(w).double() * sigma).to(w.dtype)
        apply_masks(state, masks)

        # the weights must fit this stage's own model: the train stage that continues from
        # here loads them into it
        own = build_model(ctx.model_spec, ctx.load_data(), ctx.seed, ctx.device, initialize=False)
        try:
            own.load_state_dict(state)
        except RuntimeError as err:
            lines = str(err).splitlines()
            detail = lines[1].strip() if len(lines) > 1 else str(err)
            raise StageError(f"the weights of '{spec.to}' do not fit the model of stage '{ctx.stage_id}' ({detail})") from None
        ctx.save_weights(state)
        ctx.save_masks(masks)
        if spec.optimizer_state:
            self._rewind_optimizer(ctx, own, masks)
        report = sparsity_report(masks)
        return StageOutcome(metrics={"weights_remaining": report["total"]["fraction"]},
                            results={"sparsity": report, "rewind": {"to": str(spec.to), "control": spec.control}})
