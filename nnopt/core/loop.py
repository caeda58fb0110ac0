"""The training loop and its hook points: what masks, closures, tracking and mixed precision plug into.

``TrainLoop`` runs ``total`` optimizer steps of mini-batch training over a ``DataSplit``'s train
split: each epoch is a permutation of the examples drawn from a seeded generator (or, with
``shuffle=False``, the split in its stored order: online problems) and cut into batches of
``batch_size`` (the last one possibly smaller), taken as views on the device. One
step is computed by a ``StepRule`` (plain backward, or a closure for L-BFGS-like methods);
everything else a training run does besides that (keeping weights, tracking analyzers,
clipping or masking gradients, a progress bar) is a ``LoopCallback``, in the manner of
Lightning's callbacks and OpenLTH's step callbacks, so each feature is a small object rather
than a branch in the loop.

Hook points, in the order they fire for step ``t`` (``loop.step == t`` updates done so far):

==================  =======================================================================
``on_train_start``  once, before the first step (after a resumption too)
``on_step_start``   before the forward pass; ``loop.batch`` is the step's (x, y)
``forward_context`` a context manager around forward and loss (e.g. autocast), or None
``after_backward``  gradients are in ``p.grad``, the update not yet applied (clipping, masks);
                    inside the closure for closure optimizers, so once per evaluation
``after_step``      right after ``optimizer.step()`` (re-apply weight masks, EMA, ...)
``on_log``          a ``metrics.jsonl`` line of the train loss window was written
``on_evaluate``     the test split was evaluated (``metrics`` as logged, without prefix); the
                    one hook where a callback may ``loop.request_stop()`` (early stopping)
``on_train_end``    all ``total`` steps ran (or a callback stopped training) without a non-finite loss
==================  =======================================================================

``evaluate_context`` is a context manager around every use of the weights as the *result*
(each evaluation, kept weights, the final evaluation and save): where a method trains one
sequence of weights and reports another (schedule-free's averaged x_t, EMA, SWA), it swaps
them in there and back after.

A callback's ``state_dict`` is saved in every checkpoint and handed back to
``load_state_dict`` on resumption, so a resumed run continues bitwise as an uninterrupted one.
The loop calls a hook only on the callbacks that override it: an unused hook costs nothing
per step. The loop itself stays device- and component-agnostic: evaluation is a callable the
stage gives it.
"""

from __future__ import annotations

import contextlib
import math
import signal
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, ContextManager, Literal

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from torch import nn

    from .kinds import DataSplit
    from .stage import StageContext


class LoopCallback:
    """Base of training-loop callbacks: override the hooks you need (see the module docstring)."""

    def on_train_start(self, loop: "TrainLoop") -> None:
        """Once before the first step that this process runs (``loop.step`` > 0 after a resume)."""

    def on_step_start(self, loop: "TrainLoop") -> None:
        """Before step ``loop.step``'s forward pass; ``loop.batch`` holds its (x, y)."""

    def forward_context(self, loop: "TrainLoop") -> ContextManager[Any] | None:
        """A context manager entered around every forward pass and loss (autocast), or None."""
        return None

    def after_backward(self, loop: "TrainLoop") -> None:
        """Gradients are in ``.grad``; the optimizer has not updated the weights yet."""

    def after_step(self, loop: "TrainLoop") -> None:
        """The optimizer updated the weights; ``loop.step`` already counts this update."""

    def on_log(self, loop: "TrainLoop", record: dict[str, Any]) -> None:
        """A train-loss line (``step, epoch, loss, lr, seconds``) was logged."""

    def on_evaluate(self, loop: "TrainLoop", metrics: dict[str, float]) -> None:
        """The test split was evaluated at ``loop.step``: ``{"loss": ..., "accuracy": ...}``."""

    def on_train_end(self, loop: "TrainLoop") -> None:
        """Every step ran and every training loss was finite."""

    def evaluate_context(self, loop: "TrainLoop") -> ContextManager[Any] | None:
        """A context manager around every use of the weights as the result (evaluations, kept
        and final weights): swap in the weights a method reports, or None."""
        return None

    def state_dict(self) -> Any:
        """What this callback must resume from (tensors, numbers, lists, dicts), or None."""
        return None

    def load_state_dict(self, state: Any) -> None:
        """Restore what ``state_dict`` returned in the checkpoint being resumed."""


# --------------------------------------------------------------------------- step rules
class StepRule:
    """How one optimizer step is computed from a batch; returns the (detached) batch loss at
    the weights *before* the update. Optimizer components choose theirs (``Optimizer.step_rule``)."""

    def step(self, loop: "TrainLoop", xb: "torch.Tensor", yb: "torch.Tensor") -> "torch.Tensor":
        raise NotImplementedError(f"{type(self).__name__}.step")


class BackwardStep(StepRule):
    """θ ← step(θ, ∇_θ L_B(θ)): zero the gradients, forward, backward, hooks, ``optimizer.step()``."""

    def step(self, loop: "TrainLoop", xb: "torch.Tensor", yb: "torch.Tensor") -> "torch.Tensor":
        loop.optimizer.zero_grad(set_to_none=True)
        with loop.forward():
            loss = loop.loss_fn(loop.model(xb), yb)
        loss.backward()
        for hook in loop.hooks.after_backward:
            hook(loop)
        loop.optimizer.step()
        return loss.detach()


class ClosureStep(StepRule):
    """``optimizer.step(closure)`` for methods that re-evaluate the loss (L-BFGS, line searches).

    The closure recomputes forward, loss and backward (and runs ``after_backward``) at whatever
    weights the optimizer probes; the reported loss is the first evaluation, at the weights
    before the step, as for every other optimizer.
    """

    def step(self, loop: "TrainLoop", xb: "torch.Tensor", yb: "torch.Tensor") -> "torch.Tensor":
        import torch

        first: list[torch.Tensor] = []

        def closure() -> "torch.Tensor":
            loop.optimizer.zero_grad(set_to_none=True)
            with loop.forward():
                loss = loop.loss_fn(loop.model(xb), yb)
            loss.backward()
            for hook in loop.hooks.after_backward:
                hook(loop)
            if not first:
                first.append(loss.detach())
            return loss

        out = loop.optimizer.step(closure)
        if isinstance(out, torch.Tensor):
            return out.detach().reshape(())
        return first[0] if first else torch.as_tensor(float("nan"))


# --------------------------------------------------------------------------- the loop
_HOOKS = ("on_train_start", "on_step_start", "forward_context", "after_backward", "after_step", "on_log",
          "on_evaluate", "on_train_end", "evaluate_context")


_NO_CONTEXT = contextlib.nullcontext()  # reusable, and cheaper than building one per step


class _Hooks:
    """For each hook point, the bound methods of the callbacks that override it, in order."""

    def __init__(self, callbacks: list[LoopCallback]):
        for name in _HOOKS:
            base = getattr(LoopCallback, name)
            setattr(self, name, [getattr(cb, name) for cb in callbacks if getattr(type(cb), name) is not base])


@dataclass
class LoopResult:
    """How a loop ended: ``ok`` after ``total`` steps, or ``diverged`` at the first step whose
    training loss was not finite (``diverged_at``, its ``value`` and the ``last_finite`` loss)."""

    status: Literal["ok", "diverged"]
    steps: int
    seconds: float
    diverged_at: int | None = None
    value: float | None = None
    last_finite: float | None = None


class CheckpointClock:
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


class Interrupt:
    """Ctrl-C as a request: the running loop stops at its next safe point, resumable.

    ``install()`` (by ``nnopt run``, in the main thread) makes SIGINT set ``requested``
    while a loop runs (``safe_points``); the loop checks the flag once per step, and after
    the next flushed log window (at most ``log_every`` steps later) it saves a checkpoint and
    raises ``KeyboardInterrupt``, which the runner turns into a kept, resumable work
    directory and the CLI into exit 130. A second SIGINT, or one while no loop runs, raises
    ``KeyboardInterrupt`` at once, as Python's default handler does: every write of the store
    is atomic, so that leaves it consistent too (the stage is computed again, or resumed from
    its previous checkpoint)."""

    def __init__(self) -> None:
        self.requested = False
        self.loops = 0

    def _on_sigint(self, signum: int, frame: Any) -> None:
        if self.loops == 0 or self.requested:
            raise KeyboardInterrupt
        self.requested = True
        import sys

        print("interrupt: stopping at the next safe point with a checkpoint (Ctrl-C again to stop now)",
              file=sys.stderr, flush=True)

    @contextlib.contextmanager
    def installed(self) -> Any:
        """SIGINT handled as above for the duration (the previous handler restored after)."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = signal.signal(signal.SIGINT, self._on_sigint)
        try:
            yield
        finally:
            signal.signal(signal.SIGINT, previous)
            self.requested = False

    @contextlib.contextmanager
    def safe_points(self) -> Any:
        """While a loop runs: a first Ctrl-C is a request, not an exception."""
        self.loops += 1
        try:
            yield
        finally:
            self.loops -= 1


INTERRUPT = Interrupt()


class TrainLoop:
    """Mini-batch training of ``model`` for ``total`` steps, with hook points (module docstring).

    The training loss of each step is kept on the device and synced every ``log_every`` steps
    (one host sync per window, not per step); every window's losses are checked for NaN/inf,
    so a divergence is reported at its exact first step whatever ``log_every`` is, and a stage
    never goes on (or evaluates) past a non-finite loss it could have seen. ``evaluate(model)``
    runs every ``eval_every`` steps and after the last one. The schedule is stepped once per
    step, after logging, so a logged ``lr`` is the rate its steps used. Checkpoints are saved
    right after a window is flushed, when ``checkpoint_due(step)`` says so.
    """

    def __init__(
        self,
        ctx: "StageContext",
        model: "nn.Module",
        optimizer: "torch.optim.Optimizer",
        schedule: Any,
        loss_fn: Callable[["torch.Tensor", "torch.Tensor"], "torch.Tensor"],
        data: "DataSplit",
        *,
        total: int,
        batch_size: int,
        shuffle_seed: int,
        evaluate: Callable[["nn.Module"], dict[str, float]],
        log_every: int = 10,
        eval_every: int | None = None,
        checkpoint_due: Callable[[int], bool] = lambda step: False,
        callbacks: list[LoopCallback] = (),
        step_rule: StepRule | None = None,
        shuffle: bool = True,
    ):
        import torch

        self.ctx, self.model, self.optimizer, self.schedule = ctx, model, optimizer, schedule
        self.loss_fn, self.data = loss_fn, data
        self.total, self.batch_size = total, batch_size
        self.per_epoch = math.ceil(data.n_train / batch_size)
        self.log_every, self.eval_every = log_every, eval_every or self.per_epoch
        self.evaluate, self.checkpoint_due = evaluate, checkpoint_due
        self.callbacks = list(callbacks)
        self.hooks = _Hooks(self.callbacks)
        self.step_rule = step_rule or BackwardStep()
        self.shuffle = torch.Generator(device="cpu").manual_seed(shuffle_seed)
        self.shuffles = shuffle  # False: every epoch takes the train split in its stored order
        self.stop_requested = False  # set by a callback's on_evaluate (early stopping): see request_stop
        #: data parallelism (``core.distributed.Sharding``): each step trains on this rank's slice
        #: of the global batch, and each window of losses is all-reduced; None: one process
        self.sharding: Any = None
        self.batch_weight = 1.0  # this rank's share n_r / B of the step's global batch

        self.step = 0  # optimizer updates done
        self.batch: tuple[torch.Tensor, torch.Tensor] | None = None
        self.loss: torch.Tensor | None = None  # the last step's detached batch loss
        self.train_curve: list[tuple[int, float]] = []  # (step, window mean)
        self.test_curve: list[tuple[int, float]] = []  # (step, test loss)
        self.test: dict[str, float] = {}  # the latest evaluation
        self.last_finite: float | None = None
        self._perm: torch.Tensor | None = None
        self._elapsed = 0.0
        self._t0 = time.perf_counter()

    def request_stop(self) -> None:
        """End training after this step (from ``on_evaluate``, where early stopping decides): the
        step's losses are flushed, the schedule stepped, and the loop returns ``ok`` with
        ``step`` < ``total``; ``on_train_end`` still fires."""
        self.stop_requested = True

    @property
    def epoch(self) -> float:
        return self.step / self.per_epoch

    @property
    def seconds(self) -> float:
        """Training time so far, across resumptions."""
        return time.perf_counter() - self._t0

    def forward(self) -> ContextManager[Any]:
        """The context of a forward pass: the callbacks' (nested in order), or a no-op."""
        return self._nested(self.hooks.forward_context)

    def evaluation(self) -> ContextManager[Any]:
        """The context in which the weights are the result: the callbacks' ``evaluate_context``
        (nested in order), or a no-op. Evaluations and kept weights happen inside it; so does
        whatever the stage does with the final weights."""
        return self._nested(self.hooks.evaluate_context)

    def _nested(self, hooks: list[Callable[["TrainLoop"], ContextManager[Any] | None]]) -> ContextManager[Any]:
        if not hooks:
            return _NO_CONTEXT
        contexts = [c for c in (hook(self) for hook in hooks) if c is not None]
        if not contexts:
            return contextlib.nullcontext()
        stack = contextlib.ExitStack()
        for c in contexts:
            stack.enter_context(c)
        return stack

    # ------------------------------------------------------------------ resumption
    def state_dict(self) -> dict[str, Any]:
        """Everything the loop continues from: weights, optimizer, schedule, every RNG, the
        epoch's permutation, the curves, each callback's own state, and the thread count."""
        import torch

        return {
            "step": self.step, "last_finite": self.last_finite, "seconds": self.seconds,
            "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "schedule": self.schedule.state_dict(), "shuffle": self.shuffle.get_state(),
            "torch_rng": torch.get_rng_state(), "perm": self._perm.cpu() if self._perm is not None else None,
            "train_curve": self.train_curve, "test_curve": self.test_curve, "test": self.test,
            "callbacks": [cb.state_dict() for cb in self.callbacks],
            "torch_threads": torch.get_num_threads(),  # the count can change bits: resume with the same
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        import torch

        self.step, self.last_finite, self._elapsed = state["step"], state["last_finite"], state["seconds"]
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.schedule.load_state_dict(state["schedule"])
        self.shuffle.set_state(state["shuffle"])
        torch.set_rng_state(state["torch_rng"])
        self.train_curve, self.test_curve, self.test = state["train_curve"], state["test_curve"], state["test"]
        self._perm = state["perm"].to(self.data.x_train.device) if state["perm"] is not None else None
        for cb, cb_state in zip(self.callbacks, state["callbacks"]):
            if cb_state is not None:
                cb.load_state_dict(cb_state)
        if state.get("torch_threads"):
            from .cpu_share import use_threads

            use_threads(int(state["torch_threads"]))

    # ------------------------------------------------------------------ running
    def _flush(self, values: list[float], step: int) -> None:
        """Log the mean train loss of the window ``values`` that ends at ``step``."""
        self.last_finite = values[-1]
        mean = math.fsum(values) / len(values)
        record = {"step": step, "epoch": step / self.per_epoch, "loss": mean,
                  "lr": float(self.optimizer.param_groups[0]["lr"]), "seconds": self.seconds}
        self.ctx.log_metrics(record)
        self.train_curve.append((step, mean))
        for hook in self.hooks.on_log:
            hook(self, {**record, "window": len(values)})

    def run(self) -> LoopResult:
        """Train from ``step`` to ``total`` (see the class docstring). A Ctrl-C meanwhile
        (``INTERRUPT``) stops at the next safe point: right after a log window is flushed,
        a checkpoint is saved and ``KeyboardInterrupt`` raised; a second Ctrl-C raises at once."""
        x_train, y_train = self.data.x_train, self.data.y_train
        xs, ys = x_train, y_train
        if self.step % self.per_epoch and self._perm is not None:  # resumed inside an epoch
            xs, ys = x_train[self._perm], y_train[self._perm]
        self._t0 = time.perf_counter() - self._elapsed
        for hook in self.hooks.on_train_start:
            hook(self)
        with INTERRUPT.safe_points():
            return self._steps(xs, ys)

    def _steps(self, xs: "torch.Tensor", ys: "torch.Tensor") -> LoopResult:  # noqa: C901 - the hot loop, kept in one place and free of branches per feature
        import torch

        data, hooks, ctx = self.data, self.hooks, self.ctx
        x_train, y_train = data.x_train, data.y_train
        n, batch_size, per_epoch, total = data.n_train, self.batch_size, self.per_epoch, self.total
        log_every, eval_every, step_rule, schedule = self.log_every, self.eval_every, self.step_rule, self.schedule
        on_step_start, after_step = hooks.on_step_start, hooks.after_step
        shuffles, sharding = self.shuffles, self.sharding
        window: list[torch.Tensor] = []  # detached losses since the last sync: no per-step host sync
        window_start = self.step
        while self.step < total:
            step = self.step
            b = step % per_epoch
            if b == 0 and shuffles:  # a new epoch: one gather per epoch, then every batch is a view
                self._perm = torch.randperm(n, generator=self.shuffle).to(x_train.device)
                xs, ys = x_train[self._perm], y_train[self._perm]
            start = b * batch_size
            xb, yb = xs[start : start + batch_size], ys[start : start + batch_size]
            self.batch = (xb, yb)  # the global batch: what hooks see is the same on every rank
            for hook in on_step_start:
                hook(self)
            if sharding is not None:
                xb, yb, self.batch_weight = sharding.split(xb, yb)
            loss = self.loss = step_rule.step(self, xb, yb)
            window.append(loss)
            self.step = step = step + 1
            for hook in after_step:
                hook(self)

            evaluating = step % eval_every == 0 or step == total
            flushing = len(window) == log_every or step == total
            if flushing or evaluating:
                if sharding is None:
                    values = torch.stack(window).tolist()
                else:  # one all-reduce per window: the global batches' losses, and any rank's Ctrl-C
                    flag = torch.full((1,), float(INTERRUPT.requested), dtype=window[0].dtype, device=window[0].device)
                    *values, anyone = sharding.reduce(torch.cat([torch.stack(window).reshape(-1), flag])).tolist()
                    INTERRUPT.requested = anyone > 0
                bad = next((i for i, v in enumerate(values) if not math.isfinite(v)), None)
                if bad is not None:
                    last = values[bad - 1] if bad > 0 else self.last_finite
                    return LoopResult("diverged", window_start + bad, self.seconds, window_start + bad, values[bad], last)
            if flushing:
                self._flush(values, step)
                window = []
                window_start = step
            if evaluating:
                with self.evaluation():
                    test = self.evaluate(self.model)
                if test:
                    self.test = test
                    ctx.log_metrics({"step": step, "epoch": step / per_epoch, **{f"test_{k}": v for k, v in test.items()}})
                    self.test_curve.append((step, test["loss"]))
                    for hook in hooks.on_evaluate:
                        hook(self, test)
                if self.stop_requested:  # only an evaluation can stop training: no check per step
                    if window:
                        self._flush(values, step)
                    schedule.step()
                    break
            schedule.step()  # after logging, so that "lr" is the rate the logged steps used
            if not window and step < total and (INTERRUPT.requested or self.checkpoint_due(step)):
                ctx.save_checkpoint(self.state_dict())
                if INTERRUPT.requested:  # Ctrl-C: stop at this safe point, resumable from here
                    INTERRUPT.requested = False
                    raise KeyboardInterrupt
        for hook in hooks.on_train_end:
            hook(self)
        return LoopResult("ok", self.step, self.seconds)
