"""`nnopt run` end to end: overrides, matrix, divergence, concurrency, failures, fast cache hits."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

from conftest import TINY, statuses


def test_set_overrides_are_typed_as_yaml_and_used(cli, pipeline):
    result, out = cli.run_json(pipeline(), "--set", "model.arch.widths=[8,8]", "--set", "stages.train.optimizer.lr=1e-2")
    assert result.exit_code == 0, result.stderr
    spec = json.loads((Path(out["stages"]["train"]["dir"]) / "spec.json").read_text())
    assert spec["model"]["arch"]["widths"] == [8, 8]
    assert spec["optimizer"]["lr"] == 0.01


def test_set_gives_params_to_a_component_named_bare(cli, pipeline):
    result, out = cli.run_json(pipeline(), "--set", "loss.label_smoothing=0.1")
    assert result.exit_code == 0, result.stderr
    spec = json.loads((Path(out["stages"]["train"]["dir"]) / "spec.json").read_text())
    assert spec["loss"] == {"name": "cross_entropy", "label_smoothing": 0.1, "cache_version": 1}


MATRIX = TINY + textwrap.dedent("""\
    matrix:
      stages.train.optimizer.lr: [0.05, 0.1]
      seed: [0, 1]
    """)


def test_matrix_runs_one_pipeline_per_combination_each_cached(cli, pipeline):
    path = pipeline(MATRIX)
    result, out = cli.run_json(path)
    assert result.exit_code == 0, result.stderr
    assert out["pipeline"] == "tiny"
    params = [r["params"] for r in out["runs"]]
    assert params == [{"stages.train.optimizer.lr": lr, "seed": s} for lr in (0.05, 0.1) for s in (0, 1)]
    assert len({r["stages"]["train"]["key"] for r in out["runs"]}) == 4
    assert all(set(statuses(r).values()) == {"ran"} for r in out["runs"])
    _, again = cli.run_json(path)
    assert all(set(statuses(r).values()) == {"cached"} for r in again["runs"])


def test_a_set_of_a_swept_path_is_refused_and_says_how_to_change_the_axis(cli, pipeline):
    """A --set never silently collapses (or escapes) a sweep: the axis itself, a path inside
    it and one holding it are refused, at the --set, naming where the axis is written."""
    path = pipeline(MATRIX)
    for setting, axis, values in (("seed=7", "seed", "[7]"),
                                  ("stages.train.optimizer.lr.x=1", "stages.train.optimizer.lr", "[v1, v2]"),
                                  ("stages.train.optimizer={name: adam}", "stages.train.optimizer.lr", "[v1, v2]")):
        result = cli("run", path, "--set", setting)
        assert result.exit_code == 2, result.stderr
        line = 18 if axis != "seed" else 19
        dotted = setting.partition("=")[0]
        assert result.stderr.splitlines() == [
            f"--set {setting}: {dotted}: the matrix sweeps '{axis}' (at {path}:{line}:3), and a --set never changes a "
            f"swept axis; change the axis itself: --set 'matrix.{axis}={values}'", "1 error; nothing was run"]
    assert not cli.store.exists()


def test_set_matrix_axis_replaces_that_axis_and_other_sets_apply_to_every_combination(cli, pipeline):
    result, out = cli.run_json(pipeline(MATRIX), "--set", "matrix.seed=[7]", "--set", "stages.train.optimizer.momentum=0.5")
    assert result.exit_code == 0, result.stderr
    assert [r["params"] for r in out["runs"]] == [{"stages.train.optimizer.lr": 0.05, "seed": 7}, {"stages.train.optimizer.lr": 0.1, "seed": 7}]
    for run in out["runs"]:
        spec = json.loads((Path(run["stages"]["train"]["dir"]) / "spec.json").read_text())
        assert (spec["seed"], spec["optimizer"]["momentum"]) == (7, 0.5)
        assert spec["optimizer"]["lr"] == run["params"]["stages.train.optimizer.lr"]


def test_set_matrix_adds_an_axis(cli, pipeline):
    from nnopt.core.planner import load_plans

    plans = load_plans(pipeline(), ["matrix.stages.train.optimizer.lr=[0.05, 0.2]"])
    assert [p.params for p in plans] == [{"stages.train.optimizer.lr": 0.05}, {"stages.train.optimizer.lr": 0.2}]
    assert [p.stage("train").spec.optimizer.resolved.lr for p in plans] == [0.05, 0.2]


DIVERGES = TINY.replace("lr: 0.1, momentum: 0.9", "lr: 1.0e+6, momentum: 0.9")


def test_a_diverging_run_is_reported_and_its_dependents_skipped(cli, pipeline):
    path = pipeline(DIVERGES)
    result, out = cli.run_json(path)
    assert result.exit_code == 1
    assert out["status"] == "diverged"
    assert statuses(out) == {"train": "diverged", "probe": "skipped"}
    metrics = out["stages"]["train"]["metrics"]
    assert metrics["diverged_at_step"] >= 1
    assert isinstance(metrics["last_finite_loss"], float)
    # the store stays consistent: the divergence is stored, nothing half-written is left
    assert not any((cli.store / "tmp").iterdir())
    again, out2 = cli.run_json(path)
    assert again.exit_code == 1 and statuses(out2) == {"train": "diverged", "probe": "skipped"}


def test_a_failing_stage_leaves_nothing_in_the_store(cli, pipeline, tmp_path):
    broken = tmp_path / "broken.npz"
    broken.write_text("not an archive")
    text = TINY.replace("data: {name: digits, batch_size: 128}", f"data: {{name: npz, path: {broken}}}")
    result, out = cli.run_json(pipeline(text))
    assert result.exit_code == 1
    assert statuses(out) == {"train": "failed", "probe": "skipped"}
    assert "broken.npz" in out["stages"]["train"]["message"]
    assert not list((cli.store / "stages").glob("*/*")) if (cli.store / "stages").exists() else True
    assert not any((cli.store / "tmp").iterdir())


def test_an_interrupted_run_exits_130_and_discards_the_partial_stage(cli, pipeline, monkeypatch):
    from nnopt.plugins.stages.train import Train

    def interrupted(self, ctx):
        (ctx.out_dir / "metrics.jsonl").write_text("{}\n")
        raise KeyboardInterrupt

    monkeypatch.setattr(Train, "run", interrupted)
    result = cli("run", pipeline())
    assert result.exit_code == 130
    assert not any((cli.store / "tmp").iterdir())
    assert not (cli.store / "stages").exists() or not list((cli.store / "stages").glob("*/*"))


def test_a_killed_run_resumes_from_the_completed_stages(cli, pipeline, monkeypatch):
    from nnopt.plugins.stages.analyze import Analyze

    path = pipeline()
    original = Analyze.run
    monkeypatch.setattr(Analyze, "run", lambda self, ctx: (_ for _ in ()).throw(KeyboardInterrupt))
    assert cli("run", path).exit_code == 130
    monkeypatch.setattr(Analyze, "run", original)
    _, out = cli.run_json(path)
    assert statuses(out) == {"train": "cached", "probe": "ran"}


def test_no_wait_exits_75_while_another_run_holds_a_stage(cli, pipeline):
    from filelock import FileLock

    from nnopt.core.planner import load_plans

    path = pipeline()
    (plan,) = load_plans(path)
    (cli.store / "locks").mkdir(parents=True)
    with FileLock(str(cli.store / "locks" / f"{plan.stages[0].key}.lock")):
        result = cli("run", path, "--no-wait")
    assert result.exit_code == 75


def test_concurrent_runs_compute_each_stage_once(pipeline, tmp_path):
    path = pipeline()
    store = tmp_path / "shared-store"
    cmd = [sys.executable, "-m", "nnopt", "run", path, "--json", "--store", str(store)]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [json.loads(p.communicate(timeout=300)[0]) for p in procs]
    assert [p.returncode for p in procs] == [0, 0]
    ran = [sid for out in outs for sid, s in out["stages"].items() if s["status"] == "ran"]
    assert sorted(ran) == ["probe", "train"]  # each stage computed by exactly one of the two runs
    assert outs[0]["stages"]["train"]["key"] == outs[1]["stages"]["train"]["key"]


def test_a_fully_cached_run_imports_neither_torch_nor_plugins(pipeline, tmp_path):
    path = pipeline()
    store = tmp_path / "s"
    first = subprocess.run([sys.executable, "-m", "nnopt", "run", path, "--store", str(store)], capture_output=True, text=True)
    assert first.returncode == 0, first.stderr
    probe = textwrap.dedent(f"""
        import sys
        from nnopt.cli import main
        try:
            main(["run", {path!r}, "--store", {str(store)!r}, "--json"])
        except SystemExit as e:
            code = e.code
        loaded = [m for m in sys.modules if m == "torch" or m.startswith("nnopt.plugins.")]
        print("RESULT", code, loaded, file=sys.stderr)
    """)
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert "RESULT 0 []" in done.stderr
    out = json.loads(done.stdout)
    assert set(statuses(out).values()) == {"cached"}


def test_editing_a_watched_data_file_invalidates_the_fast_path(cli, pipeline, tmp_path):
    import numpy as np

    rng = np.random.default_rng(0)
    data = tmp_path / "d.npz"

    def write(shift: float) -> None:
        x = rng.normal(size=(64, 4)).astype("float32") + shift
        y = (x[:, 0] > shift).astype("int64")
        np.savez(data, x_train=x, y_train=y, x_test=x, y_test=y)

    write(0.0)
    text = TINY.replace("data: {name: digits, batch_size: 128}", f"data: {{name: npz, path: {data}, batch_size: 16}}")
    path = pipeline(text)
    _, first = cli.run_json(path)
    assert first["status"] == "ok", first
    write(1.0)
    _, second = cli.run_json(path)
    assert statuses(second) == {"train": "ran", "probe": "ran"}
    assert second["stages"]["train"]["key"] != first["stages"]["train"]["key"]


def test_a_missing_data_file_is_a_spec_error_found_before_running(cli, pipeline, tmp_path):
    text = TINY.replace("data: {name: digits, batch_size: 128}", f"data: {{name: npz, path: {tmp_path / 'absent.npz'}}}")
    result = cli("run", pipeline(text))
    assert result.exit_code == 2
    assert ":3:" in result.stderr and "data.path: no such file" in result.stderr
    assert not cli.store.exists()


def test_show_ls_gc_and_report(cli, pipeline):
    path = pipeline()
    _, out = cli.run_json(path)
    run_id = out["run"]
    shown = cli("show", run_id, "--json")
    assert shown.exit_code == 0
    assert json.loads(shown.stdout)["stages"]["train"]["metrics"]["test_accuracy"] > 0.5
    stage = cli("show", f"{run_id}/train")
    assert "weights/final.safetensors" in stage.stdout
    by_key = cli("show", out["stages"]["probe"]["key"][:10], "--json")
    assert "grad_norms" in json.loads(by_key.stdout)["results"]
    assert run_id in cli("ls").stdout
    assert "probe" in cli("ls", "--stages").stdout
    report = cli("report", path)
    html = Path(report.stdout.strip()).read_text()
    assert "data:image/png;base64" in html and "test_accuracy" in html
    # a second pipeline version, then drop the first run: its stages go, the new ones stay
    _, other = cli.run_json(path, "--set", "seed=1")
    assert cli("gc").exit_code == 0
    assert Path(out["stages"]["train"]["dir"]).exists()  # still referenced by a kept run
    cli("gc", "--keep-last", "1")
    assert Path(other["stages"]["train"]["dir"]).exists()
    assert not Path(out["stages"]["train"]["dir"]).exists()


def test_show_of_an_unknown_ref_is_an_error_with_a_suggestion(cli, pipeline):
    cli.run_json(pipeline())
    result = cli("show", "tinny")
    assert result.exit_code == 2 and "did you mean 'tiny'" in result.stderr


CHECKPOINTED = TINY.replace("    epochs: 1\n    keep: [0]\n", "    epochs: 3\n    keep: [0, 20]\n    checkpoint_every: 10\n    log_every: 5\n    track: [{name: grad_norms, every: 7}]\n")


def test_a_training_killed_mid_stage_resumes_from_its_checkpoint_with_the_same_bits(cli, pipeline, tmp_path, monkeypatch):
    from click.testing import CliRunner

    from nnopt.cli import main
    from nnopt.core.stage import StageContext

    path = pipeline(CHECKPOINTED)
    saved = StageContext.save_checkpoint
    calls = []

    def killed_after_two(self, state):
        saved(self, state)
        calls.append(state["step"])
        if len(calls) == 2:
            raise KeyboardInterrupt  # as if the process were killed right after its 2nd checkpoint

    monkeypatch.setattr(StageContext, "save_checkpoint", killed_after_two)
    assert cli("run", path).exit_code == 130
    assert calls == [10, 20]
    (workdir,) = (cli.store / "tmp").iterdir()  # the partial stage is kept, with its checkpoint
    assert (workdir / "checkpoint.pt").is_file()
    monkeypatch.setattr(StageContext, "save_checkpoint", saved)

    resumed, out = cli.run_json(path)
    assert resumed.exit_code == 0 and out["stages"]["train"]["status"] == "ran"
    fresh = json.loads(CliRunner().invoke(main, ["run", path, "--json", "--store", str(tmp_path / "fresh")]).stdout)
    a, b = Path(out["stages"]["train"]["dir"]), Path(fresh["stages"]["train"]["dir"])
    for name in ("weights/final.safetensors", "weights/step_0.safetensors", "weights/step_20.safetensors"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    assert not (a / "checkpoint.pt").exists()  # resumption state is not an artifact

    def without_time(file: Path) -> list[dict]:
        return [{k: v for k, v in json.loads(line).items() if k != "seconds"} for line in file.read_text().splitlines()]

    assert without_time(a / "metrics.jsonl") == without_time(b / "metrics.jsonl")
    assert out["stages"]["train"]["metrics"]["test_loss"] == fresh["stages"]["train"]["metrics"]["test_loss"]


def interrupt_after_first_checkpoint(cli, path: str, monkeypatch) -> None:
    """Run ``path`` as if the process were killed right after its first checkpoint."""
    from nnopt.core.stage import StageContext

    saved = StageContext.save_checkpoint

    def killed(self, state):
        saved(self, state)
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(StageContext, "save_checkpoint", killed)
        assert cli("run", path).exit_code == 130


def test_force_discards_a_checkpoint_left_by_a_killed_run(cli, pipeline, monkeypatch):
    from nnopt.core.stage import StageContext

    path = pipeline(CHECKPOINTED)
    interrupt_after_first_checkpoint(cli, path, monkeypatch)
    steps_seen = []
    original_load = StageContext.load_checkpoint

    def spy(self):
        state = original_load(self)
        steps_seen.append(None if state is None else state["step"])
        return state

    monkeypatch.setattr(StageContext, "load_checkpoint", spy)
    _, out = cli.run_json(path, "--force")
    assert out["stages"]["train"]["status"] == "ran"
    assert steps_seen[0] is None


def test_a_run_killed_with_sigkill_resumes(pipeline, tmp_path):
    import signal
    import time

    text = TINY.replace("    epochs: 1\n    keep: [0]\n", "    steps: 4000\n    checkpoint_every: 100\n    log_every: 50\n")
    path = pipeline(text)
    store = tmp_path / "store"
    cmd = [sys.executable, "-m", "nnopt", "run", path, "--json", "--store", str(store)]
    victim = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not list((store / "tmp").glob("*/checkpoint.pt")) and time.monotonic() < deadline and victim.poll() is None:
        time.sleep(0.05)
    assert victim.poll() is None, "the run ended before it could be killed"
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    resumed = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    out = json.loads(resumed.stdout)
    assert out["stages"]["train"]["status"] == "ran"
    fresh = subprocess.run([*cmd[:-1], str(tmp_path / "fresh")], capture_output=True, text=True, timeout=300)
    other = json.loads(fresh.stdout)
    weights = "weights/final.safetensors"
    assert (Path(out["stages"]["train"]["dir"]) / weights).read_bytes() == (Path(other["stages"]["train"]["dir"]) / weights).read_bytes()


def test_gc_keeps_what_a_running_pipeline_has_finished(cli, pipeline, monkeypatch):
    from nnopt.plugins.stages.analyze import Analyze

    path = pipeline()
    seen = {}

    def gc_while_probing(self, ctx):  # another shell runs `nnopt gc` while this run is at `probe`
        assert cli("gc").exit_code == 0
        seen["train_kept"] = ctx.load_model("train") is not None
        raise KeyboardInterrupt

    monkeypatch.setattr(Analyze, "run", gc_while_probing)
    assert cli("run", path).exit_code == 130
    assert seen == {"train_kept": True}
    run = json.loads(cli("show", "latest", "--json").stdout)
    assert run["status"] == "interrupted"
    assert {s: v["run_status"] for s, v in run["stages"].items()} == {"train": "ran", "probe": "interrupted"}


def test_gc_keeps_the_checkpoint_of_an_interrupted_stage(cli, pipeline, monkeypatch):
    interrupt_after_first_checkpoint(cli, pipeline(CHECKPOINTED), monkeypatch)
    cli("gc")
    assert list((cli.store / "tmp").glob("*/checkpoint.pt"))
    cli("gc", "--keep-last", "0")  # nothing kept: the checkpoint goes too
    assert not list((cli.store / "tmp").glob("*/checkpoint.pt"))

