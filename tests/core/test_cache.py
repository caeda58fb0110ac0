"""Stage keys and the store: equal keys mean equal results; any change of input, a new key."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import TINY

from nnopt.core.planner import load_plans


def keys(path: str, *sets: str) -> dict[str, str]:
    (plan,) = load_plans(path, list(sets))
    return {s.id: s.key for s in plan.stages}


def test_second_run_reports_every_stage_cached(cli, pipeline):
    path = pipeline()
    first, out1 = cli.run_json(path)
    assert first.exit_code == 0, first.stderr
    assert {s["status"] for s in out1["stages"].values()} == {"ran"}
    second, out2 = cli.run_json(path)
    assert second.exit_code == 0
    assert {s["status"] for s in out2["stages"].values()} == {"cached"}
    assert out2["stages"]["train"]["key"] == out1["stages"]["train"]["key"]
    assert out2["stages"]["train"]["metrics"] == out1["stages"]["train"]["metrics"]


def test_keys_are_computed_before_running_and_stable(pipeline):
    path = pipeline()
    assert keys(path) == keys(path)
    assert all(len(k) == 64 for k in keys(path).values())


@pytest.mark.parametrize(
    "override, changes",
    [
        ("stages.train.optimizer.lr=0.05", {"train", "probe"}),
        ("stages.train.optimizer.momentum=0.5", {"train", "probe"}),
        ("stages.train.schedule=cosine", {"train", "probe"}),
        ("stages.train.epochs=2", {"train", "probe"}),
        ("seed=1", {"train", "probe"}),
        ("data.batch_size=64", {"train", "probe"}),
        ("model.arch.widths=[16]", {"train", "probe"}),
        ("model.arch.activation=tanh", {"train", "probe"}),
        ("model.init=kaiming_normal", {"train", "probe"}),
        ("loss=mse", {"train", "probe"}),
        ("stages.probe.analyzers.0.samples=128", {"probe"}),
        ("stages.probe.seed=3", {"probe"}),
        ("stages.train.log_every=5", set()),  # progress/logging options are not in the key
        ("stages.train.optimizer.weight_decay=0.0", set()),  # a default written out is the same spec
    ],
)
def test_which_keys_change(pipeline, override, changes):
    path = pipeline()
    before, after = keys(path), keys(path, override)
    assert {s for s in before if before[s] != after[s]} == changes


def test_component_cache_version_is_part_of_the_key(pipeline, monkeypatch):
    from nnopt.plugins.optimizers.sgd import SGD

    path = pipeline()
    before = keys(path)
    monkeypatch.setattr(SGD, "cache_version", SGD.cache_version + 1)
    after = keys(path)
    assert before["train"] != after["train"] and before["probe"] != after["probe"]


def test_a_digest_of_each_components_source_is_part_of_the_key(pipeline, monkeypatch):
    import nnopt.core.keys as keys_module
    from nnopt.core.keys import digest
    from nnopt.plugins.analyzers.grad_norms import GradNorms

    path = pipeline()
    before = keys(path)
    real = keys_module.code_digest
    # as if grad_norms.py had been edited with its cache_version left as it was
    monkeypatch.setattr(keys_module, "code_digest", lambda cls: digest("edited") if cls is GradNorms else real(cls))
    after = keys(path)
    assert before["probe"] != after["probe"]
    assert before["train"] == after["train"]  # train uses no grad_norms: its key stays


def test_the_version_of_the_distribution_providing_a_component_is_part_of_the_key(pipeline, monkeypatch):
    from nnopt.core.registry import Entry

    path = pipeline()
    before = keys(path)
    monkeypatch.setattr(Entry, "provider", property(lambda e: f"{e.dist} 99.0"))
    after = keys(path)
    assert before["train"] != after["train"] and before["probe"] != after["probe"]


def test_key_does_not_depend_on_the_file_layout(pipeline):
    reordered = TINY.replace("optimizer: {name: sgd, lr: 0.1, momentum: 0.9}", "optimizer:\n      momentum: 0.9\n      lr: 1e-1\n      name: sgd")
    assert keys(pipeline()) == keys(pipeline(reordered, "other.yaml"))


def test_stage_directory_holds_the_documented_files(cli, pipeline):
    _, out = cli.run_json(pipeline())
    train = Path(out["stages"]["train"]["dir"])
    for name in ("spec.json", "result.json", "metrics.jsonl", "manifest.json", "weights/final.safetensors",
                 "weights/step_0.safetensors", "plots/loss.png"):
        assert (train / name).is_file(), name
    manifest = json.loads((train / "manifest.json").read_text())
    assert manifest["key"] == out["stages"]["train"]["key"]
    for field in ("spec", "command", "nnopt", "providers", "torch", "device", "seed", "determinism", "started", "ended"):
        assert field in manifest, field
    assert manifest["providers"]["optimizers/sgd"].startswith("nnopt ")
    import hashlib

    for rel, digest in manifest["artifacts"].items():
        assert hashlib.sha256((train / rel).read_bytes()).hexdigest() == digest
    spec = json.loads((train / "spec.json").read_text())
    assert spec["optimizer"]["nesterov"] is False  # defaults included
    lines = [json.loads(line) for line in (train / "metrics.jsonl").read_text().splitlines()]
    assert any("loss" in line for line in lines)


def test_weights_are_safetensors_not_pickle(cli, pipeline):
    from safetensors.torch import load_file

    _, out = cli.run_json(pipeline())
    state = load_file(str(Path(out["stages"]["train"]["dir"]) / "weights/final.safetensors"))
    assert any(k.endswith("weight") for k in state)


def test_force_recomputes_every_stage_and_redo_one_and_its_dependents(cli, pipeline):
    path = pipeline()
    cli.run_json(path)
    _, forced = cli.run_json(path, "--force")
    assert {s["status"] for s in forced["stages"].values()} == {"ran"}
    _, redo = cli.run_json(path, "--redo", "probe")
    assert redo["stages"]["train"]["status"] == "cached" and redo["stages"]["probe"]["status"] == "ran"
    _, redo = cli.run_json(path, "--redo", "train")
    assert redo["stages"]["train"]["status"] == "ran" and redo["stages"]["probe"]["status"] == "ran"


def test_redo_of_an_unknown_stage_is_a_command_line_error(cli, pipeline):
    result = cli("run", pipeline(), "--redo", "trian")
    assert result.exit_code == 2
    assert "did you mean 'train'" in result.stderr


def test_same_spec_gives_the_same_bits_on_cpu(cli, pipeline, tmp_path):
    from nnopt.cli import main
    from click.testing import CliRunner

    path = pipeline()
    _, a = cli.run_json(path)
    other = CliRunner().invoke(main, ["run", path, "--json", "--store", str(tmp_path / "other")])
    b = json.loads(other.stdout)
    assert a["stages"]["train"]["key"] == b["stages"]["train"]["key"]
    fa = Path(a["stages"]["train"]["dir"]) / "weights/final.safetensors"
    fb = Path(b["stages"]["train"]["dir"]) / "weights/final.safetensors"
    assert fa.read_bytes() == fb.read_bytes()
    assert a["stages"]["train"]["metrics"]["test_loss"] == b["stages"]["train"]["metrics"]["test_loss"]


def test_plan_shows_keys_and_what_is_cached_without_running(cli, pipeline):
    path = pipeline()
    before = cli("plan", path, "--json")
    assert before.exit_code == 0
    stages = json.loads(before.stdout)["stages"]
    assert [s["cached"] for s in stages] == [False, False]
    assert not (cli.store / "stages").exists()
    cli.run_json(path)
    after = json.loads(cli("plan", path, "--json").stdout)["stages"]
    assert [s["cached"] for s in after] == [True, True]
    assert [s["key"] for s in after] == [s["key"] for s in stages]
