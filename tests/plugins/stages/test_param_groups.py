"""Per-parameter groups: which parameters get their own weight decay or learning-rate scale."""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError
from torch import nn

from nnopt.core.errors import StageError
from nnopt.plugins.stages.param_groups import ParamGroup, build_param_groups, check_group_options

from stage_helpers import read_metrics


def net() -> nn.Module:
    return nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 2))


def groups(*specs: dict) -> list[ParamGroup]:
    return [ParamGroup.model_validate(s) for s in specs]


def names_of(model: nn.Module, params: list[torch.Tensor]) -> list[str]:
    by_id = {id(p): n for n, p in model.named_parameters()}
    return [by_id[id(p)] for p in params]


def test_no_groups_gives_the_trainable_parameters_as_they_are():
    model = net()
    model[3].bias.requires_grad_(False)
    assert names_of(model, build_param_groups(model, [])) == ["0.weight", "0.bias", "1.weight", "1.bias", "3.weight"]


def test_bias_and_norm_selectors_and_the_default_group_first():
    model = net()
    out = build_param_groups(model, groups({"params": ["bias", "norm"], "weight_decay": 0.0}))
    assert names_of(model, out[0]["params"]) == ["0.weight", "3.weight"] and set(out[0]) == {"params"}
    assert names_of(model, out[1]["params"]) == ["0.bias", "1.weight", "1.bias", "3.bias"]
    assert out[1]["weight_decay"] == 0.0


def test_one_d_selector_and_globs_and_first_match_wins():
    model = net()
    out = build_param_groups(model, groups({"params": ["3.*"], "lr_scale": 0.5}, {"params": ["1d"], "weight_decay": 0.0}),
                             {"lr": 0.2})
    assert names_of(model, out[1]["params"]) == ["3.weight", "3.bias"] and out[1]["lr"] == pytest.approx(0.1)
    assert names_of(model, out[2]["params"]) == ["0.bias", "1.weight", "1.bias"]


def test_a_group_selecting_nothing_is_an_error_naming_the_parameters():
    with pytest.raises(StageError, match=r"param_groups\[0\] \(conv\*\) selects no parameter.*0.weight"):
        build_param_groups(net(), groups({"params": ["conv*"], "weight_decay": 0.0}))


def test_group_options_are_validated():
    with pytest.raises(ValidationError):
        ParamGroup.model_validate({"params": ["bias"], "weight_decay": -1.0})
    with pytest.raises(ValidationError):
        ParamGroup.model_validate({"params": []})
    with pytest.raises(ValidationError):
        ParamGroup.model_validate({"params": ["bias"], "momentum": 0.9})


def test_an_option_the_optimizer_lacks_is_refused_not_ignored():
    model = net()
    spec = groups({"params": ["bias"], "weight_decay": 0.0})
    opt = torch.optim.Rprop(build_param_groups(model, spec))  # Rprop has no weight decay
    with pytest.raises(StageError, match="has no weight decay"):
        check_group_options(opt, spec)


def test_an_excluded_parameter_gets_the_update_without_decay(train):
    """One SGD step θ₁ = θ₀ − η(g + λθ₀): for the biases excluded from decay, θ₁ = θ₀ − ηg, so
    the two runs' biases differ by exactly ηλθ₀ and every other parameter is the same."""
    from safetensors.torch import load_file

    lr, wd = 0.1, 0.5
    decay = {"name": "sgd", "lr": lr, "weight_decay": wd}
    _, plain = train("plain", steps=1, keep=[0], optimizer=decay)
    _, grouped = train("grouped", steps=1, keep=[0], optimizer=decay, param_groups=[{"params": ["bias"], "weight_decay": 0.0}])
    init = load_file(str(plain / "weights/step_0.safetensors"))
    a, b = load_file(str(plain / "weights/final.safetensors")), load_file(str(grouped / "weights/final.safetensors"))
    for name in a:
        if name.endswith("bias"):
            torch.testing.assert_close(b[name] - a[name], lr * wd * init[name])
        else:
            assert torch.equal(a[name], b[name])


def test_the_logged_lr_is_the_default_groups(train):
    _, out = train(steps=2, log_every=1, optimizer={"name": "sgd", "lr": 0.1},
                   param_groups=[{"params": ["output.*"], "lr_scale": 10.0}])
    assert [r["lr"] for r in read_metrics(out) if "lr" in r] == [0.1, 0.1]
