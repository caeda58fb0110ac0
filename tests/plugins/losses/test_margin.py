"""Logistic and hinge losses against their formulas, their label conventions and reductions."""

import math

import pytest
import torch
import torch.nn.functional as F
from pydantic import ValidationError

from nnopt.plugins.losses.margin import Hinge, Logistic

Z = torch.tensor([2.0, -0.5, 0.0, 30.0, -30.0], dtype=torch.float64)
Y = torch.tensor([1.0, 1.0, -1.0, -1.0, -1.0], dtype=torch.float64)


def logistic_by_hand(z, y):
    return [math.log1p(math.exp(-yi * zi)) for zi, yi in zip(z.tolist(), y.tolist())]


def test_logistic_is_log_one_plus_exp_minus_margin():
    per_sample = Logistic().build("none")(Z, Y)
    assert per_sample.tolist() == pytest.approx(logistic_by_hand(Z, Y), rel=1e-12)
    assert per_sample[3].item() == pytest.approx(30.0, rel=1e-12)  # y·z = −30: ≈ −y·z, no overflow
    assert per_sample[4].item() == pytest.approx(math.exp(-30.0), rel=1e-9)  # y·z = 30: e^{−30}, not 0 from log(1 + tiny)
    assert Logistic().build("mean")(Z, Y).item() == pytest.approx(sum(logistic_by_hand(Z, Y)) / 5, rel=1e-12)
    assert Logistic().build("sum")(Z, Y).item() == pytest.approx(sum(logistic_by_hand(Z, Y)), rel=1e-12)


def test_logistic_is_stable_far_out():
    z = torch.tensor([1000.0, -1000.0])
    out = Logistic().build("none")(z, torch.tensor([-1.0, 1.0]))
    assert torch.isfinite(out).all() and out.tolist() == pytest.approx([1000.0, 1000.0])


def test_class_indices_map_to_signs_and_two_outputs_to_their_difference():
    labels = torch.tensor([1, 1, 0, 0, 0])
    loss = Logistic().build("none")
    torch.testing.assert_close(loss(Z[:, None], labels), loss(Z, Y))
    two = torch.stack([torch.zeros(5, dtype=torch.float64), Z], dim=1) + 0.7  # z₁ − z₀ = Z
    torch.testing.assert_close(loss(two, labels), loss(Z, Y))
    # and so equals the 2-class cross-entropy
    torch.testing.assert_close(loss(two, labels), F.cross_entropy(two, labels, reduction="none"))


@pytest.mark.parametrize("loss", [Logistic(), Hinge()], ids=["logistic", "hinge"])
def test_labels_outside_the_convention_are_refused(loss):
    f = loss.build()
    with pytest.raises(ValueError, match="must be −1 or \\+1"):
        f(Z, torch.tensor([1.0, 0.0, 1.0, 1.0, -1.0], dtype=torch.float64))
    with pytest.raises(ValueError, match="must be 0 or 1"):
        f(Z[:, None], torch.tensor([0, 1, 2, 0, 1]))
    with pytest.raises(ValueError, match="one label per sample"):
        f(Z, torch.ones(5, 2))


def test_logistic_refuses_more_than_two_outputs():
    with pytest.raises(ValueError, match=r"\(5, 3\)"):
        Logistic().build()(torch.zeros(5, 3), torch.zeros(5, dtype=torch.long))


@pytest.mark.parametrize("margin, power", [(1.0, 1), (0.5, 2)])
def test_binary_hinge(margin, power):
    hinge = Hinge(Hinge.Params(margin=margin, power=power))
    expected = [max(0.0, margin - yi * zi) ** power for zi, yi in zip(Z.tolist(), Y.tolist())]
    assert hinge.build("none")(Z, Y).tolist() == pytest.approx(expected, rel=1e-12)
    assert hinge.build("sum")(Z, Y).item() == pytest.approx(sum(expected), rel=1e-12)
    assert hinge.build("mean")(Z, Y).item() == pytest.approx(sum(expected) / 5, rel=1e-12)


OUT = torch.tensor([[2.0, 1.5, -1.0], [0.0, 0.0, 3.0], [1.0, -2.0, 0.2]], dtype=torch.float64)
CLS = torch.tensor([0, 1, 2])


def test_crammer_singer_hinge():
    expected = []
    for row, y in zip(OUT.tolist(), CLS.tolist()):
        others = max(v for j, v in enumerate(row) if j != y)
        expected.append(max(0.0, 1.0 - row[y] + others))
    assert expected == pytest.approx([0.5, 4.0, 1.8])
    assert Hinge().build("none")(OUT, CLS).tolist() == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("power", [1, 2])
def test_multi_margin_hinge(power):
    expected = []
    for row, y in zip(OUT.tolist(), CLS.tolist()):
        expected.append(sum(max(0.0, 1.0 - row[y] + v) ** power for j, v in enumerate(row) if j != y) / 3)
    hinge = Hinge(Hinge.Params(multiclass="multi_margin", power=power))
    assert hinge.build("none")(OUT, CLS).tolist() == pytest.approx(expected, rel=1e-12)
    assert hinge.build("mean")(OUT, CLS).item() == pytest.approx(sum(expected) / 3, rel=1e-12)


def test_two_class_hinge_is_crammer_singer():
    two = OUT[:, :2]
    labels = torch.tensor([0, 1, 0])
    cs = [max(0.0, 1.0 - r[y] + r[1 - y]) for r, y in zip(two.tolist(), labels.tolist())]
    assert Hinge().build("none")(two, labels).tolist() == pytest.approx(cs, rel=1e-12)


def test_multiclass_hinge_checks_its_targets_and_params():
    with pytest.raises(ValueError, match="0..2"):
        Hinge().build()(OUT, torch.tensor([0, 3, 1]))
    with pytest.raises(ValueError, match="class-index targets"):
        Hinge().build()(OUT, torch.zeros(3))
    with pytest.raises(ValidationError):
        Hinge.Params(margin=0.0)
    with pytest.raises(ValidationError):
        Hinge.Params(power=3)
    with pytest.raises(ValueError, match="reduction"):
        Hinge().build("avg")


def test_gradients_flow_to_the_scores():
    z = Z.clone().requires_grad_(True)
    Logistic().build("sum")(z, Y).backward()
    torch.testing.assert_close(z.grad, -Y * torch.sigmoid(-Y * Z))  # dℓ/dz = −y σ(−yz)
