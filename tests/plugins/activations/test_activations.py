"""Each activation builds the torch module computing its documented φ."""

import math

import pytest
import torch
from pydantic import ValidationError

from nnopt.plugins.activations import elementwise as act

X = torch.linspace(-3, 3, 61)


@pytest.mark.parametrize(
    "cls, params, phi",
    [
        (act.ReLU, {}, lambda x: torch.clamp(x, min=0)),
        (act.Tanh, {}, lambda x: 2 / (1 + torch.exp(-2 * x)) - 1),
        (act.Sigmoid, {}, lambda x: 1 / (1 + torch.exp(-x))),
        (act.GELU, {}, lambda x: x * 0.5 * (1 + torch.erf(x / math.sqrt(2)))),
        (act.Linear, {}, lambda x: x),
        (act.LeakyReLU, {"negative_slope": 0.2}, lambda x: torch.where(x > 0, x, 0.2 * x)),
        (act.ELU, {"alpha": 0.5}, lambda x: torch.where(x > 0, x, 0.5 * (torch.exp(x) - 1))),
        (act.Softplus, {"beta": 2.0}, lambda x: torch.log1p(torch.exp(2 * x)) / 2),
        (act.SELU, {}, lambda x: 1.0507009873554805 * torch.where(x > 0, x, 1.6732632423543772 * (torch.exp(x) - 1))),
        (act.SiLU, {}, lambda x: x / (1 + torch.exp(-x))),
        (act.Erf, {}, lambda x: torch.erf(x)),
        (act.Quadratic, {}, lambda x: x**2),
    ],
)
def test_module_computes_phi(cls, params, phi):
    component = cls(cls.Params(**params))
    torch.testing.assert_close(component.build()(X), phi(X), atol=1e-6, rtol=1e-5)
    assert cls.__doc__ and "φ(x)" in cls.__doc__


def test_build_returns_a_fresh_module_each_call():
    component = act.ReLU(act.ReLU.Params())
    assert component.build() is not component.build()


@pytest.mark.parametrize("cls, params", [(act.LeakyReLU, {"negative_slope": -0.1}), (act.Softplus, {"beta": 0}), (act.ReLU, {"inplace": True})])
def test_out_of_range_or_unknown_params_are_rejected(cls, params):
    with pytest.raises(ValidationError):
        cls.Params(**params)


@pytest.mark.parametrize("name, params", [("gelu", {}), ("elu", {}), ("softplus", {}), ("relu", {}), ("linear", {}),
                                          ("swish", {}), ("erf", {}), ("quadratic", {})])
def test_the_second_moment_gain_preserves_a_unit_gaussians_second_moment(name, params):
    """g = (E φ(z)²)^(-1/2), z ~ N(0, 1): checked by Monte Carlo against the quadrature of
    ``Activation.gain`` (the default every activation without a torch gain uses)."""
    from nnopt.core.kinds import Activation
    from nnopt.core.registry import Registry

    cls, _ = Registry().load("activations", name)
    act = cls(cls.Params(**params))
    z = torch.randn(2_000_000, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    expected = act.build()(z).pow(2).mean().item() ** -0.5
    assert Activation.gain(act) == pytest.approx(expected, rel=5e-3)


def test_activations_with_a_torch_gain_report_torchs():
    from nnopt.core.registry import Registry

    for name, gain in [("relu", 2**0.5), ("tanh", 5 / 3), ("sigmoid", 1.0), ("linear", 1.0), ("selu", 0.75)]:
        cls, _ = Registry().load("activations", name)
        assert cls(cls.Params()).gain() == pytest.approx(gain)
    cls, _ = Registry().load("activations", "leaky_relu")
    assert cls(cls.Params(negative_slope=0.2)).gain() == pytest.approx((2 / (1 + 0.04)) ** 0.5)


def test_aliases_name_the_same_activation():
    from nnopt.core.registry import Registry

    registry = Registry()
    assert registry.load("activations", "swish")[0] is registry.load("activations", "silu")[0] is act.SiLU
    assert registry.load("activations", "identity")[0] is act.Linear
