"""Each normalizer computes its documented normalization, and every one fits the MLP."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from nnopt.core.errors import StageError
from nnopt.core.registry import Registry
from nnopt.plugins.architectures.mlp import MLP

NAMES = ["none", "batchnorm", "layernorm", "groupnorm", "weightnorm", "spectralnorm"]


def normalizer(name: str, **params):
    cls, _ = Registry().load("normalizers", name)
    return cls(cls.Params(**params))


def features(*shape, seed=0):
    return 3.0 + 2.0 * torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def test_batchnorm_standardizes_each_channel_over_the_batch_and_keeps_running_statistics():
    layer = normalizer("batchnorm", momentum=0.5).feature_layer(4)
    x = features(256, 4)
    y = layer(x)
    torch.testing.assert_close(y.mean(0), torch.zeros(4), atol=1e-5, rtol=0)
    torch.testing.assert_close(y.var(0, unbiased=False), torch.ones(4), atol=1e-3, rtol=0)
    # r ← (1 − m)·r + m·batch statistic, with the unbiased batch variance
    torch.testing.assert_close(layer.running_mean, 0.5 * x.mean(0))
    torch.testing.assert_close(layer.running_var, 0.5 * torch.ones(4) + 0.5 * x.var(0, unbiased=True))
    layer.eval()
    expected = (x - layer.running_mean) / torch.sqrt(layer.running_var + 1e-5)
    torch.testing.assert_close(layer(x), expected)


def test_layernorm_standardizes_each_example_over_its_features():
    y = normalizer("layernorm").feature_layer(64)(features(8, 64))
    torch.testing.assert_close(y.mean(1), torch.zeros(8), atol=1e-5, rtol=0)
    torch.testing.assert_close(y.var(1, unbiased=False), torch.ones(8), atol=1e-3, rtol=0)


def test_layernorm_of_feature_maps_normalizes_over_channels_and_positions():
    y = normalizer("layernorm").feature_layer(3, spatial_dims=2)(features(2, 3, 5, 5))
    flat = y.reshape(2, -1)
    torch.testing.assert_close(flat.mean(1), torch.zeros(2), atol=1e-5, rtol=0)


def test_groupnorm_standardizes_each_group_of_channels():
    y = normalizer("groupnorm", groups=2).feature_layer(8)(features(4, 8))
    groups = y.reshape(4, 2, 4)
    torch.testing.assert_close(groups.mean(-1), torch.zeros(4, 2), atol=1e-5, rtol=0)
    torch.testing.assert_close(groups.var(-1, unbiased=False), torch.ones(4, 2), atol=1e-3, rtol=0)
    with pytest.raises(StageError, match="cannot be split into 3 groups"):
        normalizer("groupnorm", groups=3).feature_layer(8)


def test_instancenorm_needs_spatial_positions_and_normalizes_each_channel_of_each_example():
    with pytest.raises(StageError, match="spatial positions"):
        normalizer("instancenorm").feature_layer(8)
    y = normalizer("instancenorm").feature_layer(3, spatial_dims=2)(features(2, 3, 6, 6))
    torch.testing.assert_close(y.mean((2, 3)), torch.zeros(2, 3), atol=1e-5, rtol=0)


def test_weightnorm_writes_each_row_as_magnitude_times_direction_and_keeps_the_function():
    torch.manual_seed(0)
    plain = nn.Linear(5, 3)
    layer = normalizer("weightnorm").parametrize(nn.Linear(5, 3))
    layer.load_state_dict({"bias": plain.bias, "parametrizations.weight.original0": plain.weight.norm(dim=1, keepdim=True),
                           "parametrizations.weight.original1": plain.weight})
    torch.testing.assert_close(layer.weight, plain.weight)
    g, v = layer.parametrizations.weight.original0, layer.parametrizations.weight.original1
    torch.testing.assert_close(layer.weight, g * v / v.norm(dim=1, keepdim=True))


def test_spectralnorm_divides_by_the_largest_singular_value():
    torch.manual_seed(0)
    layer = normalizer("spectralnorm", power_iterations=5).parametrize(nn.Linear(32, 16))
    for _ in range(20):  # the power iteration converges over training forward passes
        layer(torch.randn(4, 32))
    assert torch.linalg.matrix_norm(layer.weight.detach(), ord=2).item() == pytest.approx(1.0, abs=1e-3)


@pytest.mark.parametrize("name", NAMES)
def test_every_normalizer_fits_the_mlp_forward_and_backward(name):
    from nnopt.core.component import ActivationRef
    from nnopt.plugins.activations.elementwise import ReLU

    relu = ActivationRef.model_validate("relu")
    relu.resolve(ReLU, ReLU.Params())  # what the engine does in a real run
    torch.manual_seed(0)
    model = MLP(MLP.Params(widths=[16, 16], activation=relu)).build((8,), 3, normalizer(name))
    out = model(torch.randn(10, 8))
    assert out.shape == (10, 3)
    out.square().mean().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_a_pipeline_trains_with_batchnorm_and_excludes_its_parameters_from_decay(invoke, write_pipeline, tmp_path):
    import json

    path = write_pipeline("""\
        name: bn
        data: {name: digits, batch_size: 64}
        model: {arch: {name: mlp, widths: [64]}, norm: {name: batchnorm}}
        loss: cross_entropy
        stages:
          train:
            kind: train
            optimizer: {name: sgd, lr: 0.1, momentum: 0.9, weight_decay: 0.0005}
            param_groups: [{params: [bias, norm], weight_decay: 0.0}]
            epochs: 3
        """)
    result = invoke("run", str(path), "--json", "--store", str(tmp_path / "s"))
    assert result.exit_code == 0, result
    metrics = json.loads(result.stdout)["stages"]["train"]["metrics"]
    assert metrics["test_accuracy"] > 0.9
