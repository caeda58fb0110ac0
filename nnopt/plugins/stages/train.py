"""The ``train`` stage: mini-batch training of the stage's model with a registered optimizer."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from nnopt.core import distributed
from nnopt.core.component import OptimizerRef, Params, ScheduleRef, TrackRef
from nnopt.core.errors import StageError
from nnopt.core.loop import BackwardStep, CheckpointClock, ClosureStep, LoopCallback, LoopResult, TrainLoop
from nnopt.core.stage import Stage, StageContext, StageOutcome, StageSpec

from ._common import draw_plots, evaluate, seed_everything
from .param_groups import ParamGroup, build_param_groups, check_group_options
from .sparsity import apply_masks, check_masks_fit, sparsity_report
from .train_callbacks import (ApplyMasks, Autocast, EarlyStop, EarlyStopOnTrainLoss, GradClip, GradClipValue,
                              GradScaling, KeepWeights, MaskGradients, MicroBatchStep, Progress, Project,
                              TrackAnalyzers)


class Box(Params):
    """``project: {min, max}``: the box every parameter is kept in."""

    min: float = Field(..., description="lower bound of every parameter entry")
    max: float = Field(..., description="upper bound of every parameter entry")

    @model_validator(mode="after")
    def _ordered(self) -> "Box":
        if self.min > self.max:
            raise ValueError(f"project.min ({self.min}) is above project.max ({self.max})")
        return self


class EarlyStopSpec(Params):
    """``early_stop: {metric, patience, min_delta, restore_best}``."""

    metric: Literal["test_loss", "test_accuracy", "train_loss"] = Field(
        "test_loss", description="what must improve: test_loss / train_loss (lower is better, train_loss = mean batch "
        "loss since the previous evaluation) or test_accuracy (higher is better)")
    patience: int = Field(..., ge=1, description="evaluations in a row without improvement after which training stops")
    min_delta: float = Field(0.0, ge=0, description="an improvement must beat the best value by more than this")
    restore_best: bool = Field(False, description="end on the weights of the best evaluation instead of the last ones")


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
    keep_optimizer: bool = Field(
        False, description="also keep the optimizer's state at every `keep` step (optimizer/step_N: safetensors + "
        "JSON), for `rewind`'s optimizer_state and for a train stage starting from STAGE@N with its momentum"
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
    shuffle: bool = Field(
        True, description="reshuffle the train split every epoch (false: batches in the split's stored order, as for "
        "online problems)")
    project: Box | None = Field(
        None, description="{min, max}: after every update clamp every parameter into [min, max] (projected gradient "
        "descent onto a box)")
    grad_clip_value: float | None = Field(
        None, gt=0, description="clip every gradient entry to [-c, c] before each update (before grad_clip's norm "
        "clipping when both are given)")
    accumulate: int = Field(
        1, ge=1, description="micro-batches of data.batch_size per optimizer step (gradient accumulation: the "
        "effective batch is accumulate x batch_size, its gradient that of the mean loss over it)")
    full_batch: bool = Field(
        False, description="every step uses the whole train split (data.batch_size is ignored; epochs = steps); with "
        "accumulate: k the split is cut into k micro-batches")
    precision: Literal["fp32", "bf16", "fp16"] = Field(
        "fp32", description="fp32, or mixed precision by torch.autocast: bf16 (CPU or CUDA) or fp16 (CUDA only, with "
        "a GradScaler); weights and optimizer state stay float32, evaluations run in float32")
    compile: bool = Field(False, description="torch.compile the model (mode default) for training and evaluation")
    channels_last: bool = Field(
        False, description="model and 4-D input batches in torch.channels_last memory format (conv nets); a no-op, "
        "with a note, for other inputs")
    early_stop: EarlyStopSpec | None = Field(
        None, description="{metric, patience, min_delta, restore_best}: stop when the metric has not improved for "
        "patience evaluations (see eval_every); steps after the stop are not trained")

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
    results; ``plots/loss.png`` (the loss, and beside it the test accuracy and the learning rate
    per step) and each tracked analyzer's plots. The final metrics are the
    train and test loss (and accuracy, for classification) measured in eval mode after the
    last step, plus ``steps``, ``epochs``, ``seconds`` and ``steps_per_second``.

    A non-finite training loss stops the stage with status ``diverged``, naming the first
    step whose loss was not finite and the last finite loss before it.

    Opt-in features (each a loop callback or step rule, each recorded in the result's
    ``results["training"]`` block with the torch optimizer class and its fused/foreach as
    built): ``shuffle: false`` takes the split in its stored order (online problems);
    ``project: {min, max}`` is projected gradient descent onto a box, θ ← clamp(θ, min, max)
    after every update (θ_0 is not projected); ``grad_clip_value: c`` clamps every gradient
    entry to [−c, c] (before ``grad_clip``'s norm clipping); ``accumulate: k`` makes one step
    of k micro-batches of ``batch_size``, g = Σ_c (|c|/|B|) ∇L_c, exactly the mean-loss
    gradient of the k·batch_size batch B (closure and other own-rule optimizers are refused:
    their step re-evaluates the loss at weights of their choosing); ``full_batch`` makes every
    step the whole split (steps = epochs; not shuffled, as order changes nothing but rounding;
    with ``accumulate: k`` cut into k micro-batches); ``precision`` bf16/fp16 runs forward and
    loss under ``torch.autocast`` (fp16 on CUDA only, with a checkpointed GradScaler);
    ``compile`` compiles the model in place (``nn.Module.compile``: weight names unchanged);
    ``channels_last`` converts a conv net and its 4-D data to NHWC (a note and no-op
    otherwise). ``early_stop`` stops after ``patience`` evaluations in a row without an
    improvement of more than ``min_delta``: the metrics get ``stopped_at`` (None if training
    ran to the end), ``best_step`` and ``best_<metric>``; ``steps`` counts the steps trained;
    kept steps after the stop hold the weights it stopped at (no later update); the final
    weights are the last ones, or with ``restore_best`` those of the best evaluation (whose
    test metrics are then reported).

    Masked training (a sparse sub-network, Frankle & Carbin 2019, "The lottery ticket
    hypothesis"): when ``from`` names a stage that saved masks (``prune``, ``rewind``, or a
    masked ``train``), θ is trained as θ ⊙ m with m ∈ {0, 1} fixed: the loaded weights are
    masked before anything else, every gradient is masked as soon as it is computed
    (``MaskGradients``: before clipping, so no optimizer statistic sees a pruned entry), and
    after every update the weights are multiplied by m again (``ApplyMasks``), so weight decay,
    decoupled decay, preconditioners and averages cannot revive a pruned weight. Per-entry
    optimizer state (momentum buffers, Adam's moments, schedule-free's z) stays exactly zero
    where pruned: multiplied by m after every step too, except for the optimizers whose update
    is elementwise, where it provably stays zero by itself (``ApplyMasks``'s docstring). The
    weights reported (evaluations, kept steps, final: schedule-free's x) are masked once more
    after the optimizer's swap. Every saved artifact is exactly zero where m is 0. The stage saves the
    same ``masks.safetensors`` so a chain (train → prune → rewind → train ...) continues, and
    its results get ``sparsity`` (per layer and total: weights, remaining, fraction). A dense
    ``from`` trains as before and writes no masks.

    Tracked analyzers see the live model in eval mode (so they neither update normalization
    statistics nor draw dropout masks) inside a forked RNG: tracking never changes the
    training trajectory. The same spec and seed give bitwise-identical weights on CPU.
    """

    Params: ClassVar[type[TrainSpec]] = TrainSpec
    cache_version: ClassVar[int] = 3  # 3: masked training from a stage with masks
    needs: ClassVar[frozenset[str]] = frozenset({"data", "model", "loss"})
    provides_weights: ClassVar[bool] = True
    #: under torchrun every rank trains it, on its shard of each global batch (core.distributed)
    data_parallel: ClassVar[bool] = True

    params: TrainSpec

    def kept_steps(self) -> set[int]:
        return set(self.params.keep)

    def callbacks(self, ctx: StageContext, model: Any, loss_fn: Any, device: Any) -> list[LoopCallback]:
        """The loop's callbacks for this stage, in the order their hooks run."""
        spec = self.params
        out: list[LoopCallback] = [KeepWeights(ctx, set(spec.keep), spec.keep_optimizer)]
        trainable = [p for p in model.parameters() if p.requires_grad]
        if spec.precision != "fp32":
            import torch

            out.append(Autocast(device.type, torch.bfloat16 if spec.precision == "bf16" else torch.float16))
        if spec.precision == "fp16":
            out.append(GradScaling(device.type))
        if spec.track:
            out.append(TrackAnalyzers(ctx, spec.track, ctx.seed, loss_fn, device))
        if spec.grad_clip_value is not None:
            out.append(GradClipValue(trainable, spec.grad_clip_value))
        if spec.grad_clip is not None:
            out.append(GradClip(trainable, spec.grad_clip))
        if spec.project is not None:
            out.append(Project(trainable, spec.project.min, spec.project.max))
        if spec.early_stop is not None:
            e = spec.early_stop
            cls = EarlyStopOnTrainLoss if e.metric == "train_loss" else EarlyStop
            out.append(cls(e.metric, e.patience, e.min_delta, e.restore_best))
        return out

    def _check_device_options(self, device: Any, opt_component: Any) -> None:
        """Refuse combinations that cannot run as asked, before anything trains."""
        import shutil

        import torch

        spec = self.params
        if spec.precision == "fp16" and device.type != "cuda":
            raise StageError(f"precision fp16 trains with a GradScaler on CUDA only, and this stage runs on {device.type}; "
                             "use precision: bf16 (CPU or CUDA) or fp32")
        if spec.precision == "bf16":
            if device.type not in ("cpu", "cuda"):
                raise StageError(f"precision bf16 is supported on cpu and cuda, not {device.type}")
            if device.type == "cuda" and not torch.cuda.is_bf16_supported():
                raise StageError("precision bf16: this CUDA device does not support bfloat16; use fp16 or fp32")
        own_rule = type(opt_component.step_rule()) is not BackwardStep
        for option, asked in (("accumulate", spec.accumulate > 1), ("precision fp16", spec.precision == "fp16")):
            if asked and (opt_component.needs_closure or own_rule):
                why = ("needs a closure (its step re-evaluates the loss at other weights)" if opt_component.needs_closure
                       else f"computes its steps with its own rule ({type(opt_component.step_rule()).__name__})")
                raise StageError(f"{option} works with plain-backward optimizers only: optimizer "
                                 f"'{spec.optimizer.name}' {why}")
        if spec.compile and device.type == "cpu" and not any(shutil.which(c) for c in ("g++", "c++", "clang++")):
            raise StageError("compile: true on CPU needs a C++ compiler (torch.compile's inductor backend builds C++ "
                             "kernels) and none is on PATH; install g++ or set compile: false")

    def run(self, ctx: StageContext) -> StageOutcome:
        import dataclasses

        import torch

        spec = self.params
        device = torch.device(ctx.device)
        seed_everything(ctx.seed)
        data = ctx.load_data()
        model = ctx.load_model(spec.from_) if spec.from_ is not None else ctx.build_model()
        masks = self._load_masks(ctx, model) if spec.from_ is not None else None
        model.train()
        loss_fn = ctx.loss_fn()
        classification = data.task == "classification"
        notes: list[str] = []

        n = data.n_train
        if n == 0:
            raise StageError("the train split is empty")
        if spec.early_stop is not None and data.x_test.shape[0] == 0:
            raise StageError("early_stop decides at test evaluations, and the test split is empty")
        if spec.full_batch:  # one step is the whole split, cut into `accumulate` micro-batches
            batch_size, micro = n, -(-n // spec.accumulate)
        else:  # `accumulate` micro-batches of data.batch_size make one step's batch
            micro = min(ctx.batch_size or n, n)
            batch_size = min(micro * spec.accumulate, n)
        per_epoch = math.ceil(n / batch_size)
        total = spec.steps if spec.steps is not None else spec.epochs * per_epoch  # type: ignore[operator]
        late = sorted(k for k in spec.keep if k > total)
        if late:
            raise StageError(f"keep step {late[0]} is beyond the {total} steps this stage trains")

        opt_component = spec.optimizer.instantiate()
        self._check_device_options(device, opt_component)
        if spec.channels_last:
            if data.x_train.ndim == 4:
                model = model.to(memory_format=torch.channels_last)
                fmt = torch.channels_last  # batches are views of the split: convert it once
                data = dataclasses.replace(data, x_train=data.x_train.contiguous(memory_format=fmt),
                                           x_test=data.x_test.contiguous(memory_format=fmt))
            else:
                notes.append(f"channels_last ignored: the inputs are {data.x_train.ndim}-D, not 4-D images")
        params = build_param_groups(model, spec.param_groups, opt_component.params.model_dump())
        optimizer = opt_component.build(params, device)
        check_group_options(optimizer, spec.param_groups)
        if spec.from_ is not None:
            self._load_optimizer(ctx, optimizer, model, notes)
        schedule_component = spec.schedule.instantiate().bind(per_epoch, batch_size)
        schedule = schedule_component.build(optimizer, total)
        eval_batch = max(batch_size, 1024)
        callbacks = [*self.callbacks(ctx, model, loss_fn, device),
                     *opt_component.callbacks(optimizer, model), *schedule_component.callbacks(schedule)]
        if masks is not None:  # gradients masked before any other hook, weights after every other one
            grad_masks, weight_masks = self._mask_callbacks(model, masks, optimizer)
            callbacks = [grad_masks, *callbacks, weight_masks]
        scaler = next((cb.scaler for cb in callbacks if isinstance(cb, GradScaling)), None)
        if micro < batch_size or scaler is not None:
            step_rule = MicroBatchStep(micro, scaler)
        else:
            step_rule = opt_component.step_rule()
        if spec.compile:
            model.compile()  # in place: the state_dict keeps its keys, so weights and checkpoints are unchanged
        sharding, step_rule = self._data_parallel(model, step_rule, device, notes)
        training = self._training_block(optimizer, device, batch_size, micro, notes)
        training["masked"] = masks is not None
        sparsity = {"sparsity": sparsity_report(masks)} if masks is not None else {}

        with ctx.progress(total, f"train {ctx.stage_id}") as bar:
            loop = TrainLoop(
                ctx, model, optimizer, schedule, loss_fn, data, total=total, batch_size=batch_size, shuffle_seed=ctx.seed,
                evaluate=lambda m: evaluate(m, loss_fn, data.x_test, data.y_test, classification, eval_batch),
                log_every=spec.log_every, eval_every=spec.eval_every, callbacks=[*callbacks, Progress(bar)],
                step_rule=step_rule, shuffle=spec.shuffle and not spec.full_batch,
            )
            loop.sharding = sharding
            state = distributed.resume_state(ctx)  # under torchrun: rank 0's, on every rank
            if state is not None:  # a killed run of this very stage saved this: continue from it
                loop.load_state_dict(state)
            loop.checkpoint_due = CheckpointClock(spec.checkpoint_every, spec.checkpoint_minutes, loop.step)
            result = self._run_loop(loop)
        if masks is not None:  # the same masks: the next stage of a chain (prune, rewind, train) reads them here
            ctx.save_masks(masks)
        tracks = next((cb.tracks for cb in callbacks if isinstance(cb, TrackAnalyzers)), [])
        if result.status == "diverged":
            return self._diverged(ctx, loop, result, tracks, training, sparsity)
        stopper = next((cb for cb in callbacks if isinstance(cb, EarlyStop)), None)
        trained = loop.step
        if trained < total:  # stopped early: later kept steps hold the weights training stopped at
            for k in spec.keep:
                if k > trained:
                    with loop.evaluation():
                        ctx.save_weights(model.state_dict(), step=k)
                    if spec.keep_optimizer:
                        ctx.save_optimizer(optimizer, step=k, model=model)

        test = loop.test
        with loop.evaluation():  # the weights the method reports (schedule-free's x_t, an average, ...)
            if stopper is not None and stopper.restore_best and stopper.best_state is not None:
                model.load_state_dict(stopper.best_state)
                test = evaluate(model, loss_fn, data.x_test, data.y_test, classification, eval_batch)
            train = evaluate(model, loss_fn, data.x_train, data.y_train, classification, eval_batch)
            if not math.isfinite(train["loss"]):
                return self._diverged(ctx, loop, LoopResult("diverged", trained, result.seconds, trained, train["loss"],
                                                            loop.last_finite), tracks, training, sparsity)
            ctx.save_weights(model.state_dict(), step=None)
        if distributed.is_main():  # the other ranks' outputs are discarded: no plots to draw
            self._plots(ctx, loop, tracks)

        metrics: dict[str, Any] = {f"train_{k}": v for k, v in train.items()}
        metrics.update({f"test_{k}": v for k, v in test.items()})  # the loop evaluates at the last step
        metrics.update({
            "steps": trained,
            "epochs": trained / per_epoch,
            "seconds": result.seconds,
            "steps_per_second": trained / result.seconds if result.seconds > 0 else None,
        })
        if stopper is not None:
            metrics.update({"stopped_at": stopper.stopped_at, "best_step": stopper.best_step,
                            f"best_{stopper.metric}": stopper.best})
            training["early_stop"] = {"stopped_at": stopper.stopped_at, "best_step": stopper.best_step,
                                      "restored_best": bool(stopper.restore_best and stopper.best_state is not None)}
        return StageOutcome(metrics=metrics, results={"training": training, **sparsity},
                            message="; ".join(notes) or None)

    def _load_optimizer(self, ctx: StageContext, optimizer: Any, model: Any, notes: list[str]) -> None:
        """Start the optimizer from the state ``from``'s stage kept at that reference, if it
        kept one (``keep_optimizer``, or a ``rewind`` with ``optimizer_state``): momentum
        buffers and moment estimates continue; this stage's own hyperparameters stay."""
        from nnopt.core.optimizer_state import load_into

        kept = ctx.load_optimizer(self.params.from_)
        if kept is None:
            return
        try:
            load_into(optimizer, *kept, model=model)
        except ValueError as err:
            raise StageError(f"cannot start from the optimizer state kept with '{self.params.from_}': {err}") from None
        notes.append(f"optimizer state loaded from '{self.params.from_}'")

    def _load_masks(self, ctx: StageContext, model: Any) -> dict[str, Any] | None:
        """``from``'s masks (None for a dense ``from``), checked against the model, with the
        model's weights masked in place (before the optimizer sees them: its state starts from
        masked weights, schedule-free's z included)."""
        import torch

        masks = ctx.load_masks(self.params.from_)
        if masks is None:
            return None
        where = f"'{self.params.from_}'"
        state = model.state_dict(keep_vars=True)
        check_masks_fit(masks, state, where)
        params = dict(model.named_parameters())
        for name, mask in masks.items():
            if name not in params:
                raise StageError(f"the masks of {where} name '{name}', which is a buffer of the model, not a trained "
                                 "parameter; only parameters can be pruned")
            if not bool(((mask == 0) | (mask == 1)).all()):
                raise StageError(f"the mask '{name}' of {where} holds values other than 0 and 1")
        with torch.no_grad():  # θ ⊙ m: a masked `from` loads bitwise unchanged (the sign of its zeros too)
            for name, mask in masks.items():
                tensor = state[name]
                if bool(torch.isfinite(tensor).all()):
                    tensor.mul_(mask.to(dtype=tensor.dtype))
                else:  # inf · 0 is nan: an exact zero where pruned whatever the pruned weight was
                    apply_masks(model, {name: mask})
        return masks

    @staticmethod
    def _mask_callbacks(model: Any, masks: dict[str, Any], optimizer: Any) -> tuple[MaskGradients, ApplyMasks]:
        """The two masking callbacks, with each mask as a 0/1 tensor of its weight's dtype,
        device and memory layout (a multiply by it is one cheap kernel: see the numbers in
        ``train_callbacks``)."""
        import torch

        params = dict(model.named_parameters())
        tensors = [params[name] for name in masks]
        factors = [torch.empty_like(p.detach()).copy_(masks[name]) for name, p in zip(masks, tensors)]
        trained = [(p, m) for p, m in zip(tensors, factors) if p.requires_grad]
        grads = MaskGradients([p for p, _ in trained], [m for _, m in trained])
        return grads, ApplyMasks(tensors, factors, optimizer)

    def _data_parallel(self, model: Any, step_rule: Any, device: Any, notes: list[str]) -> tuple[Any, Any]:
        """Under torchrun (more than one process): the model wrapped in DistributedDataParallel
        and the step rule that trains it on this rank's shard (``core.distributed``); else
        ``(None, step_rule)``, the single-process path untouched."""
        if not distributed.active():
            return None, step_rule
        from torch.nn.parallel import DistributedDataParallel

        if type(step_rule) not in (BackwardStep, ClosureStep):
            why = ("accumulate / fp16 micro-batch steps" if isinstance(step_rule, MicroBatchStep)
                   else f"optimizer '{self.params.optimizer.name}' with its own step rule ({type(step_rule).__name__})")
            raise StageError(f"data-parallel training (torchrun, {distributed.world_size()} processes) runs plain-backward "
                             f"and closure optimizers only, and this stage uses {why}; run it in one process")
        if not any(p.requires_grad for p in model.parameters()):
            raise StageError("data-parallel training needs at least one trained parameter")
        ids = [device.index if device.index is not None else distributed.local_rank()] if device.type == "cuda" else None
        net = DistributedDataParallel(model, device_ids=ids)
        sharding = distributed.Sharding(distributed.rank(), distributed.world_size())
        notes.append(f"data-parallel over {sharding.world} processes (DistributedDataParallel)")
        return sharding, distributed.DataParallelStep(net, sharding, closure=isinstance(step_rule, ClosureStep))

    def _run_loop(self, loop: TrainLoop) -> LoopResult:
        if not self.params.compile:
            return loop.run()
        import torch._dynamo

        try:
            return loop.run()
        except torch._dynamo.exc.TorchDynamoException as err:  # compiling failed: say so, not a 100-line trace
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise StageError(f"compile: true failed, torch.compile could not compile the model "
                             f"({type(err).__name__}: {first[:300]}); set compile: false") from None

    def _training_block(self, optimizer: Any, device: Any, batch_size: int, micro: int, notes: list[str]) -> dict[str, Any]:
        """How this stage actually trained, as built (``results["training"]``, shown by ``nnopt show``)."""
        spec = self.params
        cls = type(optimizer)
        defaults = optimizer.defaults
        return {
            "optimizer": f"{cls.__module__}.{cls.__qualname__}",
            "fused": bool(defaults.get("fused")) if "fused" in defaults else None,
            "foreach": defaults.get("foreach") if "foreach" in defaults else None,
            "device": str(device),
            "precision": spec.precision,
            "compile": spec.compile,
            "channels_last": spec.channels_last and not any(note.startswith("channels_last") for note in notes),
            "full_batch": spec.full_batch,
            "batch_size": batch_size,
            "accumulate": spec.accumulate,
            "micro_batch_size": micro,
            "shuffle": spec.shuffle and not spec.full_batch,
            "project": spec.project.model_dump() if spec.project is not None else None,
            "grad_clip": spec.grad_clip,
            "grad_clip_value": spec.grad_clip_value,
            "notes": list(notes),
        }

    def _diverged(self, ctx: StageContext, loop: TrainLoop, result: LoopResult, tracks: list,
                  training: dict[str, Any], extra: dict[str, Any] | None = None) -> StageOutcome:
        at, per_epoch = result.diverged_at, loop.per_epoch
        ctx.log_metrics({"step": at, "epoch": at / per_epoch, "loss": result.value, "diverged": True})
        self._plots(ctx, loop, tracks, diverged=(at, result.last_finite))
        return StageOutcome(
            status="diverged",
            metrics={"diverged_at_step": at, "last_finite_loss": result.last_finite, "steps": at,
                     "epochs": at / per_epoch, "seconds": result.seconds},
            results={"training": training, **(extra or {})},
            message=f"training loss became {result.value} at step {at} (last finite loss: {result.last_finite})",
        )

    @staticmethod
    def _plots(ctx, loop: TrainLoop, tracks: list, diverged: tuple[int, float] | None = None) -> list[Path]:
        files = []
        if loop.train_curve or loop.test_curve:
            files.append(plot_loss(loop.train_curve, loop.test_curve, ctx.plots_dir / "loss.png",
                                   records=_logged_records(ctx), diverged=diverged, stage_id=ctx.stage_id))
        for t in tracks:
            if t.series:
                files.extend(draw_plots(ctx.out_dir, t.key, t.ref.name, t.analyzer.plot_series, t.series))
        return files


def _logged_records(ctx: Any) -> list[dict[str, Any]]:
    """The ``metrics.jsonl`` lines this stage has logged so far (the learning rate and test
    accuracy of each logged step are read back from there: that file, unlike the loop's
    curves, survives a resumption intact); ``[]`` where the context keeps none."""
    import json

    handle = getattr(ctx, "_metrics_file", None)
    if handle is not None:
        handle.flush()  # the file stays open (buffered) for the rest of the stage
    path = Path(getattr(ctx, "out_dir", ".")) / "metrics.jsonl"
    if not path.is_file():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict):
            out.append(row)
    return out


def _series(records: list[dict[str, Any]], key: str) -> tuple[list[float], list[float]]:
    """``(steps, values)`` of the records' finite ``key`` values, tracked analyzers' lines left out."""
    from nnopt.plugins.analyzers._plot import finite_pairs

    rows = [r for r in records if key in r and "track" not in r and not r.get("diverged")]
    return finite_pairs([r.get("step") for r in rows], [r.get(key) for r in rows])


def _spans_decades(values: list[float]) -> bool:
    return bool(values) and min(values) > 0 and max(values) / min(values) >= 10


def loss_figure(train_curve: list[tuple[int, float]], test_curve: list[tuple[int, float]], *,
                records: Sequence[dict[str, Any]] = (), diverged: tuple[int, float] | None = None,
                stage_id: str | None = None) -> Any:
    """The train stage's figure: the train loss per logged window and the test loss per
    evaluation against step (log y when they span a decade or more); beside it the test
    accuracy (when ``records`` hold ``test_accuracy``: classification) and the learning rate
    of each logged step (``lr`` in ``records``). ``diverged = (step, last finite loss)``
    marks where training diverged. Returns the (unsaved) figure; its axes are ``fig.axes``
    in that order."""
    from nnopt.core import figure_style as fs
    from nnopt.plugins.analyzers._plot import finite_pairs, mark_diverged, new_figure, set_log_y

    acc = _series(list(records), "test_accuracy")
    lr = _series(list(records), "lr")
    panels = ["loss", *(["accuracy"] if acc[0] else []), *(["lr"] if lr[0] else [])]
    fig, axes = new_figure(6.4 if len(panels) == 1 else 4.6 * len(panels), 4.0, 1, len(panels))
    axes = [axes] if len(panels) == 1 else list(axes)
    named = dict(zip(panels, axes))
    where = f" (stage '{stage_id}')" if stage_id else ""

    ax = named["loss"]
    tx, ty = finite_pairs([s for s, _ in train_curve], [v for _, v in train_curve])
    ex, ey = finite_pairs([s for s, _ in test_curve], [v for _, v in test_curve])
    if tx:
        ax.plot(tx, ty, label="train (window mean)", color=fs.BLUE)
    if ex:  # green: the test split's colour in every panel
        ax.plot(ex, ey, "o-", label="test", markersize=3, color=fs.GREEN)
    if _spans_decades(ty + ey):
        set_log_y(ax, ty + ey)
    if diverged is not None:
        step, last = diverged
        y = last if isinstance(last, (int, float)) and math.isfinite(last) else max(ty + ey, default=1.0)
        mark_diverged(ax, step, y, label=f"diverged (step {step})")
    elif ty or ey:
        ax.legend()
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(f"loss{where}" if len(panels) == 1 else "train and test loss")

    if "accuracy" in named:
        ax = named["accuracy"]
        ax.plot(*acc, "o-", markersize=3, color=fs.GREEN)
        ax.set_xlabel("step")
        ax.set_ylabel("test accuracy")
        ax.set_title("test accuracy")
    if "lr" in named:
        ax = named["lr"]
        ax.plot(*lr, color=fs.PURPLE)
        if _spans_decades(lr[1]):
            set_log_y(ax, lr[1])
        ax.set_xlabel("step")
        ax.set_ylabel(r"learning rate $\eta$ (first parameter group)")
        ax.set_title("learning rate")
    if len(panels) > 1:
        fig.suptitle(f"training{where}")
    return fig


def plot_loss(train_curve: list[tuple[int, float]], test_curve: list[tuple[int, float]], path: Path, *,
              records: Sequence[dict[str, Any]] = (), diverged: tuple[int, float] | None = None,
              stage_id: str | None = None) -> Path:
    """Draw ``loss_figure`` (same arguments) and write it to ``path`` (PNG; SVG/PDF beside it
    as ``--figure-format`` asks); returns the path."""
    from nnopt.plugins.analyzers._plot import save

    fig = loss_figure(train_curve, test_curve, records=records, diverged=diverged, stage_id=stage_id)
    return save(fig, path)
