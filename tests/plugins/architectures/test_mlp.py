"""The MLP is the survey's eq. (1)/(2) with biases, built through the normalizer's hooks."""

import math

import pytest
import torch
from pydantic import ValidationError
from torch import nn

from nnopt.core.component import ActivationRef
from nnopt.core.kinds import Normalizer
from nnopt.plugins.activations.elementwise import ReLU, Tanh
from nnopt.plugins.architectures.mlp import MLP


def mlp(widths=(8, 4), activation=ReLU, **params):
    ref = ActivationRef.model_validate(activation.__name__.lower())
    ref.resolve(activation, activation.Params())  # what the engine does in a real run
    return MLP(MLP.Params(widths=list(widths), activation=ref, **params))


def test_layer_names_and_shapes_are_stable():
    model = mlp().build((1, 3, 3), 5, Normalizer())
    assert isinstance(model, nn.Sequential)
    assert list(dict(model.named_children())) == ["flatten", "linear1", "act1", "linear2", "act2", "output"]
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == {
        "linear1.weight": (8, 9), "linear1.bias": (8,),
        "linear2.weight": (4, 8), "linear2.bias": (4,),
        "output.weight": (5, 4), "output.bias": (5,),
    }  # fmt: skip
    assert model(torch.randn(7, 1, 3, 3)).shape == (7, 5)


def test_forward_is_the_recursion_z_l_equals_phi_of_W_z_plus_b():
    model = mlp(activation=Tanh).build((6,), 2, Normalizer())
    x = torch.randn(5, 6)
    z = x
    for name in ("linear1", "linear2"):
        layer = getattr(model, name)
        z = torch.tanh(z @ layer.weight.T + layer.bias)
    torch.testing.assert_close(model(x), z @ model.output.weight.T + model.output.bias)


def test_empty_widths_is_a_linear_model_and_bias_can_be_dropped():
    model = mlp(widths=(), bias=False).build((4,), 3, Normalizer())
    assert list(dict(model.named_children())) == ["flatten", "output"]
    assert model.output.bias is None


def test_each_hidden_layer_gets_its_own_activation_module():
    model = mlp().build((4,), 3, Normalizer())
    assert model.act1 is not model.act2 and isinstance(model.act1, nn.ReLU)


class Recording(Normalizer):
    def __init__(self):
        super().__init__()
        self.parametrized, self.features = [], []

    def feature_layer(self, num_features, spatial_dims=0):
        self.features.append((num_features, spatial_dims))
        return nn.LayerNorm(num_features)

    def parametrize(self, layer):
        self.parametrized.append(layer.out_features)
        return layer


def test_normalizer_parametrizes_every_linear_and_norms_hidden_layers_only():
    norm = Recording()
    model = mlp().build((4,), 3, norm)
    assert norm.parametrized == [8, 4, 3]
    assert norm.features == [(8, 0), (4, 0)]
    assert list(dict(model.named_children())) == [
        "flatten", "linear1", "norm1", "act1", "linear2", "norm2", "act2", "output"
    ]  # fmt: skip


def test_default_activation_is_a_relu_ref_and_widths_are_validated():
    params = MLP.Params()
    assert params.widths == [256, 128] and params.activation.name == "relu"
    with pytest.raises(ValidationError):
        MLP.Params(widths=[0])


def test_the_normalizer_can_follow_the_activation():
    model = mlp(norm_position="after_activation").build((4,), 3, Recording())
    assert list(dict(model.named_children()))[1:4] == ["linear1", "act1", "norm1"]


def test_last_activation_and_dropout_layers():
    model = mlp(widths=(8,), activation=Tanh, last_activation=True, dropout=0.5).build((4,), 3, Normalizer())
    assert list(dict(model.named_children())) == ["flatten", "linear1", "act1", "dropout1", "output", "output_act"]
    model.eval()  # dropout is the identity in eval mode: f = tanh(W2 tanh(W1 x + b1) + b2)
    x = torch.randn(5, 4)
    hidden = torch.tanh(x @ model.linear1.weight.T + model.linear1.bias)
    torch.testing.assert_close(model(x), torch.tanh(hidden @ model.output.weight.T + model.output.bias))
    model.train()
    assert (model.dropout1(torch.ones(1000)) == 0).float().mean().item() == pytest.approx(0.5, abs=0.06)
    with pytest.raises(ValidationError):
        MLP.Params(dropout=1.0)


def test_ntk_parameterization_scales_unit_gaussian_parameters():
    from nnopt.plugins.architectures.parameterization import NTKLinear

    torch.manual_seed(0)
    net = mlp(widths=(512,), parameterization="ntk", W_std=1.5, b_std=0.3).build((8,), 3, Normalizer())
    layer = net.linear1
    assert isinstance(layer, NTKLinear) and isinstance(net.output, NTKLinear)
    # parameters are N(0, 1) whatever the width
    assert abs(layer.weight.std().item() - 1.0) < 0.05 and abs(net.output.weight.std().item() - 1.0) < 0.05
    x = torch.randn(5, 8)
    expected = 1.5 / math.sqrt(8) * x @ layer.weight.T + 0.3 * layer.bias
    torch.testing.assert_close(layer(x), expected)


def test_standard_gaussian_init_draws_w_std_over_root_fan_in():
    torch.manual_seed(0)
    net = mlp(widths=(2000,), W_std=2.0, b_std=0.5).build((8,), 3, Normalizer())
    assert abs(net.linear1.weight.std().item() - 2.0 / math.sqrt(8)) < 0.01
    assert abs(net.linear1.bias.std().item() - 0.5) < 0.05
    assert abs(net.output.weight.std().item() - 2.0 / math.sqrt(2000)) < 0.005


def test_b_std_alone_is_refused_under_the_standard_parameterization():
    with pytest.raises(ValueError, match="needs W_std"):
        MLP.Params(widths=[4], b_std=0.1)


def test_output_scale_multiplies_the_output_layer_and_adds_no_parameter():
    torch.manual_seed(0)
    plain = mlp(activation=Tanh).build((6,), 3, Normalizer())
    torch.manual_seed(0)
    scaled = mlp(activation=Tanh, output_scale=100.0).build((6,), 3, Normalizer())
    assert list(dict(scaled.named_children()))[-1] == "output_scale"
    assert scaled.state_dict().keys() == plain.state_dict().keys()  # same weights file as α = 1
    x = torch.randn(4, 6)
    torch.testing.assert_close(scaled(x), 100.0 * plain(x))
    with pytest.raises(ValidationError):
        mlp(output_scale=0.0)
