"""Matrix factorization f(x) = W_N ⋯ W_1 x: its product, its loss ‖Y − W_N⋯W_1‖²_F/(mn), and training it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from nnopt.core.kinds import Normalizer
from nnopt.core.registry import Registry
from nnopt.plugins.architectures.matrix_factorization import MatrixFactorization
from nnopt.plugins.datasets.matrix import Matrix
from nnopt.plugins.losses.mse import MSE


def factorization(factors, input_shape=(6,), output_dim=5, normalizer=None):
    torch.manual_seed(0)
    return MatrixFactorization(MatrixFactorization.Params(factors=factors)).build(
        input_shape, output_dim, normalizer or Normalizer())


def test_two_factors_are_w2_w1_without_bias():
    model = factorization([3])
    w1, w2 = model.factor1.weight, model.factor2.weight
    assert w1.shape == (3, 6) and w2.shape == (5, 3)
    assert all(layer.bias is None for layer in (model.factor1, model.factor2))
    torch.testing.assert_close(model.product(), w2 @ w1)
    x = torch.randn(7, 6)
    torch.testing.assert_close(model(x), x @ (w2 @ w1).T)


@pytest.mark.parametrize("factors", [[], [4], [4, 2, 7]], ids=["one", "two", "four"])
def test_the_product_is_the_end_to_end_map(factors):
    model = factorization(factors)
    weights = [getattr(model, f"factor{l}").weight for l in range(1, len(factors) + 2)]
    explicit = torch.linalg.multi_dot(weights[::-1]) if len(weights) > 1 else weights[0]
    torch.testing.assert_close(model.product(), explicit)
    # on the basis vectors the outputs are the columns of the product
    torch.testing.assert_close(model(torch.eye(6)), explicit.T)


def test_each_factor_goes_through_the_normalizers_parametrization():
    cls, _ = Registry().load("normalizers", "weightnorm")
    model = factorization([3, 4], normalizer=cls(cls.Params()))
    for l in (1, 2, 3):
        assert hasattr(getattr(model, f"factor{l}"), "parametrizations")
    # product() uses the reparametrized weights w = g·v/‖v‖, and gradients reach g and v
    model.product().sum().backward()
    g = model.factor1.parametrizations.weight.original0
    assert g.grad is not None and g.grad.abs().sum() > 0


@pytest.mark.parametrize("name", ["batchnorm", "switchable"])
def test_a_normalizer_of_features_is_refused(name):
    from nnopt.core.errors import StageError

    cls, _ = Registry().load("normalizers", name)
    with pytest.raises(StageError, match="no feature layers"):
        factorization([3], normalizer=cls(cls.Params()))


def test_the_mse_loss_on_the_matrix_dataset_is_the_factorization_loss_over_mn():
    data = Matrix(Matrix.Params(rows=5, cols=6, rank=2, singular_values=[3.0, 1.0])).load(0)
    y = data.y_train.T  # Y ∈ R^{m×n}: the targets are its columns
    model = factorization([2], input_shape=data.input_shape, output_dim=data.output_dim)
    loss = MSE(MSE.Params()).build()(model(data.x_train), data.y_train)
    expected = torch.linalg.matrix_norm(y - model.factor2.weight @ model.factor1.weight) ** 2 / (5 * 6)
    torch.testing.assert_close(loss, expected)


def test_gradient_descent_with_inner_rank_one_reaches_the_eckart_young_error():
    """min ‖Y − W2 W1‖²_F over inner rank 1 is s_2² (the best rank-1 approximation drops s_2),
    so the mse loss reaches s_2²/(mn) and no lower."""
    m, n = 6, 5
    data = Matrix(Matrix.Params(rows=m, cols=n, rank=2, singular_values=[2.0, 1.0])).load(0)
    model = factorization([1], input_shape=(n,), output_dim=m)
    loss_fn = MSE(MSE.Params()).build()
    optimizer = torch.optim.SGD(model.parameters(), lr=2.0)
    for _ in range(1500):
        optimizer.zero_grad()
        loss = loss_fn(model(data.x_train), data.y_train)
        loss.backward()
        optimizer.step()
    assert loss.item() == pytest.approx(1.0 / (m * n), rel=1e-4)
    assert torch.linalg.matrix_rank(model.product().detach()) == 1


def test_its_activation_is_the_identity():
    activation = MatrixFactorization(MatrixFactorization.Params()).activation()
    assert activation.gain() == pytest.approx(1.0)


def test_a_pipeline_factorizes_a_rank_two_matrix_with_gradient_descent(invoke, write_pipeline, tmp_path):
    path = write_pipeline("""\
        name: mf
        data: {name: matrix, rows: 12, cols: 10, rank: 2, singular_values: [2.0, 1.0], batch_size: 10}
        model: {arch: {name: matrix_factorization, factors: [4]}}
        loss: mse
        stages:
          train: {kind: train, optimizer: {name: sgd, lr: 10.0}, steps: 300, log_every: 1}
        """)
    result = invoke("run", str(path), "--json", "--store", str(tmp_path / "store"))
    assert result.exit_code == 0, result
    stage = json.loads(result.stdout)["stages"]["train"]
    records = [json.loads(line) for line in (Path(stage["dir"]) / "metrics.jsonl").read_text().splitlines()]
    initial = next(r["loss"] for r in records if "loss" in r and r["step"] == 1)  # before the first update
    final = stage["metrics"]["train_loss"]
    assert final < 1e-3 * initial, (initial, final)
    assert stage["metrics"]["test_loss"] == pytest.approx(final)  # no noise: the test targets are Y too


def test_dropout_drops_inner_coordinates_in_training_only_and_keeps_the_product_in_expectation():
    from nnopt.core.kinds import Normalizer
    from nnopt.plugins.architectures.matrix_factorization import MatrixFactorization

    arch = MatrixFactorization(MatrixFactorization.Params(factors=[64], dropout=0.5))
    model = arch.build((6,), 4, Normalizer()).double()
    x = torch.eye(6, dtype=torch.float64)
    model.eval()
    assert torch.allclose(model(x), (model.product() @ x.T).T)
    model.train()
    torch.manual_seed(0)
    draws = torch.stack([model(x) for _ in range(4000)])
    assert not torch.allclose(draws[0], draws[1])  # a different mask each pass
    mean = draws.mean(0)
    exact = (model.product() @ x.T).T
    assert torch.allclose(mean, exact, atol=0.1 * exact.abs().max().item())
    # the output layer's coordinates are never dropped: with a single factor there is nothing to drop
    single = MatrixFactorization(MatrixFactorization.Params(factors=[], dropout=0.5)).build((6,), 4, Normalizer())
    single.train()
    assert torch.equal(single(x.float()), single(x.float()))
