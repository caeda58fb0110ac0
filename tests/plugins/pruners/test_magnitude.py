"""Magnitude and random pruning: exact counts (ties, overrides, rounds), selection, seeding."""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError
from torch import nn

from nnopt.core.errors import StageError
from nnopt.plugins.pruners.magnitude import Magnitude, Random, random_masks_like, removal_count
from nnopt.plugins.pruners.selection import prunable_names


def half_up(fraction_num: int, fraction_den: int, remaining: int) -> int:
    """⌊(a/b)·r + ½⌋ in integers: the definition, independent of the code under test."""
    return (2 * fraction_num * remaining + fraction_den) // (2 * fraction_den)


def pruner(cls=Magnitude, **params):
    return cls(cls.Params.model_validate(params))


def ones(weights):
    return {n: torch.ones_like(w) for n, w in weights.items()}


def kept(masks):
    return {n: int(m.count_nonzero()) for n, m in masks.items()}


G = torch.Generator().manual_seed(0)


def test_removal_count_rounds_half_up_on_the_fraction_as_written():
    assert [removal_count(0.5, r) for r in (0, 1, 2, 3, 4, 5)] == [0, 1, 1, 2, 2, 3]
    assert removal_count(0.2, 5) == 1 and removal_count(0.2, 12) == 2 and removal_count(0.2, 13) == 3
    # 0.29·50 = 14.5 exactly; in binary floating point 0.29·50 + 0.5 floors to 14
    assert removal_count(0.29, 50) == 15 == half_up(29, 100, 50)
    for r in range(0, 300):
        assert removal_count(0.2, r) == half_up(1, 5, r)


def test_global_scope_with_all_weights_tied_removes_exact_counts_in_position_order():
    weights = {"a": torch.ones(7), "b": -torch.ones(11), "c": torch.ones(13)}
    masks = pruner(fraction=0.2).masks(weights, ones(weights), G)
    # 31 unpruned, ⌊6.2 + ½⌋ = 6 removed, all ties: the first 6 positions (of "a")
    assert kept(masks) == {"a": 1, "b": 11, "c": 13}
    assert masks["a"].tolist() == [0, 0, 0, 0, 0, 0, 1]


def test_repeated_rounds_follow_the_round_by_round_product_with_ties():
    # few distinct magnitudes: nearly every comparison is a tie
    g = torch.Generator().manual_seed(3)
    weights = {"a": torch.randint(-2, 3, (17, 9), generator=g).float() * 0.5,
               "b": torch.randint(-2, 3, (23,), generator=g).float() * 0.5}
    for scope in ("global", "layerwise"):
        current = ones(weights)
        remaining = {"a": 153, "b": 23}
        for _ in range(12):
            new = pruner(fraction=0.2, scope=scope).masks(weights, current, G)
            assert all(bool((new[n] <= current[n]).all()) for n in new)  # nothing revived
            if scope == "layerwise":
                remaining = {n: r - half_up(1, 5, r) for n, r in remaining.items()}
                assert kept(new) == remaining
            else:
                total = sum(remaining.values())
                total -= half_up(1, 5, total)
                assert sum(kept(new).values()) == total
                remaining = kept(new)
            # removed entries are never larger in |w| than kept ones
            for n in new:
                removed = weights[n][(current[n] != 0) & (new[n] == 0)].abs()
                if removed.numel():
                    cap = removed.max()
                    pool = [weights[m][new[m] != 0].abs() for m in (new if scope == "global" else [n])]
                    assert all(bool((p >= cap).all()) for p in pool)
            current = new


def test_pruned_entries_stay_pruned_and_do_not_count_as_remaining():
    w = torch.arange(1.0, 21.0)  # |w| = 1..20
    current = torch.ones(20)
    current[15:] = 0  # the five largest are already pruned
    masks = pruner(fraction=0.4, scope="layerwise").masks({"w": w}, {"w": current}, G)
    # 15 remaining → 6 removed: the six smallest (1..6); the pruned big ones stay pruned
    assert masks["w"].tolist() == [0] * 6 + [1] * 9 + [0] * 5


def test_layerwise_each_layer_its_own_count_with_overrides_exact_name_before_glob():
    weights = {"hidden.weight": torch.randn(10, 10), "out.weight": torch.randn(3, 10), "extra.weight": torch.randn(7)}
    p = pruner(scope="layerwise", fraction=0.2, layer_fractions={"*.weight": 0.5, "out.weight": 0.1})
    masks = p.masks(weights, ones(weights), G)
    assert kept(masks) == {"hidden.weight": 100 - 50, "out.weight": 30 - 3, "extra.weight": 7 - 4}


def test_global_scope_pools_the_layers_without_override_and_prunes_overrides_alone():
    g = torch.Generator().manual_seed(1)
    small = 0.01 * torch.randn(50, generator=g)  # all smaller than any of `big`
    big = 1.0 + torch.rand(50, generator=g)
    weights = {"small": small, "big": big, "out": torch.randn(20, generator=g)}
    masks = pruner(fraction=0.5, layer_fractions={"out": 0.25}).masks(weights, ones(weights), G)
    # pooled: 100 remaining, 50 removed = all of the smaller layer; `out` alone: 5 of 20
    assert kept(masks) == {"small": 0, "big": 50, "out": 15}
    removed_out = weights["out"][masks["out"] == 0].abs()
    assert removed_out.max() <= weights["out"][masks["out"] != 0].abs().min()


def test_params_and_inputs_are_checked():
    for bad in ({"fraction": 0.0}, {"fraction": 1.0}, {"layer_fractions": {"x": 1.0}}, {"scope": "local"},
                {"layer_fractions": {"": 0.1}}, {"prunable": []}):
        with pytest.raises(ValidationError):
            Magnitude.Params.model_validate(bad)
    assert Magnitude.Params.model_validate({"layer_fractions": {"x": 0}}).layer_fractions == {"x": 0.0}
    w = {"a": torch.ones(4)}
    with pytest.raises(StageError, match="names no prunable tensor"):
        pruner(layer_fractions={"outptu.weight": 0.1}).masks(w, ones(w), G)
    with pytest.raises(StageError, match="non-finite"):
        pruner().masks({"a": torch.tensor([1.0, float("nan")])}, {"a": torch.ones(2)}, G)


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3)
        self.bn = nn.BatchNorm2d(2)
        self.hidden = nn.Linear(8, 4)
        self.ln = nn.LayerNorm(4)
        self.out = nn.utils.parametrizations.weight_norm(nn.Linear(4, 2))


def test_prunable_default_is_linear_and_conv_weights_only():
    net = Net()
    # no biases, no norm parameters, no buffers; the weight-normed layer's weight is no parameter
    assert prunable_names(net) == ["conv.weight", "hidden.weight"]
    assert prunable_names(net, ["conv"]) == ["conv.weight"]
    assert prunable_names(net, ["*.bias", "linear"]) == ["conv.bias", "bn.bias", "hidden.weight", "hidden.bias", "ln.bias",
                                                    "out.bias"]  # a glob means what it says
    assert "bn.running_mean" not in prunable_names(net, ["bn.*"])  # buffers are never prunable
    with pytest.raises(StageError, match="selects no parameter"):
        prunable_names(net, ["hiden.*"])
    with pytest.raises(StageError, match="nothing to prune"):
        prunable_names(nn.Sequential(nn.LayerNorm(3)))


def test_random_removes_magnitudes_per_layer_counts_uniformly_and_is_seeded():
    g = torch.Generator().manual_seed(2)
    weights = {"a": 3.0 * torch.randn(40, generator=g), "b": torch.randn(60, generator=g)}
    current = ones(weights)
    current["a"][:5] = 0
    by_magnitude = pruner(fraction=0.3).masks(weights, current, G)
    draw = lambda seed: pruner(Random, fraction=0.3).masks(weights, current, torch.Generator().manual_seed(seed))
    first, again, other = draw(7), draw(7), draw(8)
    assert kept(first) == kept(by_magnitude) and kept(by_magnitude)["a"] != 35 - round(0.3 * 35)  # global counts
    assert all(torch.equal(first[n], again[n]) for n in first)
    assert any(not torch.equal(first[n], other[n]) for n in first)
    assert any(not torch.equal(first[n], by_magnitude[n]) for n in first)
    assert bool((first["a"][:5] == 0).all())  # pruned stay pruned


def test_random_masks_like_keeps_each_layers_count():
    masks = {"a": (torch.arange(30) % 3 == 0).float().reshape(5, 6), "b": torch.ones(4)}
    fresh = random_masks_like(masks, torch.Generator().manual_seed(0))
    assert kept(fresh) == {"a": 10, "b": 4} and fresh["a"].shape == (5, 6)
    assert not torch.equal(fresh["a"], masks["a"])
