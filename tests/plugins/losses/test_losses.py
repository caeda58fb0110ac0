"""Cross-entropy and squared error, with the three reductions a training stage may ask for."""

import pytest
import torch
from pydantic import ValidationError

from nnopt.plugins.losses.cross_entropy import CrossEntropy
from nnopt.plugins.losses.mse import MSE

LOGITS = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 0.5]])
LABELS = torch.tensor([0, 2])


def test_cross_entropy_is_minus_log_softmax_of_the_label():
    per_sample = -torch.log_softmax(LOGITS, dim=1)[torch.arange(2), LABELS]
    ce = CrossEntropy()
    torch.testing.assert_close(ce.build("none")(LOGITS, LABELS), per_sample)
    torch.testing.assert_close(ce.build("mean")(LOGITS, LABELS), per_sample.mean())
    torch.testing.assert_close(ce.build("sum")(LOGITS, LABELS), per_sample.sum())


def test_label_smoothing_targets_mix_onehot_and_uniform():
    eps = 0.1
    q = (1 - eps) * torch.nn.functional.one_hot(LABELS, 3) + eps / 3
    expected = -(q * torch.log_softmax(LOGITS, dim=1)).sum(1).mean()
    loss = CrossEntropy(CrossEntropy.Params(label_smoothing=eps)).build()
    torch.testing.assert_close(loss(LOGITS, LABELS), expected)
    with pytest.raises(ValidationError):
        CrossEntropy.Params(label_smoothing=1.0)


def test_unknown_reduction_is_rejected():
    for loss in (CrossEntropy(), MSE()):
        with pytest.raises(ValueError, match="reduction"):
            loss.build("avg")


def test_mse_follows_torch_convention_mean_over_all_elements():
    z, y = torch.tensor([[1.0, 2.0], [3.0, 5.0]]), torch.tensor([[0.0, 0.0], [3.0, 3.0]])
    squared_norms = torch.tensor([1.0 + 4.0, 0.0 + 4.0])  # ‖z_i − y_i‖²
    mse = MSE()
    torch.testing.assert_close(mse.build("mean")(z, y), squared_norms.sum() / 4)  # n·k = 4
    torch.testing.assert_close(mse.build("sum")(z, y), squared_norms.sum())
    torch.testing.assert_close(mse.build("none")(z, y), squared_norms)


def test_mse_reshapes_vector_targets_instead_of_broadcasting():
    z, y = torch.tensor([[1.0], [2.0], [4.0]]), torch.tensor([1.0, 1.0, 1.0])
    torch.testing.assert_close(MSE().build("none")(z, y), torch.tensor([0.0, 1.0, 9.0]))
    torch.testing.assert_close(MSE().build("mean")(z, y), torch.tensor(10.0 / 3))  # not the (3, 3) broadcast


def test_mse_one_hot_encodes_integer_class_targets():
    z = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.5, 0.0]])
    torch.testing.assert_close(MSE().build("none")(z, torch.tensor([0, 2])), torch.tensor([0.0, 0.25 + 1.0]))


def test_mse_integer_targets_against_one_output_are_values():
    torch.testing.assert_close(MSE().build("none")(torch.tensor([[2.0], [0.0]]), torch.tensor([3, 0])), torch.tensor([1.0, 0.0]))


def test_mse_rejects_targets_that_do_not_fit():
    with pytest.raises(ValueError, match=r"\(2, 3\)"):
        MSE().build()(torch.zeros(2, 3), torch.zeros(2, 2))
    with pytest.raises(ValueError):
        MSE().build()(torch.zeros(2, 3), torch.zeros(2))  # float vector against 3 outputs
