"""The ``train`` stage's features as training-loop callbacks (``nnopt.core.loop``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

from nnopt.core.component import TrackRef
from nnopt.core.kinds import AnalysisContext, Analyzer
from nnopt.core.loop import LoopCallback

from ._common import derived_generator, fork_rng, unique_key

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from nnopt.core.loop import TrainLoop
    from nnopt.core.progress import StageProgress
    from nnopt.core.stage import StageContext


class KeepWeights(LoopCallback):
    """Saves θ_N as ``weights/step_N`` for every kept N: before step N's update (θ_0 is the
    initialization) and, for N = total, after the last step."""

    def __init__(self, ctx: "StageContext", steps: set[int]):
        self.ctx, self.steps = ctx, set(steps)

    def on_step_start(self, loop: "TrainLoop") -> None:
        if loop.step in self.steps:
            with loop.evaluation():
                self.ctx.save_weights(loop.model.state_dict(), step=loop.step)

    def on_train_end(self, loop: "TrainLoop") -> None:
        if loop.step in self.steps:
            with loop.evaluation():
                self.ctx.save_weights(loop.model.state_dict(), step=loop.step)


class GradClip(LoopCallback):
    """Rescales the gradient g to min(1, c/‖g‖₂)·g before each update (global-norm clipping,
    survey §4.1: bounds the step when gradients explode)."""

    def __init__(self, params: list["torch.Tensor"], max_norm: float):
        import torch

        self.params, self.max_norm = params, max_norm
        self._clip = torch.nn.utils.clip_grad_norm_

    def after_backward(self, loop: "TrainLoop") -> None:
        self._clip(self.params, self.max_norm)


class Progress(LoopCallback):
    """Advances the stage's progress bar with every logged window."""

    def __init__(self, bar: "StageProgress"):
        self.bar = bar

    def on_train_start(self, loop: "TrainLoop") -> None:
        self.bar.update(loop.step - self.bar.completed)  # a resumed run starts where it stopped

    def on_log(self, loop: "TrainLoop", record: dict[str, Any]) -> None:
        self.bar.update(record["window"], loss=record["loss"])


@dataclass
class Tracked:
    """One ``track`` entry: its analyzer, its own random stream, and its results so far."""

    ref: TrackRef  # type: ignore[valid-type]
    key: str  # its name, or name_2, name_3, ... for a repeated name
    analyzer: Analyzer
    generator: "torch.Generator"
    series: list[tuple[int, dict[str, Any]]] = field(default_factory=list)


class TrackAnalyzers(LoopCallback):
    """Runs each tracked analyzer on the live model at steps s with s % every == 0.

    The model is put in eval mode (no normalization-statistics update, no dropout draw) inside
    a forked RNG, and each analyzer draws from a generator of its own: tracking never changes
    the training trajectory.
    """

    def __init__(self, ctx: "StageContext", refs: list[TrackRef], seed: int, loss_fn: Callable[..., Any],  # type: ignore[valid-type]
                 device: "torch.device"):
        self.ctx, self.loss_fn, self.device = ctx, loss_fn, device
        self.tracks: list[Tracked] = []
        for i, ref in enumerate(refs):
            key = unique_key(ref.name, {t.key for t in self.tracks})
            self.tracks.append(Tracked(ref, key, ref.instantiate(), derived_generator(seed, 1 + i)))

    def on_step_start(self, loop: "TrainLoop") -> None:
        for t in self.tracks:
            if loop.step % t.ref.every:
                continue
            model = loop.model
            with fork_rng(self.device):
                model.eval()
                try:
                    results = t.analyzer.analyze(AnalysisContext(
                        model=model, loss_fn=self.loss_fn, data=loop.data, device=self.device, generator=t.generator,
                        step=loop.step, batch=loop.batch, load_model=self.ctx.load_model,
                    ))
                finally:
                    model.train()
            t.series.append((loop.step, results))
            self.ctx.log_metrics({"step": loop.step, "track": t.key, **results})

    def state_dict(self) -> Any:
        return [(t.generator.get_state(), t.series) for t in self.tracks]

    def load_state_dict(self, state: Any) -> None:
        for t, (gen, series) in zip(self.tracks, state):
            t.generator.set_state(gen)
            t.series[:] = series
