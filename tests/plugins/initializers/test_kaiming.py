"""Kaiming normal: W_ij ~ N(0, gain²/fan) (He et al. 2015, survey eq. (17))."""

import math

import pytest
import torch
from torch import nn
from torch.nn.utils.parametrizations import weight_norm

from nnopt.plugins.initializers.kaiming import KaimingNormal


def init(model, seed=0, **params):
    KaimingNormal(KaimingNormal.Params(**params)).initialize(model, lambda: None, torch.Generator().manual_seed(seed))
    return model


@pytest.mark.parametrize(
    "params, variance",
    [
        ({}, 2 / 512),  # relu, fan_in: the survey's 2/d_in
        ({"mode": "fan_out"}, 2 / 256),
        ({"nonlinearity": "linear"}, 1 / 512),
        ({"nonlinearity": "tanh"}, (5 / 3) ** 2 / 512),
        ({"nonlinearity": "leaky_relu", "negative_slope": 0.2}, 2 / (1 + 0.2**2) / 512),
    ],
)
def test_weight_variance_is_gain_squared_over_fan(params, variance):
    layer = init(nn.Linear(512, 256), **params)
    w = layer.weight
    assert abs(w.mean().item()) < 4 * math.sqrt(variance / w.numel())
    assert w.var().item() == pytest.approx(variance, rel=0.03)  # 131k samples: std error ≈ 0.4%


def test_conv_fan_in_includes_the_receptive_field():
    conv = init(nn.Conv2d(64, 128, kernel_size=3))
    assert conv.weight.var().item() == pytest.approx(2 / (64 * 9), rel=0.03)


def test_biases_zeroed_or_kept():
    model = nn.Sequential(nn.Linear(10, 10), nn.ReLU(), nn.Linear(10, 2))
    kept = model[0].bias.clone()
    assert all((m.bias == 0).all() for m in init(model)[::2])
    model = nn.Sequential(nn.Linear(10, 10))
    model[0].bias.data.copy_(kept)
    assert torch.equal(init(model, bias="keep")[0].bias, kept)


def test_same_seed_same_weights_independent_of_the_global_rng():
    a = init(nn.Linear(20, 30), seed=3)
    torch.manual_seed(123)
    b = init(nn.Linear(20, 30), seed=3)
    c = init(nn.Linear(20, 30), seed=4)
    assert torch.equal(a.weight, b.weight)
    assert not torch.equal(a.weight, c.weight)


def test_non_weight_layers_untouched_and_reparametrized_weights_assigned():
    norm = nn.LayerNorm(8)
    wn = weight_norm(nn.Linear(300, 300))
    init(nn.Sequential(wn, norm))
    assert torch.equal(norm.weight, torch.ones(8))
    assert wn.weight.var().item() == pytest.approx(2 / 300, rel=0.03)


# ------------------------------------------------------------------ the activation's gain
def _activation(name, **params):
    from nnopt.core.registry import Registry

    cls, _ = Registry().load("activations", name)
    return cls(cls.Params(**params))


@pytest.mark.parametrize("activation, gain", [
    ("relu", math.sqrt(2)), ("tanh", 5 / 3), ("linear", 1.0), ("sigmoid", 1.0), ("selu", 3 / 4),
])
def test_auto_takes_the_gain_of_the_architectures_activation(activation, gain):
    layer = nn.Linear(512, 256)
    KaimingNormal(KaimingNormal.Params()).initialize(layer, lambda: None, torch.Generator().manual_seed(0),
                                                     activation=_activation(activation))
    assert layer.weight.var().item() == pytest.approx(gain**2 / 512, rel=0.03)


def test_a_named_nonlinearity_overrides_the_activation():
    layer = nn.Linear(512, 256)
    KaimingNormal(KaimingNormal.Params(nonlinearity="relu")).initialize(
        layer, lambda: None, torch.Generator().manual_seed(0), activation=_activation("tanh"))
    assert layer.weight.var().item() == pytest.approx(2 / 512, rel=0.03)


def test_without_a_known_activation_auto_uses_relus_gain():
    assert KaimingNormal(KaimingNormal.Params()).gain(None) == pytest.approx(math.sqrt(2))


def test_a_pipeline_with_tanh_initializes_with_the_tanh_gain():
    """End to end through the engine's model builder: an MLP under tanh gets 5/3, not √2."""
    from nnopt.core.kinds import DataSplit
    from nnopt.core.model_spec import ModelSpec, build_model
    from nnopt.core.planner import resolve_components
    from nnopt.core.errors import Problems
    from nnopt.core.registry import Registry
    from nnopt.core.yaml_source import Source

    spec = ModelSpec.model_validate(
        {"arch": {"name": "mlp", "widths": [1024], "activation": "tanh"}, "init": {"name": "kaiming_normal"}})
    problems = Problems()
    resolve_components(spec, ("model",), Source({}, "test"), Registry(), problems)
    assert not problems
    x = torch.zeros(4, 512)
    data = DataSplit(x, torch.zeros(4, dtype=torch.long), x, torch.zeros(4, dtype=torch.long), "classification", (512,), 2, 2)
    model = build_model(spec, data, 0, torch.device("cpu"))
    assert model.linear1.weight.var().item() == pytest.approx((5 / 3) ** 2 / 512, rel=0.03)
