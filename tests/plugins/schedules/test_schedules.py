"""Learning-rate schedules stepped once per optimizer step (survey §5.1)."""

import math

import pytest
import torch
from pydantic import ValidationError

from nnopt.plugins.schedules.constant import Constant
from nnopt.plugins.schedules.cosine import Cosine


def lrs(schedule, steps, lr=(0.5,), total_steps=None):
    groups = [{"params": [torch.nn.Parameter(torch.zeros(1))], "lr": x} for x in lr]
    opt = torch.optim.SGD(groups)
    sched = schedule.build(opt, total_steps or steps)
    out = [[g["lr"] for g in opt.param_groups]]
    for _ in range(steps):
        opt.step()
        sched.step()
        out.append([g["lr"] for g in opt.param_groups])
    return out


def test_constant_leaves_the_lr_untouched():
    assert lrs(Constant(), 5, lr=(0.3, 0.01)) == [[0.3, 0.01]] * 6


def cosine_formula(t, T, lr0, fraction):
    lr_min = fraction * lr0
    return lr_min + 0.5 * (lr0 - lr_min) * (1 + math.cos(math.pi * t / T))


@pytest.mark.parametrize("fraction", [0.0, 0.1])
def test_cosine_matches_the_formula_per_param_group(fraction):
    T = 10
    got = lrs(Cosine(Cosine.Params(min_lr_fraction=fraction)), T + 3, lr=(0.5, 0.02), total_steps=T)
    for t, row in enumerate(got):
        for lr0, lr in zip((0.5, 0.02), row):
            assert lr == pytest.approx(cosine_formula(min(t, T), T, lr0, fraction), abs=1e-12)
    assert got[0] == [0.5, 0.02]  # t = 0: η₀
    assert got[T // 2][0] == pytest.approx(0.5 * (0.5 + fraction * 0.5))  # t = T/2: midpoint
    assert got[T][0] == pytest.approx(fraction * 0.5)  # t = T: η_min
    assert got[T + 3] == got[T]  # held at η_min afterwards


def test_cosine_state_dict_round_trips():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = Cosine().build(opt, 8)
    for _ in range(3):
        opt.step()
        sched.step()
    opt2 = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched2 = Cosine().build(opt2, 8)
    sched2.load_state_dict(sched.state_dict())
    opt.step(), sched.step(), opt2.step(), sched2.step()
    assert opt2.param_groups[0]["lr"] == opt.param_groups[0]["lr"]


def test_cosine_params_and_total_steps_are_checked():
    with pytest.raises(ValidationError):
        Cosine.Params(min_lr_fraction=1.5)
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    with pytest.raises(ValueError, match="total_steps"):
        Cosine().build(opt, 0)
