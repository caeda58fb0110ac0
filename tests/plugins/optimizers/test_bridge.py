"""The torch.optim and pytorch_optimizer bridges: generated components from class signatures."""

import inspect

import pytest
import torch
from pydantic import ValidationError

from nnopt.plugins.optimizers.bridge import PYTORCH_OPTIMIZER, TORCH, BridgedOptimizer, _arg_descriptions

CPU = torch.device("cpu")


def test_torch_bridge_names_every_optimizer_class_by_its_own_name():
    names = TORCH.names("optimizers")
    assert {"SGD", "Adam", "Rprop", "ASGD", "LBFGS", "SparseAdam"} <= set(names)
    assert "Optimizer" not in names and TORCH.names("schedules") == []


def test_pytorch_optimizer_bridge_uses_the_librarys_registry_names():
    names = PYTORCH_OPTIMIZER.names("optimizers")
    assert {"adan", "lamb", "ranger21", "sgd"} <= set(names)
    assert "sam" not in names  # needs a base-optimizer class: not configurable from YAML


def test_rprop_steps_exactly_as_torch_does():
    component = TORCH.load("optimizers", "Rprop")
    assert issubclass(component, BridgedOptimizer) and component.kind == "optimizers"
    params = component.Params(lr=0.05, etas=[0.4, 1.3])
    w1 = torch.nn.Parameter(torch.tensor([1.0, -2.0, 3.0], dtype=torch.float64))
    w2 = torch.nn.Parameter(w1.detach().clone())
    ours, theirs = component(params).build([w1], CPU), torch.optim.Rprop([w2], lr=0.05, etas=(0.4, 1.3))
    for _ in range(4):
        for w, opt in ((w1, ours), (w2, theirs)):
            opt.zero_grad()
            (w**3).sum().backward()
            opt.step()
    assert torch.equal(w1, w2)
    assert ours.defaults["etas"] == (0.4, 1.3)  # lists in YAML, tuples for the library


def test_params_come_from_the_signature_and_refuse_unknown_keys():
    fields = TORCH.load("optimizers", "Rprop").Params.model_fields
    assert set(fields) >= {"lr", "etas", "step_sizes", "maximize", "foreach"}
    assert not {"params", "fused", "differentiable", "capturable"} & set(fields)
    assert fields["lr"].default == inspect.signature(torch.optim.Rprop.__init__).parameters["lr"].default
    assert "learning rate" in fields["lr"].description  # from the class's Args section
    Params = TORCH.load("optimizers", "Rprop").Params
    for bad in ({"lr": 0.0}, {"etass": [0.5, 1.2]}, {"maximize": 1}, {"lr": "0.1"}):
        with pytest.raises(ValidationError):
            Params(**bad)


def test_a_required_plain_parameter_must_be_given():
    Params = PYTORCH_OPTIMIZER.load("optimizers", "ranger21").Params
    with pytest.raises(ValidationError, match="num_iterations"):
        Params()
    assert Params(num_iterations=100).num_iterations == 100


def test_infinite_defaults_stay_valid():
    assert PYTORCH_OPTIMIZER.load("optimizers", "prodigy").Params().growth_rate == float("inf")


def test_adan_builds_and_descends():
    component = PYTORCH_OPTIMIZER.load("optimizers", "adan")
    w = torch.nn.Parameter(torch.tensor([[1.0, 2.0], [3.0, 4.0]]))
    opt = component(component.Params(lr=0.01)).build([w], CPU)
    before = float((w.detach() ** 2).sum())
    for _ in range(5):
        opt.zero_grad()
        (w**2).sum().backward()
        opt.step()
    assert float((w.detach() ** 2).sum()) < before
    assert type(opt).__name__ == "Adan"


def test_closure_methods_are_marked():
    assert TORCH.load("optimizers", "LBFGS").needs_closure
    assert not TORCH.load("optimizers", "Rprop").needs_closure


def test_docstring_is_the_first_paragraph_and_says_bridged():
    doc = TORCH.load("optimizers", "Rprop").__doc__
    assert doc.startswith("Implements the resilient backpropagation algorithm.")
    assert "Bridged from `torch.optim.rprop.Rprop`" in doc and "torch.Rprop" in doc


def test_one_class_per_name():
    assert TORCH.load("optimizers", "Adam") is TORCH.load("optimizers", "Adam")
    with pytest.raises(KeyError):
        TORCH.load("optimizers", "Adamm")


def test_args_sections_are_parsed():
    doc = """Something.

    Args:
        lr (float, optional): learning
            rate (default: 1e-3)
        betas: the betas.

    Example:
        x: not an argument
    """
    assert _arg_descriptions(doc) == {"lr": "learning rate (default: 1e-3)", "betas": "the betas."}
