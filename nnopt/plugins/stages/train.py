"""The ``train`` stage: mini-batch training of the stage's model with a registered optimizer."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Any, ClassVar

from pydantic import Field, field_validator, model_validator

from nnopt.core.component import OptimizerRef, ScheduleRef, TrackRef
from nnopt.core.errors import StageError
from nnopt.core.loop import CheckpointClock, LoopCallback, LoopResult, TrainLoop
from nnopt.core.stage import Stage, StageContext, StageOutcome, StageSpec

from ._common import draw_plots, evaluate, seed_everything
from .param_groups import ParamGroup, build_param_groups, check_group_options
from .train_callbacks import GradClip, KeepWeights, Progress, TrackAnalyzers


class TrainSpec(StageSpec):
    """``kind: train``: what to optimize with, for how long, and what to keep and watch."""

    optimizer: OptimizerRef = Field(  # type: ignore[valid-type]
        ..., description="the optimizer (kind `optimizers`), e.g. {name: sgd, lr: 0.05, momentum: 0.9}"
    )
    schedule: ScheduleRef = Field(  # type: ignore[valid-type]
        "constant",
        validate_default=True,
        description="learning-rate schedule (kind `schedules`), stepped once per optimizer step",
    )
    epochs: int | None = Field(None, ge=1, description="passes over the train split (give this or `steps`)")
    steps: int | None = Field(None, ge=1, description="optimizer steps, cycling through epochs (give this or `epochs`)")
    keep: list[Annotated[int, Field(ge=0)]] = Field(
        default_factory=list,
        description="steps N >= 0 whose weights are kept as `STAGE@N`: the weights after N updates "
        "(0: the initialization; the last step: the final weights)",
    )
    track: list[TrackRef] = Field(  # type: ignore[valid-type]
        default_factory=list,
        description="analyzers run on the live model every `every` steps (steps s with s % every == 0)",
    )
    log_every: int = Field(
        10,
        ge=1,
        json_schema_extra={"affects_results": False},
        description="steps per metrics.jsonl line (mean train loss of the window); also how often the loss is "
        "checked for NaN/inf (a non-finite step is reported exactly, whatever this is)",
    )
    eval_every: int | None = Field(
        None, ge=1, description="steps between test-split evaluations (None: at the end of every epoch)"
    )
    grad_clip: float | None = Field(
        None, gt=0, description="clip the global gradient norm to this value before each update (None: no clipping)"
    )
    checkpoint_every: int | None = Field(
        None, ge=1, json_schema_extra={"affects_results": False},
        description="steps between resumable checkpoints (None: by time, see checkpoint_minutes); a killed run "
        "resumes from the last one with bitwise the same result",
    )
    param_groups: list[ParamGroup] = Field(
        default_factory=list,
        description="per-parameter options, e.g. [{params: [bias, norm], weight_decay: 0.0}]: each parameter joins "
        "the first group selecting it, the rest keep the optimizer's own options",
    )
    checkpoint_minutes: float = Field(
        5.0, gt=0, json_schema_extra={"affects_results": False},
        description="minutes of training between resumable checkpoints when checkpoint_every is not given",
    )

    @field_validator("keep")
    @classmethod
    def _keep_as_a_set(cls, keep: list[int]) -> list[int]:
        return sorted(set(keep))  # [10, 0, 0] and [0, 10] keep the same weights: same key

    @model_validator(mode="after")
    def _length(self) -> "TrainSpec":
        if self.epochs is None and self.steps is None:
            raise ValueError("give epochs or steps")
        if self.epochs is not None and self.steps is not None:
            raise ValueError("give epochs or steps, not both")
        if self.steps is not None:
            late = sorted(k for k in set(self.keep) if k > self.steps)
            if late:
                raise ValueError(f"keep step {late[0]} is beyond steps ({self.steps})")
        return self


class Train(Stage):
    """Mini-batch training: θ_{t+1} = θ_t − η_t · u_t(∇_θ L_{B_t}(θ_t)), t = 0 … T−1.

    ``L_B(θ) = (1/|B|) Σ_{(x,y)∈B} ℓ(f_θ(x), y)`` is the loss of mini-batch ``B_t``; ``u_t`` is
    the optimizer's update rule (plain SGD: ``u_t(g) = g``, the survey's θ_{t+1} = θ_t −
    α_t ∇F_i(θ_t) for the finite-sum problem (20), §5.1) and ``η_t`` the schedule's rate. As
    the survey describes practice, the train split is shuffled at the start of every epoch (by
    a generator seeded from the stage seed) and cut into batches of ``batch_size``, the last
    one possibly smaller. With ``grad_clip: c`` the gradient is first rescaled to norm at most
    ``c`` (gradient clipping, survey §4.1). ``param_groups`` give chosen parameters their own
    weight decay or learning-rate scale (e.g. no decay on biases and normalization layers).

    The loop is ``nnopt.core.loop.TrainLoop``; keeping weights, tracking, clipping and the
    progress bar are its callbacks, and ``callbacks(ctx, ...)`` is the extension point a
    subclass (or a later feature: masks, mixed precision) adds its own through.

    Outputs: ``weights/final`` (θ_T) and ``weights/step_N`` for every ``N`` in ``keep`` (θ_N,
    so ``N = 0`` is the initialization); ``metrics.jsonl`` with the mean train loss of every
    ``log_every`` steps, test loss/accuracy at each evaluation and each tracked analyzer's
    results; ``plots/loss.png`` and each tracked analyzer's plots. The final metrics are the
    train and test loss (and accuracy, for classification) measured in eval mode after the
    last step, plus ``steps``, ``epochs``, ``seconds`` and ``steps_per_second``.

    A non-finite training loss stops the stage with status ``diverged``, naming the first
    step whose loss was not finite and the last finite loss before it.

    Tracked analyzers see the live model in eval mode (so they neither update normalization
    statistics nor draw dropout masks) inside a forked RNG: tracking never changes the
    training trajectory. The same spec and seed give bitwise-identical weights on CPU.
    """

    Params: ClassVar[type[TrainSpec]] = TrainSpec
    cache_version: ClassVar[int] = 2
    needs: ClassVar[frozenset[str]] = frozenset({"data", "model", "loss"})
    provides_weights: ClassVar[bool] = True

    params: TrainSpec

    def kept_steps(self) -> set[int]:
        return set(self.params.keep)

    def callbacks(self, ctx: StageContext, model: Any, loss_fn: Any, device: Any) -> list[LoopCallback]:
        """The loop's callbacks for this stage, in the order their hooks run."""
        spec = self.params
        out: list[LoopCallback] = [KeepWeights(ctx, set(spec.keep))]
        if spec.track:
            out.append(TrackAnalyzers(ctx, spec.track, ctx.seed, loss_fn, device))
        if spec.grad_clip is not None:
            out.append(GradClip([p for p in model.parameters() if p.requires_grad], spec.grad_clip))
        return out

    def run(self, ctx: StageContext) -> StageOutcome:
        import torch

        spec = self.params
        device = torch.device(ctx.device)
        seed_everything(ctx.seed)
        data = ctx.load_data()
        model = ctx.load_model(spec.from_) if spec.from_ is not None else ctx.build_model()
        model.train()
        loss_fn = ctx.loss_fn()
        classification = data.task == "classification"

        n = data.n_train
        if n == 0:
            raise StageError("the train split is empty")
        batch_size = min(ctx.batch_size or n, n)
        per_epoch = math.ceil(n / batch_size)
        total = spec.steps if spec.steps is not None else spec.epochs * per_epoch  # type: ignore[operator]
        late = sorted(k for k in spec.keep if k > total)
        if late:
            raise StageError(f"keep step {late[0]} is beyond the {total} steps this stage trains")

        opt_component = spec.optimizer.instantiate()
        params = build_param_groups(model, spec.param_groups, opt_component.params.model_dump())
        optimizer = opt_component.build(params, device)
        check_group_options(optimizer, spec.param_groups)
        schedule_component = spec.schedule.instantiate().bind(per_epoch, batch_size)
        schedule = schedule_component.build(optimizer, total)
        eval_batch = max(batch_size, 1024)
        callbacks = [*self.callbacks(ctx, model, loss_fn, device),
                     *opt_component.callbacks(optimizer, model), *schedule_component.callbacks(schedule)]
        with ctx.progress(total, f"train {ctx.stage_id}") as bar:
            loop = TrainLoop(
                ctx, model, optimizer, schedule, loss_fn, data, total=total, batch_size=batch_size, shuffle_seed=ctx.seed,
                evaluate=lambda m: evaluate(m, loss_fn, data.x_test, data.y_test, classification, eval_batch),
                log_every=spec.log_every, eval_every=spec.eval_every, callbacks=[*callbacks, Progress(bar)],
                step_rule=opt_component.step_rule(),
            )
            state = ctx.load_checkpoint()
            if state is not None:  # a killed run of this very stage saved this: continue from it
                loop.load_state_dict(state)
            loop.checkpoint_due = CheckpointClock(spec.checkpoint_every, spec.checkpoint_minutes, loop.step)
            result = loop.run()
        tracks = next((cb.tracks for cb in callbacks if isinstance(cb, TrackAnalyzers)), [])
        if result.status == "diverged":
            return self._diverged(ctx, loop, result, tracks)

        with loop.evaluation():  # the weights the method reports (schedule-free's x_t, an average, ...)
            train = evaluate(model, loss_fn, data.x_train, data.y_train, classification, eval_batch)
            if not math.isfinite(train["loss"]):
                return self._diverged(ctx, loop, LoopResult("diverged", total, result.seconds, total, train["loss"],
                                                            loop.last_finite), tracks)
            ctx.save_weights(model.state_dict(), step=None)
        self._plots(ctx, loop.train_curve, loop.test_curve, tracks)

        metrics: dict[str, Any] = {f"train_{k}": v for k, v in train.items()}
        metrics.update({f"test_{k}": v for k, v in loop.test.items()})  # the loop evaluates at the last step
        metrics.update({
            "steps": total,
            "epochs": total / per_epoch,
            "seconds": result.seconds,
            "steps_per_second": total / result.seconds if result.seconds > 0 else None,
        })
        return StageOutcome(metrics=metrics)

    def _diverged(self, ctx: StageContext, loop: TrainLoop, result: LoopResult, tracks: list) -> StageOutcome:
        at, per_epoch = result.diverged_at, loop.per_epoch
        ctx.log_metrics({"step": at, "epoch": at / per_epoch, "loss": result.value, "diverged": True})
        self._plots(ctx, loop.train_curve, loop.test_curve, tracks)
        return StageOutcome(
            status="diverged",
            metrics={"diverged_at_step": at, "last_finite_loss": result.last_finite, "steps": at,
                     "epochs": at / per_epoch, "seconds": result.seconds},
            message=f"training loss became {result.value} at step {at} (last finite loss: {result.last_finite})",
        )

    @staticmethod
    def _plots(ctx, train_curve, test_curve, tracks) -> list[Path]:
        files = [plot_loss(train_curve, test_curve, ctx.plots_dir / "loss.png")] if train_curve or test_curve else []
        for t in tracks:
            if t.series:
                files.extend(draw_plots(ctx.out_dir, t.key, t.ref.name, t.analyzer.plot_series, t.series))
        return files


def plot_loss(train_curve: list[tuple[int, float]], test_curve: list[tuple[int, float]], path: Path) -> Path:
    """Train loss per logged window and test loss per evaluation against steps (log y)."""
    from nnopt.plugins.analyzers._plot import finite_pairs, new_figure, save, set_log_y

    fig, ax = new_figure()
    tx, ty = finite_pairs([s for s, _ in train_curve], [v for _, v in train_curve])
    ex, ey = finite_pairs([s for s, _ in test_curve], [v for _, v in test_curve])
    if tx:
        ax.plot(tx, ty, label="train (window mean)", linewidth=1.2)
    if ex:
        ax.plot(ex, ey, "o-", label="test", markersize=3, linewidth=1.2)
    if ty or ey:
        set_log_y(ax, ty + ey)
        ax.legend()
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.grid(True, which="both", alpha=0.3)
    return save(fig, path)
