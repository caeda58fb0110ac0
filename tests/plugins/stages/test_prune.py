"""The prune stage: exact zeros, masks of the prunable tensors only, rounds, sparsity report."""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError
from safetensors.torch import load_file, save_file

from nnopt.core.errors import StageError
from nnopt.core.stage import ResolvedWeights
from nnopt.plugins.stages.prune import Prune, PruneSpec
from nnopt.plugins.stages.sparsity import apply_masks, sparsity_report

from stage_helpers import model_spec, run_stage

WIDTHS = [16, 16]
WEIGHTS = {"linear1.weight": 128, "linear2.weight": 256, "output.weight": 48}


def half_up(num: int, den: int, r: int) -> int:
    return (2 * num * r + den) // (2 * den)  # ⌊(num/den)·r + ½⌋


@pytest.fixture
def dense(train):
    _, out = train("dense", epochs=2, keep=[0], model=model_spec(WIDTHS))
    return {"dense": ResolvedWeights(out / "weights/final.safetensors", model_spec(WIDTHS), out / "masks.safetensors")}


def prune(tmp_path, name, weights, seed=0, **spec):
    out = tmp_path / name
    outcome = run_stage("prune", out, weights=weights, seed=seed, model=model_spec(WIDTHS), **spec)
    ref = ResolvedWeights(out / "weights/final.safetensors", model_spec(WIDTHS), out / "masks.safetensors")
    return outcome, out, ref


def test_spec_needs_from_and_method():
    with pytest.raises(ValidationError):
        PruneSpec.model_validate({"kind": "prune", "method": "magnitude"})
    with pytest.raises(ValidationError):
        PruneSpec.model_validate({"kind": "prune", "from": "dense"})
    assert Prune.provides_weights and Prune(PruneSpec.model_validate(
        {"kind": "prune", "from": "dense", "method": "magnitude"})).kept_steps() == set()


def test_pruned_weights_are_exactly_zero_and_masks_cover_prunable_tensors_only(tmp_path, dense):
    outcome, out, _ = prune(tmp_path, "p", dense, **{"from": "dense", "method": {"name": "magnitude", "fraction": 0.2}})
    before = load_file(str(dense["dense"].path))
    after = load_file(str(out / "weights/final.safetensors"))
    masks = load_file(str(out / "masks.safetensors"))
    assert set(masks) == set(WEIGHTS)  # no biases
    assert set(after) == set(before)
    for name, tensor in after.items():
        if name in masks:
            assert bool((tensor[masks[name] == 0] == 0).all())
            assert torch.equal(tensor[masks[name] != 0], before[name][masks[name] != 0])
        else:
            assert torch.equal(tensor, before[name])
    total = sum(WEIGHTS.values())
    remaining = total - half_up(1, 5, total)  # global: one count over all 432
    report = outcome.results["sparsity"]
    assert report["total"] == {"weights": total, "remaining": remaining, "fraction": remaining / total,
                               "sparsity": 1 - remaining / total}
    for name, n in WEIGHTS.items():
        k = int(masks[name].sum())
        assert report["layers"][name]["weights"] == n and report["layers"][name]["remaining"] == k
        assert report["layers"][name]["fraction"] == k / n
    assert outcome.metrics["weights_remaining"] == remaining / total
    assert 0.0 <= outcome.metrics["test_accuracy"] <= 1.0


def test_rounds_continue_from_the_previous_masks_with_exact_counts(tmp_path, dense):
    method = {"name": "magnitude", "scope": "layerwise", "fraction": 0.2, "layer_fractions": {"output.*": 0.1}}
    src, source, previous, expected = dense, "dense", None, dict(WEIGHTS)
    for k in range(1, 5):
        _, out, ref = prune(tmp_path, f"r{k}", src, **{"from": source, "method": method})
        masks = load_file(str(out / "masks.safetensors"))
        expected = {n: r - (half_up(1, 10, r) if n == "output.weight" else half_up(1, 5, r)) for n, r in expected.items()}
        assert {n: int(m.sum()) for n, m in masks.items()} == expected
        if previous is not None:
            assert all(bool((masks[n] <= previous[n]).all()) for n in masks)  # pruned stay pruned
        previous, src, source = masks, {"src": ref}, "src"


def test_a_masked_source_is_masked_again_before_pruning(tmp_path, dense):
    # a source whose masked entries are (wrongly) nonzero: its masks still hold
    state = load_file(str(dense["dense"].path))
    masks = {"linear1.weight": (torch.arange(128) % 2 == 0).float().reshape(16, 8)}
    src = tmp_path / "src"
    src.mkdir()
    save_file(state, str(src / "w.safetensors"))
    save_file(masks, str(src / "masks.safetensors"))
    weights = {"src": ResolvedWeights(src / "w.safetensors", model_spec(WIDTHS), src / "masks.safetensors")}
    outcome, out, _ = prune(tmp_path, "p", weights, **{"from": "src", "method": {"name": "magnitude", "scope": "layerwise",
                                                                                   "fraction": 0.5}})
    new = load_file(str(out / "masks.safetensors"))
    after = load_file(str(out / "weights/final.safetensors"))
    assert int(new["linear1.weight"].sum()) == 64 - 32
    assert bool((new["linear1.weight"] <= masks["linear1.weight"]).all())
    assert bool((after["linear1.weight"][masks["linear1.weight"] == 0] == 0).all())


def test_random_method_is_seeded_by_the_stage_seed(tmp_path, dense):
    spec = {"from": "dense", "method": {"name": "random", "fraction": 0.5}}
    runs = [load_file(str(prune(tmp_path, f"s{i}", dense, seed=s, **spec)[1] / "masks.safetensors"))
            for i, s in enumerate((3, 3, 4))]
    assert all(torch.equal(runs[0][n], runs[1][n]) for n in WEIGHTS)
    assert any(not torch.equal(runs[0][n], runs[2][n]) for n in WEIGHTS)


def test_bad_inputs_fail_with_a_message(tmp_path, dense):
    with pytest.raises(StageError, match="selects no parameter"):
        prune(tmp_path, "a", dense, **{"from": "dense", "method": {"name": "magnitude", "prunable": ["hiden.*"]}})
    with pytest.raises(StageError, match="names no prunable tensor"):
        prune(tmp_path, "b", dense, **{"from": "dense", "method": {"name": "magnitude", "layer_fractions": {"out": 0.1}}})
    save_file({"linear1.weight": torch.ones(3)}, str(tmp_path / "bad_masks.safetensors"))
    bad = {"dense": ResolvedWeights(dense["dense"].path, model_spec(WIDTHS), tmp_path / "bad_masks.safetensors")}
    with pytest.raises(StageError, match="has shape"):
        prune(tmp_path, "c", bad, **{"from": "dense", "method": "magnitude"})


def test_apply_masks_and_report_on_a_module_and_a_state_dict():
    layer = torch.nn.Linear(3, 2)
    mask = {"weight": torch.tensor([[1.0, 0, 1], [0, 0, 1]])}
    param = layer.weight
    apply_masks(layer, mask)
    assert layer.weight is param and layer.weight.tolist()[1][:2] == [0.0, 0.0] and layer.weight[0, 1] == 0
    state = {"weight": torch.full((2, 3), float("nan"))}
    apply_masks(state, mask)
    assert state["weight"][mask["weight"] == 0].eq(0).all()  # exact zeros even under nan
    with pytest.raises(ValueError, match="names no tensor"):
        apply_masks(layer, {"wieght": torch.ones(2, 3)})
    report = sparsity_report({"w": mask["weight"], "v": torch.ones(4)})
    assert report["layers"]["w"] == {"weights": 6, "remaining": 3, "fraction": 0.5, "sparsity": 0.5}
    assert report["total"]["weights"] == 10 and report["total"]["remaining"] == 7 and report["total"]["fraction"] == 0.7
