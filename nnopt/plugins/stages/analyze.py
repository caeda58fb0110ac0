"""The ``analyze`` stage: runs analyzers on another stage's weights."""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field

from nnopt.core.component import AnalyzerRef
from nnopt.core.kinds import AnalysisContext
from nnopt.core.stage import Stage, StageContext, StageOutcome, StageSpec, json_safe

from ._common import derived_generator, draw_plots, seed_everything, unique_key

_ANALYSIS_STREAM = 1


class AnalyzeSpec(StageSpec):
    """``kind: analyze``: the analyzers to run on ``from``'s weights (or on a fresh model)."""

    analyzers: list[AnalyzerRef] = Field(  # type: ignore[valid-type]
        ...,
        min_length=1,
        description="analyzers (kind `analyzers`) run in order on the weights of `from`; their results "
        "are keyed by name (a repeated name gets `name_2`, `name_3`, ...)",
    )


class Analyze(Stage):
    """Measure a trained (or initial) model: ``results[name] = analyzer(θ_from)``.

    The model of ``from`` (``STAGE``, ``STAGE@N`` or ``STAGE@init``) is loaded once; without
    ``from``, the stage's own ``model`` is built and initialized from the stage's seed (a study
    of the network at initialization needs no train stage). The model is put in eval mode (normalization layers use their running statistics, dropout is off); each
    analyzer is given it with the stage's data, loss and a generator seeded from the stage
    seed, and may load further weight references it names through ``load_model``. Analyzers
    must not change the weights; the stage restores them (and clears gradients) after each
    one regardless, so every analyzer sees exactly ``θ_from``.

    Results are keyed by analyzer name (``name_2``, ``name_3`` for repeats) and each
    analyzer's plots are written to ``plots/`` (a repeat's files are prefixed ``name_2_``).
    """

    Params: ClassVar[type[AnalyzeSpec]] = AnalyzeSpec
    cache_version: ClassVar[int] = 1
    needs: ClassVar[frozenset[str]] = frozenset({"data", "model", "loss"})
    provides_weights: ClassVar[bool] = False

    params: AnalyzeSpec

    def run(self, ctx: StageContext) -> StageOutcome:
        import torch

        spec = self.params
        seed_everything(ctx.seed)
        device = torch.device(ctx.device)
        data = ctx.load_data()
        loss_fn = ctx.loss_fn()
        model = ctx.load_model(spec.from_) if spec.from_ is not None else ctx.build_model()
        model.eval()
        snapshot = {k: v.detach().clone() for k, v in model.state_dict().items()}

        results: dict[str, object] = {}
        for ref in spec.analyzers:
            key = unique_key(ref.name, results)
            analyzer = ref.instantiate()
            try:
                result = analyzer.analyze(
                    AnalysisContext(
                        model=model,
                        loss_fn=loss_fn,
                        data=data,
                        device=device,
                        generator=derived_generator(ctx.seed, _ANALYSIS_STREAM),
                        step=None,
                        batch=None,
                        load_model=ctx.load_model,
                        model_spec=ctx.model_spec,
                        source=str(spec.from_) if spec.from_ is not None else None,
                        kept_steps=ctx.kept_steps,
                    )
                )
            finally:
                with torch.no_grad():
                    model.load_state_dict(snapshot)
                model.zero_grad(set_to_none=True)
                model.eval()
            results[key] = json_safe(result)
            draw_plots(ctx.out_dir, key, ref.name, analyzer.plot, result)
        return StageOutcome(results=results)

