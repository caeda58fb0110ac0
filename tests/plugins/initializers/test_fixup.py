"""Fixup (Zhang, Dauphin & Ma 2019): zero head and last branch layers, branches × L^(−1/(2m−2))."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from nnopt.core.errors import Problems, StageError
from nnopt.core.kinds import DataSplit
from nnopt.core.model_spec import ModelSpec, build_model
from nnopt.core.planner import resolve_components
from nnopt.core.registry import Registry
from nnopt.core.yaml_source import Source
from nnopt.plugins.initializers.fixup import Fixup

REGISTRY = Registry()


def build(arch: dict, shape=(1, 8, 8), norm: str = "none", init: dict | None = None, seed: int = 0) -> nn.Module:
    """The model the engine builds (and initializes, with ``init``) for ``arch`` on ``shape`` inputs."""
    raw = {"arch": arch, "norm": {"name": norm}}
    if init is not None:
        raw["init"] = init
    spec = ModelSpec.model_validate(raw)
    problems = Problems()
    resolve_components(spec, ("model",), Source({}, "test"), REGISTRY, problems)
    assert not problems, problems.items
    x = torch.zeros(2, *shape)
    y = torch.zeros(2, dtype=torch.long)
    return build_model(spec, DataSplit(x, y, x, y, "classification", shape, 10, 10), seed, torch.device("cpu"))


def fixup(model: nn.Module, seed: int = 0, **params) -> nn.Module:
    Fixup(Fixup.Params(**params)).initialize(model, lambda: None, torch.Generator().manual_seed(seed))
    return model


SCALARS = {"name": "resnet", "stages": [[2, 8, 1], [2, 16, 2]], "fixup_scalars": True}


def test_head_and_last_branch_layers_are_exactly_zero_the_rest_is_not():
    model = fixup(build(SCALARS))
    assert not model.head.weight.any() and not model.head.bias.any()
    for block in model.blocks:
        assert not block.branch[-1].weight.any()
        assert block.branch[0].weight.std() > 0
    assert model.stem[0].weight.std() > 0 and model.blocks[2].shortcut[0].weight.std() > 0


@pytest.mark.parametrize("m", [2, 3])
def test_branch_layers_have_kaiming_std_times_L_to_the_minus_1_over_2m_minus_2(m):
    L, c = 4, 32
    model = fixup(build({"name": "resnet", "stages": [[L, c, 1]], "branch_depth": m}))
    kaiming = math.sqrt(2.0) / math.sqrt(c * 9)  # ReLU gain √2, fan_in = 32 channels × 3×3
    # every non-last branch layer: (m−1)·L layers of 32·32·9 weights, std error ≈ 1/√(2N) < 0.4%
    w = torch.cat([layer.weight.flatten() for b in model.blocks for layer in list(b.branch)[:-1]])
    assert w.std().item() == pytest.approx(kaiming * L ** (-1 / (2 * m - 2)), rel=0.03)
    assert abs(w.mean().item()) < 4 * w.std().item() / math.sqrt(w.numel())


def test_stem_and_projections_are_plain_kaiming():
    model = fixup(build({"name": "resnet", "stages": [[8, 16, 1], [1, 64, 2]]}))
    stem, projection = model.stem[0].weight, model.blocks[8].shortcut[0].weight
    assert stem.std().item() == pytest.approx(math.sqrt(2 / 9), rel=0.25)  # 144 weights: a loose check
    assert projection.std().item() == pytest.approx(math.sqrt(2 / 16), rel=0.1)  # 1024 weights, fan_in 16·1·1


def test_scalars_are_one_and_zero_whatever_they_were():
    model = build(SCALARS)
    with torch.no_grad():
        for p in model.parameters():
            if p.numel() == 1:
                p.fill_(3.0)
    fixup(model)
    for block in model.blocks:
        assert block.scale.item() == 1.0 and all(b.item() == 0.0 for b in block.biases)
    assert all(b.item() == 0.0 for b in model.biases)


def test_at_init_every_block_is_the_identity_and_the_output_follows_the_stem_path_only():
    model = fixup(build(SCALARS))
    x = torch.randn(6, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    z = model.features(x)
    for block in model.blocks:
        out = block(z)
        # identity shortcut: φ(0 + z) = z for the non-negative output of a ReLU; projection: φ(S z)
        torch.testing.assert_close(out, z if block.shortcut is None else torch.relu(block.shortcut(z)), rtol=0, atol=0)
        z = out
    assert not model(x).any()  # the zero head
    # and it trains: the head's gradient is the (non-zero) pooled features
    nn.functional.cross_entropy(model(x), torch.arange(6) % 10).backward()
    assert model.head.weight.grad.abs().sum() > 0


def test_works_without_the_scalars_unless_told_to_require_them():
    arch = {"name": "resnet", "stages": [[2, 8, 1]]}
    model = fixup(build(arch))
    assert all(not b.branch[-1].weight.any() for b in model.blocks)
    with pytest.raises(StageError, match="fixup_scalars: true"):
        fixup(build(arch), require_scalars=True)


def test_a_branch_of_one_layer_is_zeroed_and_nothing_is_scaled():
    model = fixup(build({"name": "resnet", "stages": [[3, 8, 1]], "branch_depth": 1}))
    assert all(not b.branch[0].weight.any() for b in model.blocks)


def test_refuses_networks_without_residual_blocks():
    with pytest.raises(StageError, match="no residual blocks"):
        fixup(nn.Sequential(nn.Flatten(), nn.Linear(64, 10)))
    with pytest.raises(StageError, match="no skip connections"):
        fixup(build({"name": "plain", "stages": [[2, 8, 1]]}))
    with pytest.raises(StageError, match="0/0"):
        fixup(build({"name": "resnet", "stages": [[1, 8, 1]]}, norm="weightnorm"))


def test_through_the_engine_same_seed_same_weights():
    init = {"name": "fixup"}
    a = build({"name": "resnet20", "width": 0.5}, init=init, seed=3)
    torch.manual_seed(99)  # the global RNG plays no part in the initializer
    b = build({"name": "resnet20", "width": 0.5}, init=init, seed=3)
    c = build({"name": "resnet20", "width": 0.5}, init=init, seed=4)
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))
    assert not torch.equal(a.blocks[0].branch[0].weight, c.blocks[0].branch[0].weight)
    assert not a.head.weight.any()
