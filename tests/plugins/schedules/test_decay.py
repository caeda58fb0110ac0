"""Step, multi-step, exponential, inverse-time and polynomial decay against their formulas."""

import math

import pytest
import torch
from pydantic import ValidationError

from nnopt.plugins.schedules.decay import Exponential, InverseTime, MultiStep, Polynomial, Step


def lrs(schedule, steps, lr=(0.5,), total_steps=None, steps_per_epoch=1):
    """η_t of every param group for t = 0 … steps, stepping as the training loop does."""
    groups = [{"params": [torch.nn.Parameter(torch.zeros(1))], "lr": x} for x in lr]
    opt = torch.optim.SGD(groups)
    sched = schedule.bind(steps_per_epoch, 32).build(opt, total_steps or steps)
    out = [[g["lr"] for g in opt.param_groups]]
    for _ in range(steps):
        opt.step()
        sched.step()
        out.append([g["lr"] for g in opt.param_groups])
    return out


def resumed_matches(make, split, steps, total_steps=None, steps_per_epoch=1):
    """A scheduler restored from a state_dict taken at ``split`` continues as the original."""
    def fresh():
        opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.3)
        return opt, make().bind(steps_per_epoch, 32).build(opt, total_steps or steps)

    opt, sched = fresh()
    for _ in range(split):
        opt.step(), sched.step()
    saved_opt, saved = opt.state_dict(), sched.state_dict()
    opt2, sched2 = fresh()
    opt2.load_state_dict(saved_opt)
    sched2.load_state_dict(saved)
    for _ in range(steps - split):
        opt.step(), sched.step(), opt2.step(), sched2.step()
        assert opt2.param_groups[0]["lr"] == opt.param_groups[0]["lr"]
    return True


def test_step_divides_by_gamma_every_k_epochs():
    spe, k = 3, 2  # period = 6 optimizer steps
    got = lrs(Step(Step.Params(every=k, gamma=10.0)), 20, lr=(0.5, 0.02), steps_per_epoch=spe)
    for t, row in enumerate(got):
        for lr0, lr in zip((0.5, 0.02), row):
            assert lr == pytest.approx(lr0 * 10.0 ** -(t // (k * spe)), rel=1e-12)
    assert got[5][0] == pytest.approx(0.5) and got[6][0] == pytest.approx(0.05) and got[12][0] == pytest.approx(0.005)


def test_step_in_steps_ignores_the_epoch_length():
    got = lrs(Step(Step.Params(every=4, gamma=2.0, unit="steps")), 9, steps_per_epoch=100)
    assert [r[0] for r in got] == pytest.approx([0.5] * 4 + [0.25] * 4 + [0.125] * 2, rel=1e-12)


def test_multistep_divides_at_each_milestone_in_epochs():
    got = lrs(MultiStep(MultiStep.Params(milestones=[2, 5], gamma=4.0)), 14, steps_per_epoch=2)  # steps 4, 10
    expected = [0.5 * 4.0 ** -((t >= 4) + (t >= 10)) for t in range(15)]
    assert [r[0] for r in got] == pytest.approx(expected, rel=1e-12)


def test_multistep_milestones_must_increase():
    with pytest.raises(ValidationError, match="strictly increasing"):
        MultiStep.Params(milestones=[5, 5])
    with pytest.raises(ValidationError):
        MultiStep.Params(milestones=[])


def test_exponential_per_step_and_per_epoch():
    got = lrs(Exponential(Exponential.Params(gamma=0.9)), 10)
    assert [r[0] for r in got] == pytest.approx([0.5 * 0.9**t for t in range(11)], rel=1e-12)
    got = lrs(Exponential(Exponential.Params(gamma=0.5, unit="epochs")), 8, steps_per_epoch=4)
    assert [r[0] for r in got] == pytest.approx([0.5 * 0.5 ** (t / 4) for t in range(9)], rel=1e-12)
    assert got[4][0] == pytest.approx(0.25) and got[8][0] == pytest.approx(0.125)


@pytest.mark.parametrize("alpha", [0.6, 1.0])
def test_inverse_time_formula(alpha):
    tau = 5.0
    got = lrs(InverseTime(InverseTime.Params(tau=tau, alpha=alpha)), 30, lr=(0.5, 0.1))
    for t, row in enumerate(got):
        for lr0, lr in zip((0.5, 0.1), row):
            assert lr == pytest.approx(lr0 / (1 + t / tau) ** alpha, rel=1e-12)
    assert got[5][0] == pytest.approx(0.5 / 2**alpha)  # t = τ: halved (α = 1)


def test_inverse_time_tau_in_epochs():
    got = lrs(InverseTime(InverseTime.Params(tau=2, alpha=1.0, unit="epochs")), 12, steps_per_epoch=3)
    assert [r[0] for r in got] == pytest.approx([0.5 / (1 + t / 6) for t in range(13)], rel=1e-12)


@pytest.mark.parametrize("alpha", [0.5, 0.3, 1.01])
def test_inverse_time_alpha_outside_robbins_monro_is_rejected(alpha):
    with pytest.raises(ValidationError, match="alpha"):
        InverseTime.Params(alpha=alpha)


@pytest.mark.parametrize("power", [1.0, 2.0, 0.9])
def test_polynomial_formula(power):
    T = 10
    got = lrs(Polynomial(Polynomial.Params(power=power)), T + 2, total_steps=T)
    for t, row in enumerate(got):
        assert row[0] == pytest.approx(0.5 * (1 - min(t, T) / T) ** power, rel=1e-9, abs=1e-15)
    assert got[T][0] == 0.0 and got[T + 2][0] == 0.0


def test_polynomial_needs_total_steps():
    with pytest.raises(ValueError, match="total_steps"):
        Polynomial().build(torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0), 0)


@pytest.mark.parametrize("make, total", [
    (lambda: Step(Step.Params(every=1, gamma=3.0)), 12),
    (lambda: MultiStep(MultiStep.Params(milestones=[1, 3], gamma=3.0)), 12),
    (lambda: Exponential(Exponential.Params(gamma=0.8, unit="epochs")), 12),
    (lambda: InverseTime(InverseTime.Params(tau=3.0, alpha=0.75)), 12),
    (lambda: Polynomial(Polynomial.Params(power=2.0)), 12),
])
def test_state_dict_round_trip_mid_schedule(make, total):
    assert resumed_matches(make, split=5, steps=total, steps_per_epoch=2)


def test_inverse_time_state_keeps_its_factor():
    """The callable factor is in LambdaLR's state (as cosine's is): a scheduler built with other
    params and loaded from the state continues with the saved τ and α."""
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = InverseTime(InverseTime.Params(tau=2.0, alpha=1.0)).build(opt, 10)
    opt.step(), sched.step()
    opt2 = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched2 = InverseTime(InverseTime.Params(tau=50.0, alpha=0.6)).build(opt2, 10)
    sched2.load_state_dict(sched.state_dict())
    opt2.step(), sched2.step()
    assert opt2.param_groups[0]["lr"] == pytest.approx(1.0 / (1 + 2 / 2.0))
    assert math.isclose(sched2.lr_lambdas[0].tau_steps, 2.0)
