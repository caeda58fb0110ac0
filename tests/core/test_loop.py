"""The training loop's hook points (``nnopt.core.loop``): order, cost, state, and what plugs in."""

from __future__ import annotations

import contextlib
import copy
import math

import torch
from torch import nn

from nnopt.core.kinds import DataSplit
from nnopt.core.loop import BackwardStep, ClosureStep, LoopCallback, TrainLoop, _Hooks


class _Ctx:
    """The two things the loop asks of a StageContext: metrics lines and checkpoints."""

    def __init__(self):
        self.lines, self.checkpoints = [], []

    def log_metrics(self, record):
        self.lines.append(record)

    def save_checkpoint(self, state):
        self.checkpoints.append(copy.deepcopy(state))  # as on disk: not the live tensors


def _data(n=40, dim=3):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, dim, generator=g)
    y = (x.sum(1) > 0).long()
    return DataSplit(x, y, x[:8], y[:8], "classification", (dim,), 2, 2)


def make_loop(callbacks=(), total=12, step_rule=None, optimizer=None, checkpoint_due=lambda s: False, log_every=2):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))
    opt = optimizer(model) if optimizer else torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 1.0)
    ctx = _Ctx()
    loop = TrainLoop(ctx, model, opt, sched, nn.functional.cross_entropy, _data(), total=total, batch_size=16,
                     shuffle_seed=0, evaluate=lambda m: {"loss": 1.0}, log_every=log_every, eval_every=6,
                     callbacks=list(callbacks), step_rule=step_rule, checkpoint_due=checkpoint_due)
    return loop, ctx


class Recorder(LoopCallback):
    def __init__(self):
        self.events = []

    def on_train_start(self, loop):
        self.events.append(("start", loop.step))

    def on_step_start(self, loop):
        self.events.append(("step_start", loop.step))

    def after_backward(self, loop):
        assert all(p.grad is not None for p in loop.model.parameters())
        self.events.append(("after_backward", loop.step))

    def after_step(self, loop):
        self.events.append(("after_step", loop.step))

    def on_log(self, loop, record):
        self.events.append(("log", record["step"]))

    def on_evaluate(self, loop, metrics):
        self.events.append(("evaluate", loop.step))

    def on_train_end(self, loop):
        self.events.append(("end", loop.step))


def test_hooks_fire_in_documented_order():
    rec = Recorder()
    loop, _ = make_loop([rec], total=6)
    assert loop.run().status == "ok"
    first = rec.events[:5]
    assert first == [("start", 0), ("step_start", 0), ("after_backward", 0), ("after_step", 1), ("step_start", 1)]
    assert ("log", 2) in rec.events and ("evaluate", 6) in rec.events
    assert rec.events[-1] == ("end", 6)
    assert rec.events.index(("log", 6)) < rec.events.index(("evaluate", 6))


def test_only_overridden_hooks_are_called():
    class OnlyAfterStep(LoopCallback):
        def after_step(self, loop):
            """Overridden, so the loop calls it; no other hook is."""

    hooks = _Hooks([OnlyAfterStep()])
    assert len(hooks.after_step) == 1
    assert hooks.on_step_start == [] and hooks.after_backward == [] and hooks.forward_context == []


def test_after_backward_runs_inside_the_closure_of_closure_optimizers():
    rec = Recorder()
    loop, _ = make_loop([rec], total=2, step_rule=ClosureStep(),
                        optimizer=lambda m: torch.optim.LBFGS(m.parameters(), lr=0.5, max_iter=3))
    loop.run()
    per_step = [e for e in rec.events if e[0] == "after_backward" and e[1] == 0]
    assert len(per_step) >= 2  # L-BFGS evaluated the closure more than once in step 0


class Mask(LoopCallback):
    """A weight mask as the lottery-ticket stages will use it: gradients and weights of the
    pruned entries are zeroed after backward and after every step."""

    def __init__(self, param, mask):
        self.param, self.mask = param, mask

    def on_train_start(self, loop):
        with torch.no_grad():
            self.param.mul_(self.mask)

    def after_backward(self, loop):
        self.param.grad.mul_(self.mask)

    def after_step(self, loop):
        with torch.no_grad():
            self.param.mul_(self.mask)


def test_a_mask_callback_keeps_pruned_weights_at_zero_with_momentum():
    loop, _ = make_loop(total=10, optimizer=lambda m: torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9, weight_decay=0.1))
    weight = loop.model[0].weight
    mask = (torch.rand(weight.shape, generator=torch.Generator().manual_seed(1)) > 0.5).float()
    loop.callbacks.append(Mask(weight, mask))
    loop.hooks = _Hooks(loop.callbacks)
    loop.run()
    assert torch.all(weight[mask == 0] == 0) and torch.all(weight[mask == 1] != 0)


def test_forward_context_wraps_every_forward_pass():
    entered = []

    class Ctx(LoopCallback):
        def forward_context(self, loop):
            @contextlib.contextmanager
            def cm():
                entered.append(loop.step)
                yield
            return cm()

    loop, _ = make_loop([Ctx()], total=4)
    loop.run()
    assert entered == [0, 1, 2, 3]


def test_evaluate_context_swaps_the_reported_weights_in_for_evaluation_only():
    """What schedule-free or weight averaging needs: evaluation sees other weights, and training
    continues from its own afterwards, untouched."""
    seen = []

    class Swap(LoopCallback):
        def evaluate_context(self, loop):
            @contextlib.contextmanager
            def cm():
                saved = [p.detach().clone() for p in loop.model.parameters()]
                with torch.no_grad():
                    for p in loop.model.parameters():
                        p.zero_()
                yield
                with torch.no_grad():
                    for p, s in zip(loop.model.parameters(), saved):
                        p.copy_(s)
            return cm()

    loop, _ = make_loop([Swap()], total=12)
    loop.evaluate = lambda m: seen.append(sum(float(p.detach().abs().sum()) for p in m.parameters())) or {"loss": 1.0}
    plain, _ = make_loop([], total=12)
    loop.run()
    plain.run()
    assert seen == [0.0, 0.0]  # evaluated at steps 6 and 12, on the swapped-in (zero) weights
    assert all(torch.equal(p, q) for p, q in zip(loop.model.parameters(), plain.model.parameters()))
    with loop.evaluation():
        assert all(float(p.detach().abs().sum()) == 0 for p in loop.model.parameters())


def test_the_loss_window_is_synced_every_log_every_and_divergence_is_exact():
    class Explode(LoopCallback):
        def after_step(self, loop):
            if loop.step == 5:
                with torch.no_grad():
                    loop.model[2].weight.fill_(float("nan"))

    loop, ctx = make_loop([Explode()], total=12, log_every=4)
    result = loop.run()
    assert result.status == "diverged" and result.diverged_at == 5
    assert math.isfinite(result.last_finite)
    assert [r["step"] for r in ctx.lines if "loss" in r] == [4]  # nothing logged past the divergence


def test_callback_state_goes_into_checkpoints_and_back():
    class Counter(LoopCallback):
        def __init__(self):
            self.n = 0

        def after_step(self, loop):
            self.n += 1

        def state_dict(self):
            return {"n": self.n}

        def load_state_dict(self, state):
            self.n = state["n"]

    first = Counter()
    loop, ctx = make_loop([first], total=12, checkpoint_due=lambda s: s == 6, log_every=2)
    loop.run()
    (state,) = ctx.checkpoints
    assert state["step"] == 6 and state["callbacks"] == [{"n": 6}]

    resumed = Counter()
    again, _ = make_loop([resumed], total=12)
    again.load_state_dict(state)
    again.run()
    assert resumed.n == 12
    assert all(torch.equal(a, b) for a, b in zip(loop.model.state_dict().values(), again.model.state_dict().values()))


def test_the_default_step_rule_is_plain_backward():
    loop, _ = make_loop()
    assert isinstance(loop.step_rule, BackwardStep)


def test_optimizer_components_choose_their_step_rule():
    from nnopt.core.kinds import Optimizer

    class Closure(Optimizer):
        needs_closure = True

    assert isinstance(Optimizer().step_rule(), BackwardStep)
    assert isinstance(Closure().step_rule(), ClosureStep)


def test_a_resumed_loop_runs_on_the_thread_count_it_was_checkpointed_with():
    """Summation order, and so the bits, can depend on the thread count: resumption restores it."""
    loop, ctx = make_loop(total=12, checkpoint_due=lambda s: s == 6)
    loop.run()
    (state,) = ctx.checkpoints
    before = torch.get_num_threads()
    try:
        state["torch_threads"] = 1 if before != 1 else 2
        again, _ = make_loop(total=12)
        again.load_state_dict(state)
        assert torch.get_num_threads() == state["torch_threads"]
    finally:
        torch.set_num_threads(before)
