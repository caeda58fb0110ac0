"""The ``train`` stage's features as training-loop callbacks (``nnopt.core.loop``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

from nnopt.core.component import TrackRef
from nnopt.core.kinds import AnalysisContext, Analyzer
from nnopt.core.loop import LoopCallback, StepRule

from ._common import derived_generator, fork_rng, unique_key

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from nnopt.core.loop import TrainLoop
    from nnopt.core.progress import StageProgress
    from nnopt.core.stage import StageContext


class KeepWeights(LoopCallback):
    """Saves θ_N as ``weights/step_N`` for every kept N: before step N's update (θ_0 is the
    initialization) and, for N = total, after the last step; with ``optimizer`` also the
    optimizer's state after N updates as ``optimizer/step_N``."""

    def __init__(self, ctx: "StageContext", steps: set[int], optimizer: bool = False):
        self.ctx, self.steps, self.optimizer = ctx, set(steps), optimizer

    def on_step_start(self, loop: "TrainLoop") -> None:
        if loop.step in self.steps:
            self._keep(loop)

    def on_train_end(self, loop: "TrainLoop") -> None:
        if loop.step in self.steps:
            self._keep(loop)

    def _keep(self, loop: "TrainLoop") -> None:
        with loop.evaluation():
            self.ctx.save_weights(loop.model.state_dict(), step=loop.step)
        if self.optimizer:
            self.ctx.save_optimizer(loop.optimizer, step=loop.step, model=loop.model)


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
                        lr=float(loop.optimizer.param_groups[0]["lr"]), model_spec=self.ctx.model_spec,
                        kept_steps=self.ctx.kept_steps,
                    ))
                finally:
                    model.train()
            t.series.append((loop.step, results))
            self.ctx.log_metrics({"step": loop.step, "track": t.key, **results})

    def state_dict(self) -> Any:
        return [(t.generator.get_state(), t.series, t.analyzer.state_dict()) for t in self.tracks]

    def load_state_dict(self, state: Any) -> None:
        for t, (gen, series, *own) in zip(self.tracks, state):
            t.generator.set_state(gen)
            t.series[:] = series
            if own and own[0] is not None:
                t.analyzer.load_state_dict(own[0])


class GradClipValue(LoopCallback):
    """Clips every gradient entry to [−c, c] before each update (``clip_grad_value_``); runs
    before the norm clipping of ``GradClip`` when both are set."""

    def __init__(self, params: list["torch.Tensor"], clip_value: float):
        import torch

        self.params, self.clip_value = params, clip_value
        self._clip = torch.nn.utils.clip_grad_value_

    def after_backward(self, loop: "TrainLoop") -> None:
        self._clip(self.params, self.clip_value)


class Project(LoopCallback):
    """Projected gradient descent onto the box [lo, hi]^d: after every update
    θ ← Π(θ) = min(max(θ, lo), hi) elementwise, the Euclidean projection onto the box. The
    initialization θ_0 is left as it is (``keep: [0]`` stores it unprojected)."""

    def __init__(self, params: list["torch.Tensor"], lo: float, hi: float):
        self.params, self.lo, self.hi = params, lo, hi

    def after_step(self, loop: "TrainLoop") -> None:
        import torch

        with torch.no_grad():
            for p in self.params:
                p.clamp_(self.lo, self.hi)


class Autocast(LoopCallback):
    """Mixed precision: every training forward pass and loss run under ``torch.autocast``
    (matrix products in ``dtype``, reductions and losses in float32); the weights, gradients
    and optimizer state stay float32. Evaluations run in full precision."""

    def __init__(self, device_type: str, dtype: "torch.dtype"):
        self.device_type, self.dtype = device_type, dtype

    def forward_context(self, loop: "TrainLoop"):
        import torch

        return torch.autocast(device_type=self.device_type, dtype=self.dtype)


class GradScaling(LoopCallback):
    """Holds the ``torch.amp.GradScaler`` of float16 training, so that its loss scale (and
    growth counter) is saved in every checkpoint and a resumed run continues bitwise."""

    def __init__(self, device_type: str):
        import torch

        self.scaler = torch.amp.GradScaler(device_type)

    def state_dict(self) -> Any:
        return self.scaler.state_dict()

    def load_state_dict(self, state: Any) -> None:
        self.scaler.load_state_dict(state)


class MicroBatchStep(StepRule):
    """One optimizer step from micro-batches: g = Σ_c (|c|/|B|) ∇L_c(θ), then θ ← step(θ, g).

    The loop's batch B is cut into micro-batches c of ``micro`` examples (the last one
    possibly smaller); each one's mean loss L_c, weighted by |c|/|B|, is backpropagated into
    the same ``.grad``, so g is exactly the gradient of the mean loss over B (up to rounding)
    while only one micro-batch's activations are in memory: gradient accumulation. (Layers
    whose output depends on the batch, such as BatchNorm, see micro-batch statistics.) The
    reported loss is Σ_c (|c|/|B|) L_c, the mean loss over B. ``after_backward`` runs once, on
    the accumulated gradient, so clipping acts on g.

    With a ``scaler`` (float16), each micro-batch loss is multiplied by the loss scale before
    its backward pass, g is unscaled before ``after_backward``, and the scaler skips the update
    (and lowers the scale) when g has an inf or NaN. This is plain backward's rule; optimizers
    with their own step rule (closures, two passes) cannot be combined with it.
    """

    def __init__(self, micro: int | None = None, scaler: "torch.amp.GradScaler | None" = None):
        self.micro, self.scaler = micro, scaler

    def step(self, loop: "TrainLoop", xb: "torch.Tensor", yb: "torch.Tensor") -> "torch.Tensor":
        optimizer, scaler, model, loss_fn = loop.optimizer, self.scaler, loop.model, loop.loss_fn
        n = int(xb.shape[0])
        micro = self.micro or n
        optimizer.zero_grad(set_to_none=True)
        total = None
        for start in range(0, n, micro):
            xc, yc = xb[start : start + micro], yb[start : start + micro]
            with loop.forward():
                loss = loss_fn(model(xc), yc)
            if xc.shape[0] != n:
                loss = loss * (xc.shape[0] / n)
            (scaler.scale(loss) if scaler is not None else loss).backward()
            total = loss.detach() if total is None else total + loss.detach()
        if scaler is not None:
            scaler.unscale_(optimizer)
        for hook in loop.hooks.after_backward:
            hook(loop)
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        return total


class EarlyStop(LoopCallback):
    """Stops training when ``metric`` has not improved by more than ``min_delta`` on the best
    value so far for ``patience`` evaluations in a row (Prechelt, "Early stopping — but when?",
    1998). ``test_loss`` improves downwards, ``test_accuracy`` upwards. With ``restore_best``
    the weights of the best evaluation (as reported, inside ``evaluate_context``) are kept in
    memory, and in checkpoints, so that the stage can end on them.
    """

    def __init__(self, metric: str, patience: int, min_delta: float, restore_best: bool):
        self.metric, self.patience, self.min_delta, self.restore_best = metric, patience, min_delta, restore_best
        self.sign = -1.0 if metric == "test_accuracy" else 1.0  # compare sign·value: smaller is better
        self.best: float | None = None
        self.best_step: int | None = None
        self.bad = 0  # evaluations since the last improvement
        self.stopped_at: int | None = None
        self.best_state: dict[str, Any] | None = None

    def value(self, loop: "TrainLoop", metrics: dict[str, float]) -> float | None:
        return metrics.get(self.metric.removeprefix("test_"))

    def on_evaluate(self, loop: "TrainLoop", metrics: dict[str, float]) -> None:
        import math

        value = self.value(loop, metrics)
        if value is None or not math.isfinite(value):
            return
        if self.best is None or self.sign * value < self.sign * self.best - self.min_delta:
            self.best, self.best_step, self.bad = value, loop.step, 0
            if self.restore_best:
                with loop.evaluation():
                    self.best_state = {k: v.detach().clone() for k, v in loop.model.state_dict().items()}
            return
        self.bad += 1
        if self.bad >= self.patience:
            self.stopped_at = loop.step
            loop.request_stop()

    def state_dict(self) -> Any:
        return {"best": self.best, "best_step": self.best_step, "bad": self.bad, "stopped_at": self.stopped_at,
                "best_state": self.best_state}

    def load_state_dict(self, state: Any) -> None:
        self.best, self.best_step, self.bad = state["best"], state["best_step"], state["bad"]
        self.stopped_at, self.best_state = state["stopped_at"], state["best_state"]


class EarlyStopOnTrainLoss(EarlyStop):
    """``EarlyStop`` on ``train_loss``: the mean training batch loss of the steps since the
    previous evaluation (kept on the device, synced at the evaluation: no sync per step)."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._losses: list[Any] = []  # this interval's detached batch losses
        self._resumed: Any = None  # those of a checkpointed interval, as one CPU tensor

    def after_step(self, loop: "TrainLoop") -> None:
        self._losses.append(loop.loss)

    def _interval(self) -> Any:
        import torch

        parts = [torch.stack(self._losses)] if self._losses else []
        if self._resumed is not None:
            parts.insert(0, self._resumed.to(parts[0].device) if parts else self._resumed)
        return torch.cat(parts) if parts else None

    def value(self, loop: "TrainLoop", metrics: dict[str, float]) -> float | None:
        losses = self._interval()
        self._losses, self._resumed = [], None
        return None if losses is None else float(losses.double().mean())

    def state_dict(self) -> Any:
        losses = self._interval()
        return {**super().state_dict(), "losses": None if losses is None else losses.cpu()}

    def load_state_dict(self, state: Any) -> None:
        super().load_state_dict(state)
        self._losses, self._resumed = [], state["losses"]


# ----------------------------------------------------------------- masked training (pruning)
#: optimizer state entries that hold one value per weight entry (torch.optim's, schedule-free's
#: z, nnopt's own): the ones ApplyMasks zeroes where a weight is pruned. A fixed list, not
#: "every state tensor of the weight's shape": a square layer's Kronecker or Shampoo factor has
#: the weight's shape too, and multiplying it by the mask would corrupt it.
PER_ENTRY_STATE = frozenset({
    "momentum_buffer", "exp_avg", "exp_avg_sq", "max_exp_avg_sq", "exp_inf", "z", "sum", "square_avg",
    "acc_delta", "ax", "prev", "grad_avg",
})

# Overhead of the ways to keep pruned weights at zero, measured by benchmarks/masked_training.py
# (digits MLP 64-300-100-10, 80% of each weight matrix pruned, batch 64, 2 threads, on a
# 2-core CPU shared with other jobs, so the spread between runs is a few percent):
#
#   per step, relative to dense training              sgd+momentum+decay   adamw
#   hand loop --variants (best of 5-7 repeats, 3 runs):
#     gradient mask + weight mask (foreach)             +8.4% .. +8.9%    +8.6% .. +19%
#     gradient + weight + optimizer-state mask         -1.9%* .. +10%     +15% .. +25%
#     torch.nn.utils.parametrize (w * m in forward)    +16% .. +21%       +22% .. +23%
#   the train stage itself (median of 5, 4 runs;        +6.2% .. +9.1%
#   one thread, best of 5: sgd +4.6%, adamw +7.7%)      (* a noisy run)
#
# One ``torch._foreach_mul_`` over the three weight-shaped tensors costs ~6 µs in a tight loop
# but ~18-30 µs inside a training step (the tensors are out of cache by then), so every pass
# over the weights, gradients or one state tensor is ~2-3% of a step here; ``masked_fill_`` or
# ``where`` with a bool mask cost ~110 µs, and a bool factor in ``mul_`` is slower than a
# float one: the hot path multiplies by a 0/1 mask of the weight's dtype. Chosen: mask the
# gradients and the weights every step, and the state only for optimizers where it does not
# provably stay zero by itself (``ApplyMasks``). The parametrization is the slowest, renames the
# state dict (``weight`` -> ``parametrizations.weight.original``) and leaves the underlying
# tensor free to drift under weight decay.


class MaskGradients(LoopCallback):
    """g ← g ⊙ m for every masked weight, in ``after_backward``: the gradient of the loss with
    respect to the sub-network that the mask m keeps (Frankle & Carbin 2019, "The lottery
    ticket hypothesis": the pruned network is trained with its pruned weights fixed at zero).

    It runs before every other ``after_backward`` hook (the train stage puts it first), so
    gradient clipping measures the sub-network's gradient, and optimizers fed by the gradient
    (momentum buffers, Adam's moments, curvature statistics) never accumulate anything for a
    pruned entry. On its own it keeps a pruned weight at zero only if the weight is zero already
    and the optimizer's update is elementwise (a preconditioned or orthogonalized step, or
    weight decay of a weight that is not zero yet, moves it): ``ApplyMasks`` makes sure.
    """

    def __init__(self, params: list["torch.Tensor"], masks: list["torch.Tensor"]):
        self.params, self.masks = params, masks

    def after_backward(self, loop: "TrainLoop") -> None:
        import torch

        grads = [p.grad for p in self.params]
        if any(g is None for g in grads):  # a weight that took no part in this loss
            pairs = [(g, m) for g, m in zip(grads, self.masks) if g is not None]
            if not pairs:
                return
            grads, masks = [g for g, _ in pairs], [m for _, m in pairs]
        else:
            masks = self.masks
        torch._foreach_mul_(grads, masks)


def elementwise_optimizer_types() -> frozenset[type]:
    """Optimizers whose update of an entry depends on that entry alone (its gradient, weight
    and state): where g = 0, θ = 0 and the entry's state is 0, they leave all three at 0."""
    import torch

    types = {torch.optim.SGD, torch.optim.Adam, torch.optim.AdamW, torch.optim.Adagrad, torch.optim.RMSprop,
             torch.optim.Adadelta, torch.optim.NAdam, torch.optim.RAdam, torch.optim.Adamax}
    try:
        import schedulefree

        types |= {schedulefree.SGDScheduleFree, schedulefree.AdamWScheduleFree}
    except ImportError:  # pragma: no cover - an optional dependency
        pass
    return frozenset(types)


class ApplyMasks(LoopCallback):
    """Keeps pruned weights exactly zero: θ ← θ ⊙ m after every update; every per-entry
    optimizer state s (momentum buffer, Adam's m and v, schedule-free's z, ...: see
    ``PER_ENTRY_STATE``) is kept at s ⊙ m; inside ``evaluate_context`` the reported weights are
    masked again, after any swap the optimizer makes (this callback comes last, so its context
    is entered after schedule-free's x is swapped in).

    Re-masking the weights after each step is the guarantee (as OpenLTH's masked model does):
    it holds whatever the optimizer does at pruned entries (weight decay θ ← θ − ηλθ, AdamW's
    decoupled decay, a preconditioned or orthogonalized update, schedule-free's average).

    The state: for the optimizers of ``elementwise_optimizer_types`` (exact types: SGD with
    momentum / Nesterov / weight decay, Adam, AdamW, AMSGrad, Adagrad, RMSprop, Adadelta,
    NAdam, RAdam, Adamax, schedule-free SGD and AdamW), a pruned entry's state stays exactly
    0 by induction, with no multiply: it starts at 0 (created from masked weights and masked
    gradients), and each step maps (g, θ, s) = (0, 0, 0) to 0 (b ← μb + g + λθ; m ← β₁m +
    (1−β₁)g, v ← β₂v + (1−β₂)g²; z ← z − γ(g + λy); θ ← θ − η·0/(√0 + ε)). ``MaskGradients``
    gives g = 0 and this callback θ = 0. For any other optimizer (a preconditioner, an
    orthogonalized or curvature step, momentum over a transformed direction) the per-entry
    state is multiplied by m after every step as well. Either way the state saved in
    checkpoints (and rewound by ``rewind``'s ``optimizer_state``) is exactly zero where
    pruned. With a 0/1 mask the products are exact zeros (−0.0 compares equal to 0).
    """

    def __init__(self, tensors: list["torch.Tensor"], masks: list["torch.Tensor"], optimizer: Any = None):
        self.tensors, self.masks = tensors, masks
        # each multiply pass costs ~2.5% of a step of the benchmark's MLP (the numbers above):
        # skip the state's where it provably stays zero
        self.mask_state = optimizer is None or type(optimizer) not in elementwise_optimizer_types()

    def _mask_weights(self) -> None:
        import torch

        with torch.no_grad():
            torch._foreach_mul_(self.tensors, self.masks)

    def after_step(self, loop: "TrainLoop") -> None:
        self._mask_weights()
        if self.mask_state:
            self._mask_state(loop.optimizer)

    def _mask_state(self, optimizer: Any) -> None:
        import torch

        state = optimizer.state
        values: list[torch.Tensor] = []
        masks: list[torch.Tensor] = []
        for p, m in zip(self.tensors, self.masks):
            entries = state.get(p)
            if not entries:
                continue
            for key, value in entries.items():
                if key in PER_ENTRY_STATE and isinstance(value, torch.Tensor) and value.shape == m.shape:
                    if value.dtype == m.dtype and value.device == m.device:
                        values.append(value)
                        masks.append(m)
                    else:  # state kept in another precision or on another device (offloaded)
                        value.mul_(m.to(device=value.device, dtype=value.dtype))
        if values:
            torch._foreach_mul_(values, masks)

    def evaluate_context(self, loop: "TrainLoop"):
        # a context, not a call now: the loop calls every evaluate_context first and enters
        # them afterwards, in order, so masking on entering this (the last) one masks the
        # weights as the other callbacks swapped them in
        return _Entering(self._mask_weights)


class _Entering:
    """A context manager that calls ``action`` on entering and does nothing on leaving."""

    __slots__ = ("action",)

    def __init__(self, action: Callable[[], None]):
        self.action = action

    def __enter__(self) -> None:
        self.action()

    def __exit__(self, *exc: Any) -> None:
        return None
