"""The rewind stage: each control against its definition; and train → prune → rewind → train."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner
from pydantic import ValidationError
from safetensors.torch import load_file

from nnopt.cli import main
from nnopt.core.errors import StageError
from nnopt.core.model_spec import build_model
from nnopt.core.stage import ResolvedWeights
from nnopt.plugins.stages.rewind import Rewind, RewindSpec, reinit_seed

from stage_helpers import data_ref, model_spec, run_stage

WIDTHS = [16, 16]
MASKED = ("linear1.weight", "linear2.weight", "output.weight")


@pytest.fixture
def chain(train, tmp_path):
    """A trained dense stage (keeping step 0) and a 50%-pruned stage of it."""
    _, dense = train("dense", epochs=2, keep=[0], model=model_spec(WIDTHS))
    refs = {"dense": ResolvedWeights(dense / "weights/final.safetensors", model_spec(WIDTHS), dense / "masks.safetensors"),
            "dense@0": ResolvedWeights(dense / "weights/step_0.safetensors", model_spec(WIDTHS), dense / "masks.safetensors")}
    pruned = tmp_path / "pruned"
    run_stage("prune", pruned, weights=refs, model=model_spec(WIDTHS),
              **{"from": "dense", "method": {"name": "magnitude", "fraction": 0.5}})
    refs["pruned"] = ResolvedWeights(pruned / "weights/final.safetensors", model_spec(WIDTHS), pruned / "masks.safetensors")
    return refs


def rewind(tmp_path, chain, name, seed=0, **spec):
    out = tmp_path / name
    outcome = run_stage("rewind", out, weights=chain, seed=seed, model=model_spec(WIDTHS),
                        **{"from": "pruned", "to": "dense@init", **spec})
    return outcome, load_file(str(out / "weights/final.safetensors")), load_file(str(out / "masks.safetensors"))


def test_spec_declares_to_as_a_weight_ref():
    spec = RewindSpec.model_validate({"kind": "rewind", "from": "p", "to": "dense@init"})
    assert str(spec.to) == "dense@0" and spec.control == "none" and Rewind.provides_weights
    assert spec.optimizer_state is False
    with pytest.raises(ValidationError):
        RewindSpec.model_validate({"kind": "rewind", "from": "p"})
    with pytest.raises(ValidationError):
        RewindSpec.model_validate({"kind": "rewind", "from": "p", "to": "d@0", "control": "shuffle"})


def test_none_is_the_init_under_the_pruned_mask(tmp_path, chain):
    outcome, weights, masks = rewind(tmp_path, chain, "ticket")
    init = load_file(str(chain["dense@0"].path))
    pruned_masks = load_file(str(chain["pruned"].masks))
    assert set(masks) == set(MASKED) and all(torch.equal(masks[n], pruned_masks[n]) for n in MASKED)
    for name, w in weights.items():
        assert torch.equal(w, init[name] * masks[name] if name in masks else init[name])
    assert outcome.results["rewind"] == {"to": "dense@0", "control": "none"}
    assert outcome.results["sparsity"]["total"]["remaining"] == sum(int(m.sum()) for m in masks.values())


def test_reinit_is_a_fresh_seeded_init_under_the_mask(tmp_path, chain):
    _, weights, masks = rewind(tmp_path, chain, "a", seed=5, control="reinit")
    _, again, _ = rewind(tmp_path, chain, "b", seed=5, control="reinit")
    _, other, _ = rewind(tmp_path, chain, "c", seed=6, control="reinit")
    fresh = build_model(model_spec(WIDTHS), data_ref().instantiate().prepare(5), reinit_seed(5), torch.device("cpu"))
    init = load_file(str(chain["dense@0"].path))
    for name, w in fresh.state_dict().items():
        assert torch.equal(weights[name], w * masks[name] if name in masks else w)
        assert torch.equal(again[name], weights[name])
    assert not torch.equal(weights["linear1.weight"], other["linear1.weight"])
    # not the ticket itself: the stage seed (inherited from the dense run) would rebuild θ_0
    assert not torch.equal(weights["linear1.weight"], init["linear1.weight"] * masks["linear1.weight"])
    assert reinit_seed(0) != 0


def test_random_mask_keeps_per_layer_counts_with_a_new_seeded_pattern(tmp_path, chain):
    _, weights, masks = rewind(tmp_path, chain, "a", seed=1, control="random_mask")
    _, _, again = rewind(tmp_path, chain, "b", seed=1, control="random_mask")
    _, _, other = rewind(tmp_path, chain, "c", seed=2, control="random_mask")
    pruned_masks = load_file(str(chain["pruned"].masks))
    init = load_file(str(chain["dense@0"].path))
    for n in MASKED:
        assert int(masks[n].sum()) == int(pruned_masks[n].sum()) and set(masks[n].unique().tolist()) <= {0.0, 1.0}
        assert torch.equal(weights[n], init[n] * masks[n])
        assert torch.equal(masks[n], again[n])
    assert any(not torch.equal(masks[n], pruned_masks[n]) for n in MASKED)
    assert any(not torch.equal(masks[n], other[n]) for n in MASKED)


def test_sign_only_is_the_sign_times_the_layers_init_std(tmp_path, chain):
    _, weights, masks = rewind(tmp_path, chain, "s", control="sign_only")
    init = load_file(str(chain["dense@0"].path))
    for name, w in weights.items():
        if name in masks:
            sigma = init[name].double().std(correction=0)
            assert torch.allclose(w.double(), torch.sign(init[name]).double() * sigma * masks[name], rtol=1e-6, atol=0)
            assert bool((w[masks[name] == 0] == 0).all())
            magnitudes = w[masks[name] != 0].abs().unique()  # one constant per layer
            assert magnitudes.numel() == 1 and magnitudes.item() == pytest.approx(float(sigma), rel=1e-6)
        else:
            assert torch.equal(w, init[name])  # biases keep θ_0


def test_a_source_without_masks_is_refused(tmp_path, chain):
    with pytest.raises(StageError, match="has no masks"):
        run_stage("rewind", tmp_path / "x", weights=chain, model=model_spec(WIDTHS), **{"from": "dense", "to": "dense@0"})


def nnopt(*args):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


PIPELINE = """
name: ticket
data: {name: digits, batch_size: 64}
model: {arch: {name: mlp, widths: [24]}}
loss: cross_entropy
stages:
  dense: {kind: train, optimizer: {name: sgd, lr: 0.1}, steps: 20, keep: [0, 5]}
  pruned:
    kind: prune
    from: dense
    method: {name: magnitude, fraction: 0.5, layer_fractions: {output.weight: 0.25}}
  ticket: {kind: rewind, from: pruned, to: dense@0}
  late: {kind: rewind, from: pruned, to: dense@5, control: CONTROL}
  retrain: {kind: train, from: ticket, optimizer: {name: sgd, lr: 0.1}, steps: 20}
"""


def test_cli_train_prune_rewind_train(tmp_path):
    store = str(tmp_path / "store")
    for control in ("none", "reinit", "random_mask", "sign_only"):
        path = tmp_path / f"{control}.yaml"
        path.write_text(PIPELINE.replace("CONTROL", control))
        result = nnopt("run", str(path), "--json", "--store", store)
        assert result.exit_code == 0, result.output
        stages = json.loads(result.stdout)["stages"]
        assert {s["status"] for s in stages.values()} <= {"ran", "cached"}
        assert stages["late"]["status"] == "ran"
    # 64·24 hidden weights at 0.5, 24·10 output weights at 0.25 (on their own): exact
    total = stages["pruned"]["results"]["sparsity"]["total"]
    assert (total["weights"], total["remaining"]) == (64 * 24 + 24 * 10, 64 * 24 // 2 + 24 * 10 - 60)
    ticket = stages["ticket"]["dir"]
    masks = load_file(f"{ticket}/masks.safetensors")
    weights = load_file(f"{ticket}/weights/final.safetensors")
    assert all(bool((weights[n][m == 0] == 0).all()) for n, m in masks.items())
    # `to` is a weight reference: an unkept step is a located spec error, nothing runs
    path = tmp_path / "bad.yaml"
    path.write_text(PIPELINE.replace("CONTROL", "none").replace("dense@5", "dense@7"))
    bad = nnopt("validate", str(path))
    assert bad.exit_code == 2 and "stages.late.to" in bad.output and "does not keep step 7" in bad.output


OPTIMIZER_STATE = """
name: momentum-rewind
data: {name: digits, batch_size: 64}
model: {arch: {name: mlp, widths: [24]}}
loss: cross_entropy
stages:
  dense:
    kind: train
    optimizer: {name: sgd, lr: 0.05, momentum: 0.9}
    param_groups: [{params: [bias], weight_decay: 0.0}]   # another parameter order than the model's
    steps: 12
    keep: [0, 5]
    keep_optimizer: KEEP
  pruned: {kind: prune, from: dense, method: {name: magnitude, fraction: 0.5}}
  late: {kind: rewind, from: pruned, to: dense@5, optimizer_state: true}
  retrain: {kind: train, from: late, optimizer: {name: sgd, lr: 0.05, momentum: 0.9}, steps: 6}
"""


def test_rewinding_the_optimizer_state_masks_the_momentum_kept_at_step_n(tmp_path):
    store = str(tmp_path / "store")
    path = tmp_path / "p.yaml"
    path.write_text(OPTIMIZER_STATE.replace("KEEP", "true"))
    result = nnopt("run", str(path), "--json", "--store", store)
    assert result.exit_code == 0, result.output
    stages = json.loads(result.stdout)["stages"]
    dense, late, retrain = (stages[s]["dir"] for s in ("dense", "late", "retrain"))
    # kept as safetensors + JSON, tensors named by parameter index and state name
    meta = json.loads(open(f"{dense}/optimizer/step_5.json").read())
    kept = load_file(f"{dense}/optimizer/step_5.safetensors")
    assert meta["optimizer"] == "SGD" and len(kept) == len(meta["names"]) == 4
    by_name = {meta["names"][int(k.split(".")[0])]: v for k, v in kept.items()}
    assert all(v.abs().sum() > 0 for v in by_name.values())  # 5 steps of momentum
    # the rewound copy: the kept buffers times the mask (zero where pruned, equal where kept)
    masks = load_file(f"{late}/masks.safetensors")
    rewound_meta = json.loads(open(f"{late}/optimizer/final.json").read())
    rewound = {rewound_meta["names"][int(k.split(".")[0])]: v
               for k, v in load_file(f"{late}/optimizer/final.safetensors").items()}
    for name, buf in rewound.items():
        mask = masks.get(name, torch.ones_like(buf))
        assert torch.equal(buf, by_name[name] * mask)
    # the next train stage starts from it, and says so; pruned weights stay exactly zero
    assert "optimizer state loaded from 'late'" in (stages["retrain"].get("message") or "")
    final = load_file(f"{retrain}/weights/final.safetensors")
    assert all(bool((final[n][m == 0] == 0).all()) for n, m in masks.items())

    # without keep_optimizer there is nothing to rewind: the stage fails with what to set
    path.write_text(OPTIMIZER_STATE.replace("KEEP", "false"))
    result = nnopt("run", str(path), "--json", "--store", store)
    assert result.exit_code != 0
    assert "keep_optimizer: true" in json.loads(result.stdout)["stages"]["late"]["message"]
