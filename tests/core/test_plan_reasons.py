"""`nnopt plan` says, for each stage, `cached` or why it will run.

The reasons: `new` (no earlier run of the pipeline had the stage), `key changed: <what>`
(against the key the latest run of the same pipeline recorded for that stage, the two key
payloads compared), `damaged: <artifact>`, and `incomplete` (a checkpoint to resume from).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from conftest import TINY

from nnopt.core.keys import digest

CHECKPOINTED = TINY.replace("    epochs: 1\n    keep: [0]\n", "    epochs: 3\n    keep: [0]\n    checkpoint_every: 10\n")


def reasons(cli, path: str, *sets: str) -> dict[str, str]:
    result = cli("plan", path, "--json", *(a for s in sets for a in ("--set", s)))
    assert result.exit_code == 0, result.stderr
    stages = json.loads(result.stdout)["stages"]
    for s in stages:  # every field plan --json had before reasons, still there and consistent
        assert set(s) >= {"id", "kind", "key", "cached", "from", "reason"}
        assert s["cached"] == (s["reason"] == "cached")
    return {s["id"]: s["reason"] for s in stages}


def test_a_pipeline_never_run_is_new_and_one_just_run_is_cached(cli, pipeline):
    path = pipeline()
    assert reasons(cli, path) == {"train": "new", "probe": "new"}
    cli.run_json(path)
    assert reasons(cli, path) == {"train": "cached", "probe": "cached"}


def test_a_stage_added_since_the_last_run_is_new(cli, pipeline):
    cli.run_json(pipeline())
    grown = TINY + "  again:\n    kind: analyze\n    from: train\n    analyzers: [{name: grad_norms, source: train, samples: 64}]\n"
    assert reasons(cli, pipeline(grown)) == {"train": "cached", "probe": "cached", "again": "new"}


def test_a_changed_key_names_what_changed(cli, pipeline):
    path = pipeline()
    cli.run_json(path)
    assert reasons(cli, path, "stages.train.optimizer.lr=0.05") == {
        "train": "key changed: spec.optimizer.lr 0.1 -> 0.05",
        "probe": "key changed: train changed",  # it reads train's weights, now of another key
    }
    assert reasons(cli, path, "seed=1") == {"train": "key changed: seed 0 -> 1", "probe": "key changed: seed 0 -> 1, train changed"}
    assert reasons(cli, path, "stages.probe.analyzers.0.samples=64")["probe"] == "key changed: spec.analyzers.0.samples 256 -> 64"


def test_at_most_three_changes_are_named(cli, pipeline):
    path = pipeline()
    cli.run_json(path)
    train = reasons(cli, path, "stages.train.optimizer.lr=0.05", "stages.train.optimizer.momentum=0.5", "seed=1",
                    "data.batch_size=64")["train"]
    assert train.startswith("key changed: ") and train.endswith(", and 1 more")
    assert len(train.removeprefix("key changed: ").split(", ")) == 4


def test_a_changed_key_compares_with_the_latest_run_of_the_pipeline(cli, pipeline):
    path = pipeline()
    cli.run_json(path)
    cli.run_json(path, "--set", "stages.train.optimizer.lr=0.05")
    assert reasons(cli, path, "stages.train.optimizer.lr=0.2")["train"] == "key changed: spec.optimizer.lr 0.05 -> 0.2"


def test_an_edit_of_a_components_code_is_named(cli, pipeline, monkeypatch):
    import nnopt.core.keys as keys
    from nnopt.plugins.optimizers.sgd import SGD

    path = pipeline()
    cli.run_json(path)
    real = keys.code_digest
    monkeypatch.setattr(keys, "code_digest", lambda cls: digest("edited") if cls is SGD else real(cls))
    assert reasons(cli, path) == {"train": "key changed: code of optimizers/sgd", "probe": "key changed: train changed"}


def test_the_manifest_keeps_the_payload_that_was_hashed_into_the_key(cli, pipeline):
    _, out = cli.run_json(pipeline())
    used = {"train": {"stages/train", "optimizers/sgd", "datasets/digits", "architectures/mlp"},
            "probe": {"stages/analyze", "analyzers/grad_norms"}}
    for sid, stage in out["stages"].items():
        manifest = json.loads((Path(stage["dir"]) / "manifest.json").read_text())
        assert digest(manifest["key_payload"]) == stage["key"] == manifest["key"]
        assert set(manifest["key_payload"]["code"]) >= used[sid]  # a source digest per component used


def test_a_damaged_stage_is_named_with_its_damaged_file(cli, pipeline):
    path = pipeline()
    _, out = cli.run_json(path)
    weights = Path(out["stages"]["train"]["dir"]) / "weights" / "final.safetensors"
    with open(weights, "r+b") as f:
        first = f.read(1)
        f.seek(0)
        f.write(bytes([first[0] ^ 0xFF]))
    assert reasons(cli, path) == {"train": "damaged: weights/final.safetensors", "probe": "cached"}


def test_a_stage_with_a_checkpoint_left_by_a_killed_run_is_incomplete(cli, pipeline, monkeypatch):
    from nnopt.core.stage import StageContext

    path = pipeline(CHECKPOINTED)
    saved = StageContext.save_checkpoint

    def killed(self, state):
        saved(self, state)
        raise KeyboardInterrupt  # as if the process were killed right after its first checkpoint

    with monkeypatch.context() as patch:
        patch.setattr(StageContext, "save_checkpoint", killed)
        assert cli("run", path).exit_code == 130
    assert reasons(cli, path)["train"] == "incomplete"


def test_the_text_output_says_to_run_and_why(cli, pipeline):
    path = pipeline()
    cli.run_json(path)
    result = cli("plan", path, "--set", "stages.train.optimizer.lr=0.05")
    assert result.exit_code == 0, result.stderr
    train, probe = (line for line in result.stdout.splitlines() if line.startswith("  "))
    assert train.split()[:2] == ["train", "train"] and train.endswith("to run (key changed: spec.optimizer.lr 0.1 -> 0.05)")
    assert probe.endswith("to run (key changed: train changed)  <- train")
    assert cli("plan", path).stdout.count("cached") == 2
    assert len(os.listdir(cli.store / "runs")) == 1  # the run above: plan ran nothing
