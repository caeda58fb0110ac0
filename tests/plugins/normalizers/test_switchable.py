"""Switchable normalization computes y = γ (x − Σ w_k μ_k)/√(Σ w'_k σ²_k + ε) + β (Luo et al. 2019)."""

from __future__ import annotations

import json

import pytest
import torch
from pydantic import ValidationError
from torch import nn

from nnopt.core.errors import StageError
from nnopt.plugins.architectures.mlp import MLP
from nnopt.plugins.normalizers.switchable import Switchable, SwitchableNorm


def switchable(**params) -> Switchable:
    return Switchable(Switchable.Params(**params))


def features(*shape, seed=0):
    return 3.0 + 2.0 * torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def select(layer: SwitchableNorm, k: str) -> SwitchableNorm:
    """λ, λ' one-hot-like on statistic k: softmax gives weight exactly 1 to k (e^{−10⁴} underflows to 0)."""
    with torch.no_grad():
        for logits in (layer.mean_logits, layer.var_logits):
            logits.zero_()
            logits[layer.using.index(k)] = 1e4
    return layer


# ------------------------------------------------------------------ reductions to BN / LN / IN
REFERENCES_2D = {
    "bn": lambda c: nn.BatchNorm2d(c),
    "ln": lambda c: nn.GroupNorm(1, c),
    "in": lambda c: nn.InstanceNorm2d(c),
}


@pytest.mark.parametrize("k", ["in", "ln", "bn"])
def test_with_one_statistic_selected_it_is_the_torch_norm_of_feature_maps_in_training(k):
    layer = select(switchable().feature_layer(3, 2), k)
    reference = REFERENCES_2D[k](3)
    with torch.no_grad():  # a non-trivial γ, β, the same in both (InstanceNorm2d has none by default)
        layer.weight.copy_(torch.tensor([0.5, 1.0, 2.0]))
        layer.bias.copy_(torch.tensor([-1.0, 0.0, 1.0]))
        if k != "in":
            reference.weight.copy_(layer.weight)
            reference.bias.copy_(layer.bias)
    x = features(4, 3, 5, 6)
    expected = reference(x)
    if k == "in":
        expected = expected * layer.weight.view(1, -1, 1, 1) + layer.bias.view(1, -1, 1, 1)
    torch.testing.assert_close(layer(x), expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("k, reference", [("bn", nn.BatchNorm1d(8)), ("ln", nn.LayerNorm(8))])
def test_with_one_statistic_selected_it_is_the_torch_norm_of_vectors(k, reference):
    layer = select(switchable().feature_layer(8), k)
    x = features(16, 8)
    torch.testing.assert_close(layer(x), reference(x), atol=1e-5, rtol=0)


def test_the_mixture_is_the_equation_with_softmax_weights():
    layer = switchable(eps=1e-3).feature_layer(3, 2)
    with torch.no_grad():
        layer.mean_logits.copy_(torch.tensor([0.3, -1.0, 0.8]))
        layer.var_logits.copy_(torch.tensor([-0.5, 0.2, 1.5]))
        layer.weight.copy_(torch.tensor([0.5, 1.0, 2.0]))
        layer.bias.copy_(torch.tensor([-1.0, 0.0, 1.0]))
    x = features(4, 3, 5, 6).double()
    # the statistics written out over their sets: IN (n, c), LN (n), BN (c); biased variances
    stats = [(x.mean((2, 3), keepdim=True), x.var((2, 3), keepdim=True, unbiased=False)),
             (x.mean((1, 2, 3), keepdim=True), x.var((1, 2, 3), keepdim=True, unbiased=False)),
             (x.mean((0, 2, 3), keepdim=True), x.var((0, 2, 3), keepdim=True, unbiased=False))]
    w, w2 = torch.softmax(layer.mean_logits.double(), 0), torch.softmax(layer.var_logits.double(), 0)
    mu = sum(w[k] * stats[k][0] for k in range(3))
    sigma2 = sum(w2[k] * stats[k][1] for k in range(3))
    gamma, beta = layer.weight.double().view(1, -1, 1, 1), layer.bias.double().view(1, -1, 1, 1)
    expected = gamma * (x - mu) / torch.sqrt(sigma2 + 1e-3) + beta
    torch.testing.assert_close(layer(x.float()).double(), expected, atol=1e-5, rtol=0)


# ------------------------------------------------------------------ running statistics
def test_eval_uses_the_running_batch_statistics_as_batchnorm_does():
    layer = select(switchable(momentum=0.3).feature_layer(3, 2), "bn")
    reference = nn.BatchNorm2d(3, momentum=0.3)
    for seed in range(3):
        x = features(4, 3, 5, 6, seed=seed)
        layer(x), reference(x)
    torch.testing.assert_close(layer.running_mean, reference.running_mean)
    torch.testing.assert_close(layer.running_var, reference.running_var)  # unbiased batch variance, as torch's
    layer.eval(), reference.eval()
    x = features(2, 3, 5, 6, seed=9)
    torch.testing.assert_close(layer(x), reference(x), atol=1e-5, rtol=0)


def test_in_eval_only_the_batch_part_switches_to_running_statistics():
    layer = switchable().feature_layer(3, 2)  # uniform weights 1/3 over in, ln, bn
    layer(features(8, 3, 4, 4, seed=1))
    layer.eval()
    x = features(2, 3, 4, 4, seed=2)
    mu = (x.mean((2, 3), keepdim=True) + x.mean((1, 2, 3), keepdim=True) + layer.running_mean.view(1, -1, 1, 1)) / 3
    var = (x.var((2, 3), keepdim=True, unbiased=False) + x.var((1, 2, 3), keepdim=True, unbiased=False)
           + layer.running_var.view(1, -1, 1, 1)) / 3
    torch.testing.assert_close(layer(x), (x - mu) / torch.sqrt(var + 1e-5), atol=1e-5, rtol=0)
    # an example's output no longer depends on the rest of the batch
    torch.testing.assert_close(layer(x[:1]), layer(x)[:1])


def test_training_on_a_single_value_per_channel_is_refused_as_by_batchnorm():
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        switchable().feature_layer(4)(features(1, 4))
    # without batch statistics a single example is fine
    assert switchable(using=["ln"]).feature_layer(4)(features(1, 4)).shape == (1, 4)


# ------------------------------------------------------------------ learning
def test_gradients_reach_the_importance_logits_and_the_affine_parameters():
    layer = switchable().feature_layer(3, 2)
    x = features(4, 3, 5, 6)
    probe = torch.randn(4, 3, 5, 6, generator=torch.Generator().manual_seed(5))
    (layer(x) * probe).sum().backward()
    for name in ("mean_logits", "var_logits", "weight", "bias"):
        grad = getattr(layer, name).grad
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0, name


def test_affine_false_has_no_scale_or_shift():
    layer = switchable(affine=False).feature_layer(4)
    assert layer.weight is None and layer.bias is None
    assert {n for n, _ in layer.named_parameters()} == {"mean_logits", "var_logits"}


# ------------------------------------------------------------------ which statistics
def test_vectors_mix_layer_and_batch_statistics_and_feature_maps_all_three():
    assert switchable().feature_layer(8).using == ("ln", "bn")
    assert switchable().feature_layer(8, 2).using == ("in", "ln", "bn")
    assert switchable(using=["bn", "in"]).feature_layer(8, 1).using == ("in", "bn")
    with pytest.raises(StageError, match="no spatial positions"):
        switchable(using=["in", "ln"]).feature_layer(8)


@pytest.mark.parametrize("using, message", [([], "at least one"), (["ln", "ln"], "at most once"), (["gn"], "in")])
def test_bad_using_lists_are_validation_errors(using, message):
    with pytest.raises(ValidationError, match=message):
        Switchable.Params(using=using)


def test_the_norm_parameter_group_selects_it():
    from nnopt.plugins.stages.param_groups import _is_norm

    assert _is_norm(switchable().feature_layer(4))


# ------------------------------------------------------------------ in architectures
@pytest.mark.parametrize("position", ["before_activation", "after_activation"])
def test_the_mlp_builds_with_it_in_both_positions(position):
    from nnopt.core.component import ActivationRef
    from nnopt.plugins.activations.elementwise import ReLU

    relu = ActivationRef.model_validate("relu")
    relu.resolve(ReLU, ReLU.Params())  # what the engine does in a real run
    torch.manual_seed(0)
    model = MLP(MLP.Params(widths=[16, 16], activation=relu, norm_position=position)).build((8,), 3, switchable())
    names = list(dict(model.named_children()))
    assert (names.index("norm1") < names.index("act1")) == (position == "before_activation")
    assert isinstance(model.norm1, SwitchableNorm) and model.norm1.using == ("ln", "bn")
    out = model(torch.randn(10, 8))
    assert out.shape == (10, 3)
    out.square().mean().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_a_convolution_can_use_it_on_feature_maps():
    torch.manual_seed(0)
    conv = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), switchable().feature_layer(4, 2), nn.ReLU())
    out = conv(torch.randn(5, 1, 8, 8))
    assert out.shape == (5, 4, 8, 8)
    out.mean().backward()
    assert conv[1].mean_logits.grad is not None


def test_a_pipeline_trains_an_mlp_with_switchable_normalization(invoke, write_pipeline, tmp_path):
    path = write_pipeline("""\
        name: sn
        data: {name: digits, batch_size: 64}
        model: {arch: {name: mlp, widths: [32]}, norm: {name: switchable}}
        loss: cross_entropy
        stages:
          train: {kind: train, optimizer: {name: sgd, lr: 0.1, momentum: 0.9}, steps: 40}
        """)
    result = invoke("run", str(path), "--json", "--store", str(tmp_path / "store"))
    assert result.exit_code == 0, result
    metrics = json.loads(result.stdout)["stages"]["train"]["metrics"]
    assert metrics["steps"] == 40 and metrics["test_accuracy"] > 0.8  # 0.93 at this seed; chance is 0.1
