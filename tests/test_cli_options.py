"""Options the CLI accepts anywhere on the line: ``--debug``, ``--store`` and ``--json``."""

from __future__ import annotations

import json

import pytest

from nnopt.cli import _subcommand_options_last, main

PIPELINE = """\
name: opts
data: {name: synthetic, task: gaussian_mixture, n_train: 64, n_test: 16, dim: 4, batch_size: 32}
model: {arch: {name: mlp, widths: [4]}}
loss: cross_entropy
stages:
  train: {kind: train, optimizer: sgd, steps: 2}
"""


@pytest.mark.parametrize("args, expected", [
    (["--store", "D", "run", "f"], ["run", "--store", "D", "f"]),
    (["--store=D", "--json", "run", "f", "--force"], ["run", "--store=D", "--json", "f", "--force"]),
    (["--json", "ls"], ["ls", "--json"]),
    (["run", "f", "--store", "D"], ["run", "f", "--store", "D"]),  # after the command: click's own business
    (["--store", "D"], ["--store", "D"]),  # no command: click reports it
])
def test_store_and_json_before_the_command_move_after_it(args, expected):
    assert _subcommand_options_last(args, main.commands) == expected


def test_a_run_with_store_and_json_before_the_command(invoke, write_pipeline, tmp_path):
    path = write_pipeline(PIPELINE)
    store = tmp_path / "elsewhere"
    result = invoke("--store", str(store), "--json", "run", str(path))
    assert result.exit_code == 0, result
    out = json.loads(result.stdout)
    assert out["stages"]["train"]["status"] == "ran" and str(store) in out["stages"]["train"]["dir"]
    listed = invoke("--json", f"--store={store}", "ls")
    assert listed.exit_code == 0, listed
    assert json.loads(listed.stdout)


def test_an_option_a_command_does_not_take_is_a_usage_error(invoke, write_pipeline):
    result = invoke("--json", "validate", str(write_pipeline(PIPELINE)))
    assert result.exit_code == 2 and "--json" in result.stderr


def test_plan_shows_each_models_parameter_count_and_weight_bytes(invoke, write_pipeline, tmp_path):
    """MLP 4 -> 4 -> 2 classes (gaussian_mixture's default): (4·4 + 4) + (4·C + C) parameters."""
    path = write_pipeline(PIPELINE)
    result = invoke("plan", str(path), "--json", "--store", str(tmp_path / "s"))
    assert result.exit_code == 0, result
    (train,) = json.loads(result.stdout)["stages"]
    out = json.loads(invoke("run", str(path), "--json", "--store", str(tmp_path / "s")).stdout)
    from safetensors.torch import load_file

    weights = load_file(f"{out['stages']['train']['dir']}/weights/final.safetensors")
    assert train["parameters"] == sum(t.numel() for t in weights.values())
    assert train["weight_bytes"] == sum(t.numel() * t.element_size() for t in weights.values())
    text = invoke("plan", str(path), "--store", str(tmp_path / "s")).stdout
    assert f"{train['parameters']:,} params" in text
