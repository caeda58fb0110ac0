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
