"""Deep linear networks: f = W^L ⋯ W^1 x, and the scalar chain f = w_L ⋯ w_1 · x."""

from __future__ import annotations

import json

import pytest
import torch

from nnopt.core.errors import StageError
from nnopt.core.kinds import Normalizer
from nnopt.plugins.architectures.linear import DeepLinear, ScalarChain


def test_a_deep_linear_network_is_the_product_of_its_matrices():
    model = DeepLinear(DeepLinear.Params(widths=[7, 5])).build((4,), 3, Normalizer())
    x = torch.randn(6, 4)
    product = model.output.weight @ model.linear2.weight @ model.linear1.weight
    torch.testing.assert_close(model(x), x @ product.T)
    assert all(b is None for b in (model.linear1.bias, model.output.bias))


def test_the_scalar_chain_gradient_scales_like_w_to_the_depth_minus_one():
    """∂f/∂w_l = (∏_{k≠l} w_k)·x: with every w = 1.1 (0.9) the gradient explodes (vanishes) in L."""
    for w, grows in ((1.1, True), (0.9, False)):
        norms = []
        for depth in (5, 20, 40):
            model = ScalarChain(ScalarChain.Params(depth=depth, init=w)).build((1,), 1, Normalizer())
            model(torch.ones(1, 1)).sum().backward()
            torch.testing.assert_close(model.weights.grad, torch.full((depth,), w ** (depth - 1)))
            norms.append(model.weights.grad.abs().max().item())
        assert (norms == sorted(norms)) == grows


def test_the_scalar_chain_needs_as_many_outputs_as_inputs():
    with pytest.raises(StageError, match="as many outputs as inputs"):
        ScalarChain(ScalarChain.Params()).build((4,), 2, Normalizer())


def test_a_deep_linear_pipeline_fits_least_squares(invoke, write_pipeline, tmp_path):
    path = write_pipeline("""\
        name: dln
        data: {name: synthetic, task: least_squares, n_train: 256, n_test: 64, dim: 8, batch_size: 256}
        model: {arch: {name: linear, widths: [16, 16]}, init: {name: orthogonal}}
        loss: mse
        stages:
          train: {kind: train, optimizer: {name: sgd, lr: 0.05}, steps: 300}
        """)
    result = invoke("run", str(path), "--json", "--store", str(tmp_path / "s"))
    assert result.exit_code == 0, result
    assert json.loads(result.stdout)["stages"]["train"]["metrics"]["train_loss"] < 1e-3


def test_a_deep_linear_network_takes_a_dropout_rate():
    model = DeepLinear(DeepLinear.Params(widths=[8], dropout=0.25)).build((4,), 3, Normalizer())
    assert isinstance(model.dropout1, torch.nn.Dropout) and model.dropout1.p == 0.25


def test_scalar_chain_can_start_with_one_factor_of_the_wrong_sign_and_drop_partial_products():
    from nnopt.core.kinds import Normalizer
    from nnopt.plugins.architectures.linear import ScalarChain

    chain = ScalarChain(ScalarChain.Params(depth=4, init=1.1, init_first=-1.0)).build((1,), 1, Normalizer())
    assert chain.weights.tolist() == pytest.approx([-1.0, 1.1, 1.1, 1.1])
    x = torch.ones(5, 1)
    assert torch.allclose(chain(x), torch.full((5, 1), -1.331))
    dropped = ScalarChain(ScalarChain.Params(depth=3, init=2.0, dropout=0.5)).build((1,), 1, Normalizer())
    dropped.eval()
    assert torch.allclose(dropped(x), torch.full((5, 1), 8.0))  # eval: the product
    dropped.train()
    torch.manual_seed(0)
    outs = torch.cat([dropped(torch.ones(2000, 1))])
    # each output is 8·(2/1)^k·[not dropped] for the two partial products: 0 or 32, mean 8
    assert set(outs.flatten().tolist()) <= {0.0, 32.0}
    assert abs(outs.mean().item() - 8.0) < 1.0
