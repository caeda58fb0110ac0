"""Delta-orthogonal (Xiao et al. 2018): W[:, :, centre] = gain·H with HᵀH = I, every other tap 0."""

import math
from collections import OrderedDict

import pytest
import torch
from pydantic import ValidationError
from torch import nn

from nnopt.core.errors import StageError
from nnopt.core.kinds import Normalizer
from nnopt.core.registry import Registry
from nnopt.plugins.initializers.delta_orthogonal import DeltaOrthogonal


def init(model, seed=0, activation=None, **params):
    DeltaOrthogonal(DeltaOrthogonal.Params(**params)).initialize(
        model, lambda: None, torch.Generator().manual_seed(seed), activation=activation)
    return model


def activation(name):
    cls, _ = Registry().load("activations", name)
    return cls(cls.Params())


def eye(n):
    return torch.eye(n, dtype=torch.float64)


@pytest.mark.parametrize("params, gain", [({}, 1.0), ({"nonlinearity": "relu"}, math.sqrt(2)), ({"gain": 1.3}, 1.3)])
@pytest.mark.parametrize("c_in, c_out, k", [(3, 8, 3), (8, 8, 5), (16, 32, 1), (4, 6, 7)])
def test_centre_tap_is_orthogonal_up_to_gain_and_other_taps_are_exactly_zero(c_in, c_out, k, params, gain):
    w = init(nn.Conv2d(c_in, c_out, k), **params).weight.detach().double()
    centre = w[:, :, k // 2, k // 2]  # (c_out, c_in)
    assert torch.allclose(centre.T @ centre, gain**2 * eye(c_in), atol=1e-5)
    rest = w.clone()
    rest[:, :, k // 2, k // 2] = 0
    assert torch.count_nonzero(rest) == 0


def test_fewer_output_than_input_channels_is_refused_naming_the_layer_and_nothing_is_changed():
    model = nn.Sequential(OrderedDict(widen=nn.Conv2d(3, 8, 3), narrow=nn.Conv2d(8, 4, 3)))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(StageError, match=r"'narrow'.*4 output channels < 8 input"):
        init(model)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    with pytest.raises(StageError, match="transposed"):
        init(nn.Sequential(nn.ConvTranspose2d(4, 8, 3)))


def test_linear_layers_get_plain_orthogonal_init():
    model = init(nn.Sequential(nn.Conv2d(2, 4, 3), nn.Flatten(), nn.Linear(36, 10), nn.Linear(10, 20)),
                 nonlinearity="tanh")
    wide, tall = model[2].weight.double(), model[3].weight.double()  # 10 × 36 and 20 × 10
    assert torch.allclose(wide @ wide.T, (5 / 3) ** 2 * eye(10), atol=1e-5)
    assert torch.allclose(tall.T @ tall, (5 / 3) ** 2 * eye(10), atol=1e-5)


@pytest.mark.parametrize("padding", ["circular", "same"])
def test_a_deep_linear_conv_stack_preserves_the_norm_of_every_input(padding):
    # 32 layers z^l = W^l ∗ z^{l−1} + 0: each maps every pixel's channel vector by an H with
    # orthonormal columns (3 → 8 channels, then 8 → 8), so ‖z^32‖ = ‖x‖ exactly (dynamical isometry)
    from nnopt.core.component import ActivationRef
    from nnopt.plugins.architectures.cnn import CNN

    linear = ActivationRef.model_validate("linear")
    linear.resolve(type(activation("linear")), type(activation("linear")).Params())
    arch = CNN(CNN.Params(channels=[8] * 32, activation=linear, padding=padding))
    model = arch.build((3, 8, 8), 10, Normalizer()).double()  # float64 weights: exactness not rounding
    init(model, activation=arch.activation())
    names = list(dict(model.named_children()))
    stack = model[: names.index("global_pool")]
    x = torch.randn(5, 3, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        z = stack(x)
    assert z.shape == (5, 8, 8, 8)
    torch.testing.assert_close(z.flatten(1).norm(dim=1), x.flatten(1).norm(dim=1), rtol=1e-10, atol=0)
    # the same stack with default init loses (or gains) the norm geometrically
    default = arch.build((3, 8, 8), 10, Normalizer()).double()
    with torch.no_grad():
        ratio = default[: names.index("global_pool")](x).flatten(1).norm(dim=1) / x.flatten(1).norm(dim=1)
    assert (ratio < 0.5).all() or (ratio > 2).all()


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")
def test_even_kernels_centre_on_index_k_over_2_a_shift_by_one_under_same_padding():
    conv = init(nn.Conv2d(4, 4, 4, padding="same", bias=False)).double()
    w = conv.weight.detach()
    assert torch.count_nonzero(w[:, :, 2, 2]) == 16 and torch.count_nonzero(w) == 16
    x = torch.randn(2, 4, 6, 6, dtype=torch.float64)
    with torch.no_grad():
        y = conv(x)
    # torch pads (k − 1)//2 = 1 before: y[i, j] = H x[i + 1, j + 1] inside the map
    torch.testing.assert_close(y[:, :, :-1, :-1], torch.einsum("oc,nchw->nohw", w[:, :, 2, 2], x[:, :, 1:, 1:]))


def test_grouped_convolutions_get_one_orthogonal_centre_per_group():
    w = init(nn.Conv2d(4, 8, 3, groups=2)).weight.detach().double()  # (8, 2, 3, 3): two 4 × 2 blocks
    for g in range(2):
        block = w[4 * g: 4 * (g + 1), :, 1, 1]
        assert torch.allclose(block.T @ block, eye(2), atol=1e-6)


def test_auto_gain_follows_the_activation_and_the_gain_param_overrides_it():
    tanh = activation("tanh")
    w = init(nn.Conv2d(8, 8, 3), activation=tanh).weight.detach().double()[:, :, 1, 1]
    assert torch.allclose(w.T @ w, (5 / 3) ** 2 * eye(8), atol=1e-5)
    w = init(nn.Conv2d(8, 8, 3), activation=tanh, gain=1.05).weight.detach().double()[:, :, 1, 1]
    assert torch.allclose(w.T @ w, 1.05**2 * eye(8), atol=1e-5)
    assert DeltaOrthogonal(DeltaOrthogonal.Params()).gain(None) == 1.0
    with pytest.raises(ValidationError):
        DeltaOrthogonal.Params(gain=0.0)


def test_seed_bias_global_rng_and_parametrized_weights():
    a = init(nn.Conv2d(3, 6, 3), seed=3)
    torch.manual_seed(123)
    b = init(nn.Conv2d(3, 6, 3), seed=3)
    assert torch.equal(a.weight, b.weight)
    assert not torch.equal(a.weight, init(nn.Conv2d(3, 6, 3), seed=4).weight)
    assert (a.bias == 0).all()
    layer = nn.Conv2d(3, 6, 3)
    kept = layer.bias.detach().clone()
    assert torch.equal(init(layer, bias="keep").bias, kept)
    # under weight normalization the weight in use (g·v/‖v‖) is set, through the right inverse
    from torch.nn.utils.parametrizations import weight_norm

    w = init(weight_norm(nn.Conv2d(3, 6, 3)), gain=2.0).weight.detach().double()
    assert torch.allclose(w[:, :, 1, 1].T @ w[:, :, 1, 1], 4 * eye(3), atol=1e-5)
    assert torch.count_nonzero(w) == torch.count_nonzero(w[:, :, 1, 1])
