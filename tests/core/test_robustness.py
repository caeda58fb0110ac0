"""Robustness: behaviours a QA pass found broken, specified so that they stay fixed.

Each test names the behaviour it specifies. Pipelines are tiny (a few optimizer steps on a
small synthetic problem, or ``TINY``); subprocesses are used only where a separate process,
working directory or ``PYTHONPATH`` is the point.
"""

from __future__ import annotations

import json
import os
import re
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import SIGNSGD, TINY, statuses

#: a train stage of 4 steps on a 128-sample Gaussian mixture: a fraction of a second
SMALL = """\
name: small
seed: 0
data: {name: synthetic, task: gaussian_mixture, n_train: 128, n_test: 64, dim: 8, batch_size: 32}
model:
  arch: {name: mlp, widths: [16], activation: relu}
loss: cross_entropy
stages:
  train:
    kind: train
    optimizer: {name: sgd, lr: 0.1}
    steps: 4
"""
#   1 name   2 seed   3 data   4 model:   5 arch   6 loss   7 stages:   8 train:   9 kind
#  10 optimizer   11 steps


def no_crash(result) -> None:
    """No traceback and no 'internal error': every failure is a located, one-line message."""
    assert "Traceback" not in result.stderr, result.stderr
    assert "internal error" not in result.stderr, result.stderr


def edit(text: str, *pairs: str) -> str:
    """``text`` with each ``old`` replaced by ``new``; every ``old`` must occur exactly once."""
    for old, new in zip(pairs[::2], pairs[1::2]):
        assert text.count(old) == 1, f"{old!r} occurs {text.count(old)} times"
        text = text.replace(old, new)
    return text


def run_records(store: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((store / "runs").glob("*.json"))]


# ------------------------------------------------------------------ 1. `from` with its own model
FROM_OWN_MODEL = SMALL + """\
  c:
    kind: train
    from: train
    model:
      arch: {name: mlp, widths: [16], activation: relu}
    optimizer: {name: sgd, lr: 0.1}
    steps: 4
"""


def test_a_stage_starting_from_another_reads_its_weights_into_its_own_model(cli, pipeline):
    path = pipeline(FROM_OWN_MODEL)
    relu, relu_out = cli.run_json(path)
    assert relu.exit_code == 0, relu.stderr
    tanh, tanh_out = cli.run_json(path, "--set", "stages.c.model.arch.activation=tanh")
    assert tanh.exit_code == 0, tanh.stderr
    assert statuses(tanh_out) == {"train": "cached", "c": "ran"}
    spec = json.loads((Path(tanh_out["stages"]["c"]["dir"]) / "spec.json").read_text())
    assert spec["model"]["arch"]["activation"]["name"] == "tanh"
    # the same weights through tanh instead of relu: other numbers
    assert tanh_out["stages"]["c"]["metrics"]["test_loss"] != relu_out["stages"]["c"]["metrics"]["test_loss"]
    assert tanh_out["stages"]["c"]["metrics"]["train_loss"] != relu_out["stages"]["c"]["metrics"]["train_loss"]


def test_weights_that_do_not_fit_the_stages_own_model_fail_the_stage_in_one_line(cli, pipeline):
    result, out = cli.run_json(pipeline(FROM_OWN_MODEL), "--set", "stages.c.model.arch.widths=[8]")
    assert result.exit_code == 1
    no_crash(result)
    assert statuses(out) == {"train": "ran", "c": "failed"}
    message = out["stages"]["c"]["message"]
    assert "do not fit" in message
    assert "\n" not in message  # not torch's multi-line dump of every mismatching tensor


# ------------------------------------------------------------------ 2. plan index and plugin code
def test_the_fast_cached_path_notices_an_edit_of_a_components_code(run_cli, editable_demo, tmp_path):
    package, env = editable_demo
    path = tmp_path / "signsgd.yaml"
    path.write_text(SIGNSGD)
    store = tmp_path / "store"

    def run() -> dict:
        result = run_cli("run", path, "--store", store, "--json", env=env)
        assert result.returncode == 0, result
        return json.loads(result.stdout)

    first = run()
    assert statuses(first) == {"train": "ran"}
    assert statuses(run()) == {"train": "cached"}
    module = package / "signsgd.py"
    module.write_text(edit(module.read_text(), "cache_version: ClassVar[int] = 1",
                           "cache_version: ClassVar[int] = 2  # the update rule changed"))
    third = run()
    assert statuses(third) == {"train": "ran"}
    assert third["stages"]["train"]["key"] != first["stages"]["train"]["key"]


# ------------------------------------------------------------------ 3. relative data paths
def test_a_relative_data_path_is_read_from_the_working_directory(run_cli, tmp_path):
    import numpy as np

    dirs = {}
    for name, shift in (("a", 0.0), ("b", 2.0)):
        d = dirs[name] = tmp_path / name
        d.mkdir()
        x = np.random.default_rng(0).normal(size=(32, 4)).astype("float32") + shift
        y = (x[:, 0] > shift).astype("int64")
        np.savez(d / "data.npz", x_train=x, y_train=y, x_test=x, y_test=y)
    same = time.time() - 100
    for d in dirs.values():
        os.utime(d / "data.npz", (same, same))
    a, b = (os.stat(d / "data.npz") for d in dirs.values())
    assert (a.st_size, a.st_mtime_ns) == (b.st_size, b.st_mtime_ns)  # only the contents differ

    path = tmp_path / "rel.yaml"
    path.write_text(edit(SMALL, "{name: synthetic, task: gaussian_mixture, n_train: 128, n_test: 64, dim: 8, batch_size: 32}",
                         "{name: npz, path: data.npz, batch_size: 16}"))
    store = tmp_path / "store"
    from_b = run_cli("run", path, "--store", store, "--json", cwd=dirs["b"])
    assert from_b.returncode == 0, from_b
    from_a = run_cli("run", path, "--store", store, "--json", cwd=dirs["a"])
    assert from_a.returncode == 0, from_a
    out_b, out_a = json.loads(from_b.stdout), json.loads(from_a.stdout)
    assert out_a["stages"]["train"]["key"] != out_b["stages"]["train"]["key"]
    assert statuses(out_a) == {"train": "ran"}  # not B's result reported as cached


# ------------------------------------------------------------------ 4. run records
def test_a_run_is_recorded_as_running_before_its_first_stage_runs(cli, pipeline, monkeypatch):
    from nnopt.plugins.stages.train import Train

    original = Train.run
    seen = {}

    def look_first(self, ctx):
        listed = cli("ls", "--json")
        seen["ls"] = [r["status"] for r in json.loads(listed.stdout)]
        seen["files"] = [(r["status"], r["process"]["pid"]) for r in run_records(cli.store)]
        return original(self, ctx)

    monkeypatch.setattr(Train, "run", look_first)
    result = cli("run", pipeline(SMALL))
    assert result.exit_code == 0, result.stderr
    assert seen == {"ls": ["running"], "files": [("running", os.getpid())]}
    assert [r["status"] for r in json.loads(cli("ls", "--json").stdout)] == ["ok"]


def test_gc_keep_last_0_removes_neither_a_live_runs_record_nor_its_finished_stages(cli, pipeline, monkeypatch):
    from nnopt.plugins.stages.analyze import Analyze

    original = Analyze.run
    seen = {}

    def gc_while_probing(self, ctx):  # another shell runs `nnopt gc --keep-last 0` meanwhile
        gc = cli("gc", "--keep-last", "0")
        assert gc.exit_code == 0, gc.stderr
        seen["records"] = [r["status"] for r in run_records(cli.store)]
        seen["train_kept"] = ctx.load_model("train") is not None
        return original(self, ctx)

    monkeypatch.setattr(Analyze, "run", gc_while_probing)
    result, out = cli.run_json(pipeline())
    assert result.exit_code == 0, result.stderr
    assert seen == {"records": ["running"], "train_kept": True}
    assert statuses(out) == {"train": "ran", "probe": "ran"}
    assert Path(out["stages"]["train"]["dir"]).is_dir()
    assert [r["run"] for r in run_records(cli.store)] == [out["run"]]


def test_a_running_record_of_a_process_that_no_longer_exists_is_listed_as_stopped(cli):
    dead = 2**22 + 12345  # above this host's pid_max: no process has it
    with pytest.raises(ProcessLookupError):
        os.kill(dead, 0)
    (cli.store / "runs").mkdir(parents=True)
    record = {"run": "tiny-20240101-000000-abcdef", "pipeline": "tiny", "status": "running",
              "process": {"pid": dead, "host": socket.gethostname()},
              "stages": {"train": {"key": "ab" * 32, "status": "pending"}}, "started": time.time() - 60}
    (cli.store / "runs" / f"{record['run']}.json").write_text(json.dumps(record))
    result = cli("ls", "--json")
    assert result.exit_code == 0, result.stderr
    assert [([c["run"] for c in e["runs"]], e["status"]) for e in json.loads(result.stdout)] == [([record["run"]], "stopped")]


def test_a_run_refused_with_no_wait_is_recorded_busy_not_running(cli, pipeline):
    from filelock import FileLock

    from nnopt.core.planner import load_plans

    path = pipeline(SMALL)
    (plan,) = load_plans(path)
    (cli.store / "locks").mkdir(parents=True)
    with FileLock(str(cli.store / "locks" / f"{plan.stages[0].key}.lock")):
        result = cli("run", path, "--no-wait")
    assert result.exit_code == 75
    assert [r["status"] for r in run_records(cli.store)] == ["busy"]
    assert [r["status"] for r in json.loads(cli("ls", "--json").stdout)] == ["busy"]


# ------------------------------------------------------------------ 5. a damaged store
def test_a_stage_with_a_corrupt_result_json_is_computed_again(cli, pipeline):
    path = pipeline(SMALL)
    _, first = cli.run_json(path)
    (Path(first["stages"]["train"]["dir"]) / "result.json").write_text("{bad")
    result, again = cli.run_json(path)
    assert result.exit_code == 0, result.stderr
    assert statuses(again) == {"train": "ran"}
    assert again["stages"]["train"]["key"] == first["stages"]["train"]["key"]
    assert json.loads((Path(again["stages"]["train"]["dir"]) / "result.json").read_text())["status"] == "ok"


def test_show_of_a_damaged_stage_says_damaged(cli, pipeline):
    _, out = cli.run_json(pipeline(SMALL))
    (Path(out["stages"]["train"]["dir"]) / "result.json").write_text("{bad")
    result = cli("show", out["stages"]["train"]["key"][:10])
    assert result.exit_code == 0, result.stderr
    no_crash(result)
    assert "damaged" in result.stdout


def test_a_stage_missing_a_weights_file_of_its_manifest_is_computed_again(cli, pipeline):
    path = pipeline(SMALL)
    _, first = cli.run_json(path)
    stage_dir = Path(first["stages"]["train"]["dir"])
    assert "weights/final.safetensors" in json.loads((stage_dir / "manifest.json").read_text())["artifacts"]
    (stage_dir / "weights" / "final.safetensors").unlink()
    result, again = cli.run_json(path)
    assert result.exit_code == 0, result.stderr
    assert statuses(again) == {"train": "ran"}
    assert (stage_dir / "weights" / "final.safetensors").is_file()


@pytest.mark.parametrize("content", ['{"pipeline": "x"}', "{bad"], ids=["not-a-record", "not-json"])
def test_gc_refuses_to_remove_anything_while_a_run_record_is_unreadable(cli, pipeline, content):
    _, out = cli.run_json(pipeline(SMALL))
    broken = cli.store / "runs" / "broken-record.json"
    broken.write_text(content)
    before = sorted(p.relative_to(cli.store) for p in cli.store.rglob("*"))
    result = cli("gc", "--keep-last", "0")
    assert result.exit_code == 1
    no_crash(result)
    assert "broken-record.json" in result.stderr
    assert sorted(p.relative_to(cli.store) for p in cli.store.rglob("*")) == before
    assert Path(out["stages"]["train"]["dir"]).is_dir()
    listed = cli("ls")
    assert listed.exit_code == 0, listed.stderr
    assert out["run"] in listed.stdout


# ------------------------------------------------------------------ 6. strict values
def diagnostics(result) -> list[str]:
    """The diagnostic lines of stderr (without the closing 'N errors; nothing was run')."""
    return [line for line in result.stderr.splitlines() if not re.match(r"\d+ errors?; nothing was run", line)]


@pytest.mark.parametrize("old, new, line, dotted, word", [
    ("lr: 0.1", "lr: true", 10, "stages.train.optimizer.lr", "number"),
    ("steps: 4", "steps: true", 11, "stages.train.steps", "integer"),
], ids=["lr", "steps"])
def test_a_boolean_is_not_a_number(cli, pipeline, old, new, line, dotted, word):
    path = pipeline(edit(SMALL, old, new))
    result = cli("run", path)
    assert result.exit_code == 2
    no_crash(result)
    (diag,) = diagnostics(result)
    assert re.match(rf"{re.escape(path)}:{line}:\d+: {re.escape(dotted)}: ", diag), diag
    assert word in diag
    assert not cli.store.exists()


@pytest.mark.parametrize("setting, dotted, word", [
    ("stages.train.optimizer.lr=1e400", "stages.train.optimizer.lr", "finite"),
    ("seed=99999999999999999999999", "seed", ""),
], ids=["infinite-lr", "huge-seed"])
def test_an_out_of_range_set_value_is_a_located_spec_error(cli, pipeline, setting, dotted, word):
    result = cli("run", pipeline(SMALL), "--set", setting)
    assert result.exit_code == 2
    no_crash(result)
    (diag,) = diagnostics(result)
    assert diag.startswith(f"--set {setting}: {dotted}: "), diag
    assert word in diag
    assert not cli.store.exists()


def test_a_file_that_is_not_utf8_is_a_located_spec_error(cli, tmp_path):
    path = tmp_path / "latin1.yaml"
    path.write_bytes(b"name: x\xff\nstages: {}\n")
    result = cli("run", str(path))
    assert result.exit_code == 2
    no_crash(result)
    (diag,) = diagnostics(result)
    assert diag.startswith(f"{path}:1:8: <root>: not valid UTF-8"), diag


def test_an_empty_file_is_located_at_its_first_line(cli, tmp_path):
    path = tmp_path / "empty.yaml"
    path.write_text("")
    result = cli("run", str(path))
    assert result.exit_code == 2
    no_crash(result)
    (diag,) = diagnostics(result)
    assert diag.startswith(f"{path}:1:1: "), diag


# ------------------------------------------------------------------ 7. --set creating keys
def test_a_set_that_creates_nested_keys_is_where_their_errors_are_located(cli, pipeline):
    setting = "stages.train.schedule.min_lr_fraction=2"
    result = cli("run", pipeline(SMALL), "--set", setting)
    assert result.exit_code == 2
    no_crash(result)
    lines = diagnostics(result)
    assert lines and all(line.startswith(f"--set {setting}: ") for line in lines), lines


def test_a_set_into_a_list_item_is_located_at_the_set_with_an_indexed_path(cli, pipeline):
    path = pipeline(SMALL + "    track: [{name: grad_norms, every: 2}]\n")
    assert cli("validate", path, store=False).exit_code == 0
    setting = "stages.train.track.0.every=0"
    result = cli("run", path, "--set", setting)
    assert result.exit_code == 2
    no_crash(result)
    (diag,) = diagnostics(result)
    assert diag.startswith(f"--set {setting}: stages.train.track[0].every: "), diag


# ------------------------------------------------------------------ 8. all errors at once
def test_a_cycle_and_an_unknown_component_elsewhere_are_reported_together(cli, pipeline):
    text = edit(SMALL, "    steps: 4\n", """\
    steps: 4
  a:
    kind: train
    from: b
    optimizer: sgd
    steps: 2
  b:
    kind: train
    from: a
    optimizer: sgd
    steps: 2
""", "optimizer: {name: sgd, lr: 0.1}", "optimizer: {name: sgdd, lr: 0.1}")
    path = pipeline(text)
    result = cli("run", path)
    assert result.exit_code == 2
    no_crash(result)
    lines = diagnostics(result)
    assert len(lines) == 2, lines
    assert any("cycle" in line for line in lines), lines
    assert any(line.startswith(f"{path}:10:") and "stages.train.optimizer" in line and "sgdd" in line for line in lines), lines
    assert "2 errors; nothing was run" in result.stderr


# ------------------------------------------------------------------ 9. keys that must not change
def plan_keys(cli, path: str, *args: str) -> dict[str, str]:
    result = cli("plan", path, "--json", *args)
    assert result.exit_code == 0, result.stderr
    return {s["id"]: s["key"] for s in json.loads(result.stdout)["stages"]}


def test_keep_is_a_set_of_steps_for_the_key(cli, pipeline):
    a = plan_keys(cli, pipeline(edit(TINY, "keep: [0]", "keep: [10, 0, 0]"), "a.yaml"))
    b = plan_keys(cli, pipeline(edit(TINY, "keep: [0]", "keep: [0, 10]"), "b.yaml"))
    assert a["train"] == b["train"]


def test_renaming_a_stage_changes_no_key(cli, pipeline):
    before = plan_keys(cli, pipeline(TINY, "a.yaml"))
    renamed = plan_keys(cli, pipeline(edit(TINY, "  train:\n", "  fit:\n", "from: train", "from: fit"), "b.yaml"))
    assert renamed == {"fit": before["train"], "probe": before["probe"]}


def test_a_top_level_x_key_holds_a_yaml_anchor_for_reuse(cli, pipeline):
    text = "x-common: &opt {name: sgd, lr: 0.1}\n" + edit(SMALL, "optimizer: {name: sgd, lr: 0.1}", "optimizer: *opt")
    anchored = plan_keys(cli, pipeline(text, "anchored.yaml"))
    assert anchored == plan_keys(cli, pipeline(SMALL, "inline.yaml"))


# ------------------------------------------------------------------ 10. stage order
def test_show_lists_a_runs_stages_in_pipeline_order(cli, pipeline):
    text = edit(TINY, "  train:\n", "  zeta:\n", "  probe:\n", "  alpha:\n", "from: train", "from: zeta")
    _, out = cli.run_json(pipeline(text))
    assert list(out["stages"]) == ["zeta", "alpha"]
    shown = cli("show", out["run"], "--json")
    assert shown.exit_code == 0, shown.stderr
    assert list(json.loads(shown.stdout)["stages"]) == ["zeta", "alpha"]


# ------------------------------------------------------------------ 11. matrix report
def test_the_report_of_a_matrix_pipeline_shows_every_combination(cli, pipeline):
    path = pipeline(SMALL + "matrix:\n  stages.train.optimizer.lr: [0.05, 0.2]\n")
    result, out = cli.run_json(path)
    assert result.exit_code == 0, result.stderr
    assert [r["params"] for r in out["runs"]] == [{"stages.train.optimizer.lr": 0.05}, {"stages.train.optimizer.lr": 0.2}]
    report = cli("report", path)
    assert report.exit_code == 0, report.stderr
    html = Path(report.stdout.strip()).read_text()
    for run in out["runs"]:
        assert run["run"] in html
    assert "0.05" in html and "0.2" in html


# ------------------------------------------------------------------ 12. refs in messages
@pytest.mark.parametrize("ref", ["../../etc/passwd", "latest/nope"])
def test_show_of_a_bad_ref_names_the_ref_as_written(cli, pipeline, ref):
    cli.run_json(pipeline(SMALL))
    result = cli("show", ref)
    assert result.exit_code == 2
    no_crash(result)
    assert result.stderr.startswith(f"REF {ref}: "), result.stderr


# ------------------------------------------------------------------ 13. file modes
def test_files_in_the_store_get_the_mode_open_would_give_not_a_private_one(cli, pipeline):
    # mkstemp creates 0600 files; the store's files must get 0666 & ~umask, as open() gives
    umask = os.umask(0)
    os.umask(umask)
    expected = 0o666 & ~umask
    path = pipeline(SMALL)
    _, out = cli.run_json(path)
    report = cli("report", path)
    assert report.exit_code == 0, report.stderr
    stage_dir = Path(out["stages"]["train"]["dir"])
    files = [stage_dir / "result.json", stage_dir / "manifest.json", stage_dir / "spec.json",
             *(cli.store / "runs").glob("*.json"), Path(report.stdout.strip())]
    for f in files:
        assert stat.S_IMODE(f.stat().st_mode) == expected, f"{f}: {stat.S_IMODE(f.stat().st_mode):o}"


# ------------------------------------------------------------------ 14. metrics.jsonl
def test_every_stage_directory_has_a_metrics_jsonl(cli, pipeline):
    _, out = cli.run_json(pipeline())
    assert statuses(out) == {"train": "ran", "probe": "ran"}
    for sid, stage in out["stages"].items():
        metrics = Path(stage["dir"]) / "metrics.jsonl"
        assert metrics.is_file(), sid
        assert "metrics.jsonl" in json.loads((Path(stage["dir"]) / "manifest.json").read_text())["artifacts"], sid


# ------------------------------------------------------------------ 15. --json on failure
def test_run_json_prints_one_object_when_the_spec_is_invalid(cli, pipeline):
    result, out = cli.run_json(pipeline(edit(SMALL, "name: sgd", "name: sgdd")))
    assert result.exit_code == 2
    assert out["status"] == "invalid"
    (error,) = out["errors"]
    assert error["line"] == 10 and error["path"] == "stages.train.optimizer" and error["suggestion"] == "sgd"


def test_run_json_prints_one_object_when_a_stage_is_busy(cli, pipeline):
    from filelock import FileLock

    from nnopt.core.planner import load_plans

    path = pipeline(SMALL)
    (plan,) = load_plans(path)
    (cli.store / "locks").mkdir(parents=True)
    with FileLock(str(cli.store / "locks" / f"{plan.stages[0].key}.lock")):
        result, out = cli.run_json(path, "--no-wait")
    assert result.exit_code == 75
    assert out["status"] == "busy"


# ------------------------------------------------------------------ 16. a closed pipe
@pytest.mark.parametrize("reader", ["head -1", "true"])
def test_a_reader_closing_the_pipe_early_causes_no_error(reader):
    done = subprocess.run(f"{sys.executable} -m nnopt list | {reader}", shell=True, capture_output=True, text=True, timeout=120)
    assert "internal error" not in done.stderr and "Traceback" not in done.stderr, done.stderr
    assert "BrokenPipeError" not in done.stderr, done.stderr


# ------------------------------------------------------------------ 17. loss and task
def test_a_classification_loss_on_regression_data_fails_the_stage(cli, pipeline):
    text = edit(SMALL, "task: gaussian_mixture, n_train: 128, n_test: 64, dim: 8",
                "task: least_squares, n_train: 64, n_test: 32, dim: 4")
    result, out = cli.run_json(pipeline(text))
    assert result.exit_code == 1
    no_crash(result)
    assert statuses(out) == {"train": "failed"}
    message = out["stages"]["train"]["message"]
    assert "cross_entropy" in message and "regression" in message


# ------------------------------------------------------------------ 18. device
def test_device_cuda_without_a_gpu_is_a_spec_error_at_device(cli, pipeline):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    path = pipeline(edit(SMALL, "seed: 0\n", "seed: 0\ndevice: cuda\n"))
    result = cli("run", path)
    assert result.exit_code == 2
    no_crash(result)
    (diag,) = diagnostics(result)
    assert re.match(rf"{re.escape(path)}:3:\d+: device: ", diag), diag
    assert not cli.store.exists()


# ------------------------------------------------------------------ 19. --store
@pytest.mark.parametrize("command", ["run", "plan", "show", "ls", "gc", "report"])
def test_a_store_that_is_a_file_is_refused(cli, pipeline, tmp_path, command):
    path = pipeline(SMALL)
    not_a_dir = tmp_path / "store-file"
    not_a_dir.write_text("x")
    args = [command, path] if command in ("run", "plan", "report") else [command]
    result = cli(*args, "--store", str(not_a_dir), store=False)
    assert result.exit_code == 2
    no_crash(result)
    assert "must be a directory" in result.stderr
    assert not_a_dir.read_text() == "x"
