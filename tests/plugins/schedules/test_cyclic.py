"""SGDR, triangular CLR and one-cycle against their formulas."""

import math

import pytest
import torch
from pydantic import ValidationError

from nnopt.plugins.schedules.cyclic import SGDR, Cyclical, OneCycle

from test_decay import lrs, resumed_matches


def test_sgdr_restarts_with_growing_periods():
    T0, mult, lo = 3, 2, 0.05
    got = [r[0] for r in lrs(SGDR(SGDR.Params(period=T0, period_mult=mult, min_lr=lo, unit="steps")), 21)]
    starts, period, expected = 0, T0, []
    while len(expected) < 22:  # cycles of 3, 6, 12 steps
        expected += [lo + 0.5 * (0.5 - lo) * (1 + math.cos(math.pi * c / period)) for c in range(period)]
        period *= mult
    assert got == pytest.approx(expected[:22], rel=1e-9)
    assert got[3] == pytest.approx(0.5) and got[9] == pytest.approx(0.5)  # restarts at t = 3, 9


def test_sgdr_period_in_epochs():
    got = [r[0] for r in lrs(SGDR(SGDR.Params(period=2)), 8, steps_per_epoch=2)]
    assert got == pytest.approx([0.5 * 0.5 * (1 + math.cos(math.pi * (t % 4) / 4)) for t in range(9)], rel=1e-9)


def triangle(t, s, base, top, scale=lambda c, t: 1.0):
    c = t // (2 * s)
    return base + (top - base) * max(0.0, 1 - abs(t / s - 2 * c - 1)) * scale(c, t)


@pytest.mark.parametrize("mode, scale", [
    ("triangular", lambda c, t: 1.0),
    ("triangular2", lambda c, t: 0.5**c),
    ("exp_range", lambda c, t: 0.9**t),
])
def test_cyclical_triangle(mode, scale):
    s = 3
    sched = Cyclical(Cyclical.Params(base_lr_fraction=0.2, step_size=s, mode=mode, gamma=0.9, unit="steps"))
    got = lrs(sched, 15, lr=(0.5, 0.05))
    for t, row in enumerate(got):
        for top, lr in zip((0.5, 0.05), row):
            assert lr == pytest.approx(triangle(t, s, 0.2 * top, top, scale), rel=1e-9)
    assert got[0][0] == pytest.approx(0.1) and got[6][0] == pytest.approx(0.1)  # every cycle starts at base_lr
    if mode == "triangular":
        assert got[3][0] == pytest.approx(0.5) and got[9][0] == pytest.approx(0.5)


def test_cyclical_leaves_momentum_alone():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1, momentum=0.9)
    sched = Cyclical(Cyclical.Params(step_size=2, unit="steps")).build(opt, 10)
    for _ in range(3):
        opt.step(), sched.step()
    assert opt.param_groups[0]["momentum"] == 0.9


def one_cycle(t, T, top, pct, div, final_div):
    """Smith & Topin's policy, cosine annealing; torch's phase ends at step pct·T − 1 and T − 1."""
    start, end = top / div, top / (div * final_div)
    up = pct * T - 1
    if t <= up:
        return start + (top - start) * 0.5 * (1 - math.cos(math.pi * t / up))
    frac = (t - up) / (T - 1 - up)
    return end + (top - end) * 0.5 * (1 + math.cos(math.pi * frac))


def test_one_cycle_rises_then_anneals():
    T, pct, div, fdiv = 20, 0.3, 25.0, 100.0  # the peak at step pct·T − 1 = 5
    sched = OneCycle(OneCycle.Params(pct_start=pct, div_factor=div, final_div_factor=fdiv))
    got = [r[0] for r in lrs(sched, T - 1, total_steps=T)]
    for t, lr in enumerate(got):
        assert lr == pytest.approx(one_cycle(t, T, 0.5, pct, div, fdiv), rel=1e-9), t
    assert got[0] == pytest.approx(0.5 / div) and got[5] == pytest.approx(0.5) and max(got) == got[5]
    assert got[-1] == pytest.approx(0.5 / (div * fdiv))


def test_one_cycle_momentum_is_opt_in():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1, momentum=0.9)
    OneCycle().build(opt, 10)
    assert opt.param_groups[0]["momentum"] == 0.9
    OneCycle(OneCycle.Params(cycle_momentum=True)).build(opt, 10)
    assert opt.param_groups[0]["momentum"] == pytest.approx(0.95)
    with pytest.raises(ValidationError, match="base_momentum"):
        OneCycle.Params(base_momentum=0.99, max_momentum=0.9)


@pytest.mark.parametrize("make", [
    lambda: SGDR(SGDR.Params(period=2, period_mult=2)),
    lambda: Cyclical(Cyclical.Params(step_size=2, mode="triangular2")),
    lambda: OneCycle(),
])
def test_state_dict_round_trip_mid_schedule(make):
    assert resumed_matches(make, split=7, steps=15, total_steps=16, steps_per_epoch=1)
