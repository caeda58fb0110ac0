"""Residual networks z^l = φ(β·F(z^{l−1}) + S(z^{l−1})) (He et al. 2016), their plain twins and presets."""

from __future__ import annotations

import math

import pytest
import torch
from pydantic import ValidationError
from torch import nn

from nnopt.core.errors import PluginError, Problems, StageError
from nnopt.core.kinds import DataSplit
from nnopt.core.model_spec import ModelSpec, build_model
from nnopt.core.planner import resolve_components
from nnopt.core.registry import Registry
from nnopt.core.yaml_source import Source
from nnopt.plugins.architectures.resnet import ResidualBlock, ResNet, ResNet20, ZeroPadShortcut

REGISTRY = Registry()
SMALL = [[1, 8, 1], [1, 16, 2], [1, 16, 2]]  # one block per stage: every shortcut kind, cheaply


def build(arch: dict, shape: tuple[int, ...], norm: str = "none", out: int = 10, seed: int = 0) -> nn.Module:
    """The model the engine builds for ``arch`` on inputs of ``shape`` (components resolved as in a run)."""
    spec = ModelSpec.model_validate({"arch": arch, "norm": {"name": norm}})
    problems = Problems()
    resolve_components(spec, ("model",), Source({}, "test"), REGISTRY, problems)
    assert not problems, problems.items
    x = torch.zeros(2, *shape)
    y = torch.zeros(2, dtype=torch.long)
    return build_model(spec, DataSplit(x, y, x, y, "classification", shape, out, out), seed, torch.device("cpu"))


def _loadable_normalizers() -> list[str]:
    names = []
    for name in REGISTRY.names("normalizers"):
        try:
            REGISTRY.load("normalizers", name)
        except PluginError:  # a normalizer still being written elsewhere: not this file's concern
            continue
        names.append(name)
    return names


@pytest.mark.parametrize("shape", [(1, 8, 8), (3, 32, 32), (64,)], ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("norm", _loadable_normalizers())
def test_every_normalizer_gives_the_right_output_and_finite_gradients(shape, norm):
    arch = {"name": "resnet", "stages": SMALL}
    if norm == "instancenorm" and len(shape) == 1:
        # instance norm needs spatial positions; the dense layers of a flat input have none
        with pytest.raises(StageError, match="spatial"):
            build(arch, shape, norm)
        return
    model = build(arch, shape, norm)
    out = model(torch.randn(4, *shape, generator=torch.Generator().manual_seed(1)))
    assert out.shape == (4, 10) and torch.isfinite(out).all()
    out.square().mean().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)


def test_conv_layout_strides_and_shortcuts():
    model = build({"name": "resnet", "stages": [[2, 8, 1], [2, 16, 2], [1, 16, 2]]}, (1, 8, 8))
    assert model.num_blocks == 5 and all(isinstance(b, ResidualBlock) for b in model.blocks)
    # a shortcut exactly where the shape changes: 8→16 channels with stride 2, then stride 2 alone
    assert [b.shortcut is not None for b in model.blocks] == [False, False, True, False, True]
    projection = model.blocks[2].shortcut
    assert isinstance(projection[0], nn.Conv2d) and projection[0].kernel_size == (1, 1) and projection[0].stride == (2, 2)
    # 8×8 → 8×8 → 4×4 → 2×2: two stride-2 stages still leave positions for the pooling
    h = model.features(torch.randn(3, 1, 8, 8))
    sizes = []
    for block in model.blocks:
        h = block(h)
        sizes.append(tuple(h.shape[1:]))
    assert sizes == [(8, 8, 8), (8, 8, 8), (16, 4, 4), (16, 4, 4), (16, 2, 2)]


def test_flat_inputs_get_linear_layers_and_conv_refuses_them():
    model = build({"name": "resnet", "stages": [[1, 12, 1], [1, 20, 2]]}, (64,))
    assert not any(isinstance(m, nn.Conv2d) for m in model.modules())
    assert isinstance(model.stem[0], nn.Linear) and model.stem[0].in_features == 64
    assert isinstance(model.blocks[1].shortcut[0], nn.Linear)  # 12 → 20 features: projected
    dense_images = build({"name": "resnet", "stages": [[1, 12, 1]], "kind": "dense"}, (1, 8, 8))
    assert dense_images(torch.randn(2, 1, 8, 8)).shape == (2, 10)
    with pytest.raises(StageError, match="C×H×W"):
        build({"name": "resnet", "kind": "conv"}, (64,))


def _main_path_weight_layers(model: nn.Module) -> int:
    """Stem, every branch layer and the head: the layers He et al. count (shortcuts excluded)."""
    shortcuts = {id(m) for b in model.blocks if b.shortcut is not None for m in b.shortcut.modules()}
    return sum(1 for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear)) and id(m) not in shortcuts)


@pytest.mark.parametrize("name, n", [("resnet20", 3), ("resnet32", 5), ("resnet56", 9)])
def test_cifar_presets_have_6n_plus_2_weight_layers(name, n):
    model = build({"name": name}, (3, 32, 32))
    assert model.num_blocks == 3 * n
    assert _main_path_weight_layers(model) == 6 * n + 2
    assert [b.branch[0].out_channels for b in model.blocks[:: n]] == [16, 32, 64]


def test_resnet20_has_about_0_27M_parameters():
    # He et al. 2016, Table 6: 0.27M. By hand, with option-A (zero-pad) shortcuts and BN:
    # convs 3·16·9 + 6·16·16·9 + (16·32 + 5·32·32)·9 + (32·64 + 5·64·64)·9 = 267,696,
    # head 64·10 + 10 = 650, BN γ,β over 19 layers 2·(7·16 + 6·32 + 6·64) = 1,376
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    option_a = count(build({"name": "resnet20", "shortcut": "zero_pad"}, (3, 32, 32), "batchnorm"))
    assert option_a == 267_696 + 650 + 1_376
    # projection shortcuts (option B) add two 1×1 convs with BN: 16·32 + 64 + 32·64 + 128
    option_b = count(build({"name": "resnet20"}, (3, 32, 32), "batchnorm"))
    assert option_b == option_a + 512 + 64 + 2048 + 128
    assert option_b == pytest.approx(270_000, rel=0.03)


def test_presets_take_a_width_multiplier_but_not_a_layout():
    model = build({"name": "resnet20", "width": 0.5}, (1, 8, 8))
    assert [b.branch[0].out_channels for b in model.blocks[::3]] == [8, 16, 32]
    with pytest.raises(ValidationError):
        ResNet20.Params.model_validate({"stages": [[1, 8, 1]]})
    with pytest.raises(ValidationError):
        ResNet20.Params.model_validate({"branch_depth": 3})


def test_plain_twin_has_no_skip_and_its_block_is_phi_of_F():
    arch = {"stages": [[2, 8, 1], [1, 16, 2]], "shortcut": "zero_pad"}  # parameter-free shortcuts: same weights
    resnet, plain = build({"name": "resnet", **arch}, (1, 8, 8)), build({"name": "plain", **arch}, (1, 8, 8), seed=1)
    plain.load_state_dict(resnet.state_dict())  # strict: exactly the same parameters
    assert all(not b.skip and b.shortcut is None for b in plain.blocks)
    x = torch.randn(5, 1, 8, 8)
    assert not torch.allclose(plain(x), resnet(x))
    block, z = plain.blocks[0], plain.features(x)
    by_hand = torch.relu(block.branch[1](torch.relu(block.branch[0](z))))  # φ(W_2 φ(W_1 z)), no norm
    torch.testing.assert_close(block(z), by_hand)
    torch.testing.assert_close(resnet.blocks[0](z), torch.relu(block.branch[1](torch.relu(block.branch[0](z))) + z))


def test_plain_drops_exactly_the_projection_parameters():
    arch = {"stages": [[1, 8, 1], [1, 16, 2]]}
    resnet, plain = build({"name": "resnet", **arch}, (1, 8, 8)), build({"name": "plain", **arch}, (1, 8, 8))
    extra = sum(p.numel() for p in resnet.blocks[1].shortcut.parameters())
    assert extra == 8 * 16  # the 1×1 projection 8 → 16, no norm
    assert sum(p.numel() for p in resnet.parameters()) - sum(p.numel() for p in plain.parameters()) == extra


@pytest.mark.parametrize("beta", [0.3, "1/sqrt(L)"])
def test_beta_scales_the_branch_exactly(beta):
    model = build({"name": "resnet", "stages": [[3, 8, 1], [1, 16, 2]], "beta": beta}, (1, 8, 8))
    expected = 0.3 if beta == 0.3 else 1 / math.sqrt(4)
    x = torch.randn(4, 1, 8, 8)
    z = model.features(x)
    for block in model.blocks:
        assert block.beta == pytest.approx(expected)
        s = z if block.shortcut is None else block.shortcut(z)
        out = torch.relu(expected * block.residual(z) + s)
        torch.testing.assert_close(block(z), out)
        z = out


def test_fixup_scalars_sit_before_each_layer_and_activation_and_scale_the_branch():
    model = build({"name": "resnet", "stages": [[1, 8, 1], [1, 16, 2]], "fixup_scalars": True}, (1, 8, 8))
    block = model.blocks[1]
    assert len(block.biases) == 4 and block.scale.item() == 1.0 and len(model.biases) == 2
    with torch.no_grad():
        for i, b in enumerate(block.biases):
            b.fill_(0.1 * (i + 1))
        block.scale.fill_(0.7)
    a0, a1, a2, a3 = (b for b in block.biases)
    z = torch.relu(torch.randn(3, 8, 8, 8))
    h = torch.relu(block.branch[0](z + a0) + a1)
    h = block.branch[1](h + a2) * 0.7 + a3
    torch.testing.assert_close(block(z), torch.relu(h + block.shortcut(z + a0)))


def test_dropout_acts_in_training_only():
    model = build({"name": "resnet", "stages": [[2, 8, 1]], "dropout": 0.5}, (1, 8, 8))
    assert sum(isinstance(m, nn.Dropout) for m in model.modules()) == 2
    x = torch.randn(4, 1, 8, 8)
    model.eval()
    assert torch.equal(model(x), model(x))
    model.train()
    assert not torch.equal(model(x), model(x))


def test_branch_depth_and_zero_pad_shortcut():
    model = build({"name": "resnet", "stages": [[1, 8, 1], [1, 16, 2]], "branch_depth": 3, "shortcut": "zero_pad"},
                  (1, 8, 8))
    assert all(len(b.branch) == 3 for b in model.blocks)
    pad = model.blocks[1].shortcut
    assert isinstance(pad, ZeroPadShortcut) and not list(pad.parameters())
    z = torch.randn(2, 8, 8, 8)
    s = pad(z)
    assert s.shape == (2, 16, 4, 4)
    assert torch.equal(s[:, :8], z[:, :, ::2, ::2]) and not s[:, 8:].any()


def test_params_are_validated():
    assert ResNet.Params.model_validate({"stages": [[2, 8, 1]]}).stages[0].blocks == 2
    assert ResNet.Params().stages[2].channels == 64  # default: ResNet-20's layout
    for bad in ({"stages": []}, {"stages": [[1, 8]]}, {"kernel_size": 4}, {"beta": "1/L"}, {"width": 0.0},
                {"shortcut": "zero_pad", "stages": [[1, 16, 1], [1, 8, 2]]}):
        with pytest.raises(ValidationError):
            ResNet.Params.model_validate(bad)
