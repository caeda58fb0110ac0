"""The ``train`` stage: mini-batch training of the stage's model with a registered optimizer."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, ClassVar

from pydantic import Field, field_validator, model_validator

from nnopt.core.component import OptimizerRef, ScheduleRef, TrackRef
from nnopt.core.errors import StageError
from nnopt.core.kinds import AnalysisContext, Analyzer
from nnopt.core.stage import Stage, StageContext, StageOutcome, StageSpec

from ._common import derived_generator, draw_plots, evaluate, fork_rng, seed_everything, unique_key

if TYPE_CHECKING:  # pragma: no cover
    import torch


@dataclass
class _Tracked:
    """One ``track`` entry while training: its analyzer, its own random stream, its results."""

    ref: TrackRef  # type: ignore[valid-type]
    key: str  # its name, or name_2, name_3, ... for a repeated name
    analyzer: Analyzer
    generator: "torch.Generator"
    series: list[tuple[int, dict[str, Any]]] = field(default_factory=list)


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
    ``c`` (gradient clipping, survey §4.1).

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
    cache_version: ClassVar[int] = 1
    needs: ClassVar[frozenset[str]] = frozenset({"data", "model", "loss"})
    provides_weights: ClassVar[bool] = True

    params: TrainSpec

    def kept_steps(self) -> set[int]:
        return set(self.params.keep)

    def run(self, ctx: StageContext) -> StageOutcome:  # noqa: C901 - one hot loop, kept in one place
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
        keep = set(spec.keep)
        late = sorted(k for k in keep if k > total)
        if late:
            raise StageError(f"keep step {late[0]} is beyond the {total} steps this stage trains")

        opt_component = spec.optimizer.instantiate()
        optimizer = opt_component.build(model.parameters(), device)
        schedule = spec.schedule.instantiate().build(optimizer, total)
        needs_closure = opt_component.needs_closure
        clip = spec.grad_clip
        clip_params = [p for p in model.parameters() if p.requires_grad]
        log_every = spec.log_every
        eval_every = spec.eval_every or per_epoch
        eval_batch = max(batch_size, 1024)

        # each tracked analyzer draws from a random stream of its own, apart from the shuffling
        tracks: list[_Tracked] = []
        for i, ref in enumerate(spec.track):
            key = unique_key(ref.name, {t.key for t in tracks})
            tracks.append(_Tracked(ref, key, ref.instantiate(), derived_generator(ctx.seed, 1 + i)))
        shuffle = torch.Generator(device="cpu").manual_seed(ctx.seed)
        x_train, y_train = data.x_train, data.y_train

        train_curve: list[tuple[int, float]] = []
        test_curve: list[tuple[int, float]] = []
        window: list[torch.Tensor] = []  # detached losses since the last sync: no per-step host sync
        window_start = 0
        last_finite: float | None = None
        test: dict[str, float] = {}  # the latest evaluation on the test split
        xs = ys = x_train
        step = 0
        zero_grad, opt_step, sched_step = optimizer.zero_grad, optimizer.step, schedule.step
        clip_norm = torch.nn.utils.clip_grad_norm_

        def outcome_diverged(at: int, value: float, last: float | None) -> StageOutcome:
            seconds = time.perf_counter() - t0
            ctx.log_metrics({"step": at, "epoch": at / per_epoch, "loss": value, "diverged": True})
            self._plots(ctx, train_curve, test_curve, tracks)
            return StageOutcome(
                status="diverged",
                metrics={
                    "diverged_at_step": at,
                    "last_finite_loss": last,
                    "steps": at,
                    "epochs": at / per_epoch,
                    "seconds": seconds,
                },
                message=f"training loss became {value} at step {at} (last finite loss: {last})",
            )

        def scan(values: list[float]) -> int | None:
            for i, v in enumerate(values):
                if not math.isfinite(v):
                    return i
            return None

        perm = None
        elapsed = 0.0
        state = ctx.load_checkpoint()
        if state is not None:  # a killed run of this very stage saved this: continue from it
            step, window_start, last_finite, elapsed = state["step"], state["step"], state["last_finite"], state["seconds"]
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            schedule.load_state_dict(state["schedule"])
            shuffle.set_state(state["shuffle"])
            torch.set_rng_state(state["torch_rng"])
            train_curve, test_curve, test = state["train_curve"], state["test_curve"], state["test"]
            for t, (gen, series) in zip(tracks, state["tracks"]):
                t.generator.set_state(gen)
                t.series[:] = series
            if step % per_epoch:
                perm = state["perm"].to(x_train.device)
                xs, ys = x_train[perm], y_train[perm]
        checkpoint_due = _CheckpointClock(spec.checkpoint_every, spec.checkpoint_minutes, step)

        with ctx.progress(total, f"train {ctx.stage_id}") as bar:
            t0 = time.perf_counter() - elapsed
            bar.update(step)
            while step < total:
                b = step % per_epoch
                if b == 0:  # a new epoch: one gather per epoch, then every batch is a view
                    perm = torch.randperm(n, generator=shuffle).to(x_train.device)
                    xs, ys = x_train[perm], y_train[perm]
                start = b * batch_size
                xb, yb = xs[start : start + batch_size], ys[start : start + batch_size]

                if step in keep:
                    ctx.save_weights(model.state_dict(), step=step)
                if tracks:
                    self._track(ctx, tracks, step, model, loss_fn, data, device, (xb, yb))

                if needs_closure:
                    loss = self._closure_step(optimizer, model, loss_fn, xb, yb, clip_params, clip)
                else:
                    zero_grad(set_to_none=True)
                    loss = loss_fn(model(xb), yb)
                    loss.backward()
                    if clip is not None:
                        clip_norm(clip_params, clip)
                    opt_step()
                window.append(loss.detach())
                step += 1

                evaluating = step % eval_every == 0 or step == total
                flushing = len(window) == log_every or step == total
                # evaluation syncs anyway: check the pending losses first, so that a stage never
                # goes on (or evaluates) past a non-finite loss it could have seen
                if flushing or evaluating:
                    values = torch.stack(window).tolist()
                    bad = scan(values)
                    if bad is not None:
                        last = values[bad - 1] if bad > 0 else last_finite
                        return outcome_diverged(window_start + bad, values[bad], last)
                if flushing:
                    last_finite = values[-1]
                    mean = math.fsum(values) / len(values)
                    ctx.log_metrics(
                        {
                            "step": step,
                            "epoch": step / per_epoch,
                            "loss": mean,
                            "lr": float(optimizer.param_groups[0]["lr"]),
                            "seconds": time.perf_counter() - t0,
                        }
                    )
                    train_curve.append((step, mean))
                    bar.update(len(values), loss=mean)
                    window = []
                    window_start = step
                if evaluating:
                    test = evaluate(model, loss_fn, data.x_test, data.y_test, classification, eval_batch)
                    if test:
                        ctx.log_metrics(
                            {"step": step, "epoch": step / per_epoch, **{f"test_{k}": v for k, v in test.items()}}
                        )
                        test_curve.append((step, test["loss"]))
                sched_step()  # after logging, so that "lr" is the rate the logged steps used
                if not window and step < total and checkpoint_due(step):
                    ctx.save_checkpoint({
                        "step": step, "last_finite": last_finite, "seconds": time.perf_counter() - t0,
                        "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                        "schedule": schedule.state_dict(), "shuffle": shuffle.get_state(),
                        "torch_rng": torch.get_rng_state(), "perm": perm.cpu() if perm is not None else None,
                        "train_curve": train_curve, "test_curve": test_curve, "test": test,
                        "tracks": [(t.generator.get_state(), t.series) for t in tracks],
                    })
        seconds = time.perf_counter() - t0

        train = evaluate(model, loss_fn, x_train, y_train, classification, eval_batch)
        if not math.isfinite(train["loss"]):
            return outcome_diverged(total, train["loss"], last_finite)
        if total in keep:
            ctx.save_weights(model.state_dict(), step=total)
        ctx.save_weights(model.state_dict(), step=None)
        self._plots(ctx, train_curve, test_curve, tracks)

        metrics: dict[str, Any] = {f"train_{k}": v for k, v in train.items()}
        metrics.update({f"test_{k}": v for k, v in test.items()})  # the loop evaluates at the last step
        metrics.update(
            {
                "steps": total,
                "epochs": total / per_epoch,
                "seconds": seconds,
                "steps_per_second": total / seconds if seconds > 0 else None,
            }
        )
        return StageOutcome(metrics=metrics)

    # ------------------------------------------------------------------ helpers
    @staticmethod
    def _closure_step(optimizer, model, loss_fn, xb, yb, clip_params, clip) -> "torch.Tensor":
        """One step of an optimizer that re-evaluates the loss (L-BFGS, line searches)."""
        import torch

        first: list[torch.Tensor] = []

        def closure() -> "torch.Tensor":
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(model(xb), yb)
            loss.backward()
            if clip is not None:
                torch.nn.utils.clip_grad_norm_(clip_params, clip)
            if not first:
                first.append(loss.detach())
            return loss

        out = optimizer.step(closure)
        # The loss at the weights before the step, as for every other optimizer.
        if isinstance(out, torch.Tensor):
            return out.detach().reshape(())
        return first[0] if first else torch.as_tensor(float("nan"))

    @staticmethod
    def _track(ctx, tracks, step, model, loss_fn, data, device, batch) -> None:
        for t in tracks:
            if step % t.ref.every:
                continue
            with fork_rng(device):
                model.eval()
                try:
                    results = t.analyzer.analyze(
                        AnalysisContext(
                            model=model,
                            loss_fn=loss_fn,
                            data=data,
                            device=device,
                            generator=t.generator,
                            step=step,
                            batch=batch,
                            load_model=ctx.load_model,
                        )
                    )
                finally:
                    model.train()
            t.series.append((step, results))
            ctx.log_metrics({"step": step, "track": t.key, **results})

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


class _CheckpointClock:
    """When to save a resumable checkpoint: every ``every`` steps, else every ``minutes``."""

    def __init__(self, every: int | None, minutes: float, step: int):
        self.every, self.seconds = every, minutes * 60.0
        self.last_step, self.last_time = step, time.monotonic()

    def __call__(self, step: int) -> bool:
        if self.every is not None:
            due = step - self.last_step >= self.every
        else:
            due = time.monotonic() - self.last_time >= self.seconds
        if due:
            self.last_step, self.last_time = step, time.monotonic()
        return due
