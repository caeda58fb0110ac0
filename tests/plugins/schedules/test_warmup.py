"""Warmup (wrapping any schedule), linear batch-size scaling, and warmup–stable–decay."""

import math

import pytest
import torch
from pydantic import ValidationError

from nnopt.core.describe import configured_component
from nnopt.core.errors import SpecError
from nnopt.core.registry import Registry

from test_decay import lrs, resumed_matches


def schedule(name, *settings):
    """A schedule with nested components resolved as in a pipeline file."""
    return configured_component(Registry(), "schedules", name, list(settings))


def cosine(t, T, lr0):
    return 0.5 * lr0 * (1 + math.cos(math.pi * min(t, T) / T))


@pytest.mark.parametrize("lr0", [0.5, 0.02])
def test_gradual_warmup_then_cosine_is_continuous_at_the_junction(lr0):
    W, T, s = 4, 20, 0.25
    sched = schedule("warmup", f"length={W}", "unit=steps", f"start_factor={s}", "then=cosine")
    got = [r[0] for r in lrs(sched, T + 2, lr=(lr0,), total_steps=T)]
    for t in range(W):
        assert got[t] == pytest.approx(lr0 * (s + (1 - s) * t / W), rel=1e-12)
    for t in range(W, T + 3):
        assert got[t] == pytest.approx(cosine(t - W, T - W, lr0), rel=1e-12, abs=1e-15)
    assert got[W] == pytest.approx(lr0)  # the cosine starts at η₀ right after the warmup
    assert got[W - 1] < got[W] and got[W + 1] < got[W]


def test_warmup_length_in_epochs_and_nested_params():
    spe, W_epochs, T = 3, 2, 18
    sched = schedule("warmup", f"length={W_epochs}", "start_factor=0.5",
                     "then={name: cosine, min_lr_fraction: 0.2}")
    got = [r[0] for r in lrs(sched, T, total_steps=T, steps_per_epoch=spe)]
    W = W_epochs * spe
    assert got[:W] == pytest.approx([0.5 * (0.5 + 0.5 * t / W) for t in range(W)], rel=1e-12)
    rest = T - W
    assert got[W:] == pytest.approx([0.1 + 0.5 * 0.4 * (1 + math.cos(math.pi * (t - W) / rest)) for t in range(W, T + 1)], rel=1e-12)


def test_constant_warmup_then_jump():
    got = [r[0] for r in lrs(schedule("warmup", "length=3", "unit=steps", "mode=constant", "start_factor=0.1"), 6)]
    assert got == pytest.approx([0.05, 0.05, 0.05, 0.5, 0.5, 0.5, 0.5], rel=1e-12)


def test_zero_length_warmup_is_the_wrapped_schedule():
    got = [r[0] for r in lrs(schedule("warmup", "length=0", "then=cosine"), 8)]
    assert got == pytest.approx([cosine(t, 8, 0.5) for t in range(9)], abs=1e-12)


def test_warmup_refuses_to_chain_plateau():
    with pytest.raises(ValueError, match="plateau"):
        lrs(schedule("warmup", "length=2", "unit=steps", "then=plateau"), 3)


def test_warmup_rejects_a_bad_nested_param_with_its_path():
    with pytest.raises(SpecError, match=r"then\.min_lr_fraction"):
        schedule("warmup", "then={name: cosine, min_lr_fraction: 2.0}")
    with pytest.raises(SpecError, match="did you mean 'cosine'"):
        schedule("warmup", "then=cosin")


def test_warmup_state_round_trip_across_the_junction():
    make = lambda: schedule("warmup", "length=4", "unit=steps", "then=cosine")  # noqa: E731
    assert resumed_matches(make, split=2, steps=12)
    assert resumed_matches(make, split=6, steps=12)


# --------------------------------------------------------------------------- linear scaling
def test_linear_scaling_multiplies_by_batch_over_base():
    sched = schedule("linear_scaling", "base_batch=256")
    groups = [{"params": [torch.nn.Parameter(torch.zeros(1))], "lr": x} for x in (0.1, 0.01)]
    opt = torch.optim.SGD(groups)
    sched.bind(10, 1024).build(opt, 5)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.4, 0.04], rel=1e-12)


def test_linear_scaling_with_warmup_and_cosine_is_goyal_recipe():
    W, T, B = 3, 12, 512
    sched = schedule("linear_scaling", "base_batch=128",
                     f"then={{name: warmup, length: {W}, unit: steps, start_factor: 0.25, then: cosine}}")
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    scheduler = sched.bind(1, B).build(opt, T)
    got = [opt.param_groups[0]["lr"]]
    for _ in range(T):
        opt.step(), scheduler.step()
        got.append(opt.param_groups[0]["lr"])
    peak = 0.1 * B / 128
    assert got[:W] == pytest.approx([peak * (0.25 + 0.75 * t / W) for t in range(W)], rel=1e-12)
    assert got[W:] == pytest.approx([cosine(t - W, T - W, peak) for t in range(W, T + 1)], rel=1e-12, abs=1e-15)


def test_linear_scaling_passes_on_the_wrapped_callbacks():
    sched = schedule("linear_scaling", "then={name: plateau, patience: 2}").bind(1, 512)
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    scheduler = sched.build(opt, 10)
    (watch,) = sched.callbacks(scheduler)
    for value in (1.0, 1.0, 1.0):
        watch.on_evaluate(None, {"loss": value})
    assert opt.param_groups[0]["lr"] == pytest.approx(0.2 / 10)


def test_linear_scaling_state_round_trip():
    make = lambda: schedule("linear_scaling", "base_batch=16", "then=cosine")  # noqa: E731
    assert resumed_matches(make, split=3, steps=8)


# --------------------------------------------------------------------------- WSD
@pytest.mark.parametrize("shape, g", [
    ("linear", lambda s: 1 - s),
    ("cosine", lambda s: 0.5 * (1 + math.cos(math.pi * s))),
    ("one_minus_sqrt", lambda s: 1 - math.sqrt(s)),
])
def test_wsd_warmup_stable_decay(shape, g):
    T, W, frac, floor = 20, 4, 0.25, 0.1
    sched = schedule("wsd", f"warmup={W}", f"decay_fraction={frac}", f"decay={shape}", f"min_lr_fraction={floor}")
    got = [r[0] for r in lrs(sched, T + 2, total_steps=T)]
    D = 5
    for t, lr in enumerate(got):
        if t < W:
            expected = (t + 1) / W
        elif t < T - D:
            expected = 1.0
        else:
            expected = floor + (1 - floor) * g(min((t - (T - D)) / D, 1.0))
        assert lr == pytest.approx(0.5 * expected, rel=1e-12), t
    assert got[T] == pytest.approx(0.05) and got[T + 2] == pytest.approx(0.05)
    assert got[W:T - D] == [0.5] * (T - D - W)


def test_wsd_checks_its_phases_fit_and_round_trips():
    with pytest.raises(ValueError, match="do not fit"):
        lrs(schedule("wsd", "warmup=9", "decay_fraction=0.5"), 10)
    with pytest.raises(ValidationError):
        schedule("wsd").Params(decay_fraction=0.0)
    assert resumed_matches(lambda: schedule("wsd", "warmup=2", "decay=cosine"), split=9, steps=12)
