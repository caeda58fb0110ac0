"""The executors: local workers with a failing combination, submitit's local executor end to
end, Ray end to end (when installed), and the clean errors of missing extras and options."""

from __future__ import annotations

import sys

import pytest

from test_sweeps import SWEEP

TWO = SWEEP.replace("""  stages.tune.optimizer.lr: [0.001, 0.5]
  stages.tune.seed: [0, 1]
""", """  stages.tune.optimizer.lr: [0.001, 0.5]
""")
#: combination 0 fails at run time (its param group selects no parameter), 1 and 2 succeed
FAILING = SWEEP.replace("""  stages.tune.optimizer.lr: [0.001, 0.5]
  stages.tune.seed: [0, 1]
""", """  stages.tune.param_groups: [[{params: [nothing.*], weight_decay: 0.0}], [], [{params: [bias], weight_decay: 0.0}]]
""")


def test_local_workers_keep_going_past_a_failed_combination(cli, pipeline):
    result, out = cli.run_json(pipeline(FAILING), "--jobs", "2")
    assert result.exit_code == 1
    assert [r["status"] for r in out["runs"]] == ["failed", "ok", "ok"]
    assert "nothing.*" in out["runs"][0]["stages"]["tune"]["message"]
    assert out["runs"][0]["stages"]["tune"]["status"] == "failed"
    assert [r["stages"]["base"]["status"] for r in out["runs"]].count("ran") == 1  # the shared stage, once


def test_fail_fast_with_one_job_starts_nothing_after_a_failure(cli, pipeline):
    """With one job the order is fixed: the failure comes first, nothing starts after it."""
    result, out = cli.run_json(pipeline(FAILING), "--jobs", "1", "--executor", "local", "--fail-fast",
                               "--set", "matrix.stages.tune.param_groups=[[{params: [nothing.*]}], []]")
    assert result.exit_code == 1
    assert [r["status"] for r in out["runs"]] == ["failed", "skipped"]


def test_the_local_executor_cancels_queued_tasks_after_a_failure(tmp_path):
    """The executor's own contract, with stand-in tasks: after on_result says stop, no
    queued task starts (one worker: the order is the submission order)."""
    from nnopt.core.executors import SweepOptions, local
    from nnopt.core.executors.task import Task

    seen = []

    def on_result(task, result):
        seen.append((task.index, type(result).__name__))
        return True  # stop after the first

    tasks = [Task("/nonexistent.yaml", (), str(tmp_path), i, (), "inv", 1) for i in range(3)]
    local.execute(tasks, SweepOptions(jobs=1), on_result)
    assert seen == [(0, "SpecError")]  # the file is gone: a failure of that task, reported, nothing after it


def test_submitit_local_executor_end_to_end(cli, pipeline):
    pytest.importorskip("submitit")
    path = pipeline(TWO)
    result, out = cli.run_json(path, "--executor", "slurm", "--slurm-cluster", "local", "--slurm-time", "5")
    assert result.exit_code == 0, result.output
    assert [r["status"] for r in out["runs"]] == ["ok", "ok"]
    assert sorted(s["status"] for r in out["runs"] for s in r["stages"].values()) == ["cached", "ran", "ran", "ran"]
    slurm_dirs = list((cli.store / "sweeps").glob("*/slurm"))
    assert slurm_dirs and any(slurm_dirs[0].iterdir())  # submitit's job folder, in the invocation's directory
    _, again = cli.run_json(path)
    assert {s["status"] for r in again["runs"] for s in r["stages"].values()} == {"cached"}


def test_ray_end_to_end_on_a_local_instance(cli, pipeline):
    pytest.importorskip("ray")
    path = pipeline(TWO)
    result, out = cli.run_json(path, "--executor", "ray", "--jobs", "2")
    assert result.exit_code == 0, result.output
    assert [r["status"] for r in out["runs"]] == ["ok", "ok"]
    assert sorted(s["status"] for r in out["runs"] for s in r["stages"].values()) == ["cached", "ran", "ran", "ran"]
    _, again = cli.run_json(path)
    assert {s["status"] for r in again["runs"] for s in r["stages"].values()} == {"cached"}


@pytest.mark.parametrize("executor, extra", [("ray", "ray"), ("slurm", "slurm")])
def test_a_missing_extra_is_a_clean_error_naming_the_install(monkeypatch, cli, pipeline, executor, extra):
    monkeypatch.setitem(sys.modules, "ray" if executor == "ray" else "submitit", None)  # import fails
    result = cli("run", pipeline(TWO), "--executor", executor)
    assert result.exit_code == 2
    assert f"pip install 'nnopt[{extra}]'" in result.stderr and "Traceback" not in result.output
    assert not cli.store.exists()


@pytest.mark.parametrize("args, word", [(["--ray-address", "auto"], "--ray-address"),
                                        (["--executor", "ray", "--slurm-partition", "gpu"], "--slurm-partition"),
                                        (["--slurm-option", "account"], "--slurm-option"),
                                        (["--jobs", "0"], "--jobs")])
def test_an_option_of_another_executor_is_a_usage_error(cli, pipeline, args, word):
    result = cli("run", pipeline(TWO), *args)
    assert result.exit_code == 2 and word in result.output and "Traceback" not in result.output
