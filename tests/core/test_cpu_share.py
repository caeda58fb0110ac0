"""Runs on one machine share its cores: a registry of live runs, passive waiting beside
others, and each stage's thread count divided among the live runs (fixed for the stage)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nnopt.core import cpu_share

LONG = """\
name: busy
seed: 0
device: cpu
data: {name: digits, batch_size: 64}
model:
  arch: {name: mlp, widths: [256, 128], activation: relu}
loss: cross_entropy
stages:
  train:
    kind: train
    optimizer: {name: sgd, lr: 0.05, momentum: 0.9}
    steps: 3000
"""

PROBE = (  # a live registered run that does nothing until its stdin closes
    "import sys\nfrom nnopt.core import cpu_share\ncpu_share.register()\nprint('ready', flush=True)\nsys.stdin.read()\n"
)


@pytest.fixture
def registry(tmp_path: Path, monkeypatch) -> Path:
    """A private registry (other people's runs on this machine must not count here)."""
    path = tmp_path / "runtime"
    monkeypatch.setenv(cpu_share.ENV_DIR, str(path))
    return path


@pytest.fixture
def env(registry: Path) -> dict[str, str]:
    out = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY")}
    return {**out, cpu_share.ENV_DIR: str(registry), "PYTHONHASHSEED": "0"}


@pytest.fixture
def probe(env):
    procs = []

    def start() -> subprocess.Popen:
        proc = subprocess.Popen([sys.executable, "-c", PROBE], stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, text=True)
        assert proc.stdout.readline().strip() == "ready"
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        proc.stdin.close()
        proc.wait(timeout=30)


def torch_default_threads(env: dict[str, str]) -> int:
    code = "import torch; print(torch.get_num_threads())"
    return int(subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout)


def nnopt_run(pipeline: Path, store: Path, env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "nnopt", "run", str(pipeline), "--store", str(store), "--no-progress"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen) -> None:
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err


def stage_threads(store: Path) -> int:
    (manifest,) = store.glob("stages/*/*/manifest.json")
    return json.loads(manifest.read_text())["determinism"]["torch_threads"]


def wait_for(predicate, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_a_run_is_registered_by_its_pid_while_it_lives_and_not_after(registry, probe):
    proc = probe()
    assert cpu_share.computing_runs() == [proc.pid]
    assert (registry / str(proc.pid)).is_file()
    proc.stdin.close()
    proc.wait(timeout=30)
    assert not (registry / str(proc.pid)).exists()  # removed at exit
    assert cpu_share.computing_runs() == []


def test_files_of_dead_processes_and_of_reused_pids_are_ignored_and_removed(registry, probe):
    registry.mkdir(parents=True, exist_ok=True)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True)
    dead_pid = int(dead.stdout)
    (registry / str(dead_pid)).write_text(json.dumps({"pid": dead_pid, "start": None}))  # a run killed with -9
    live = probe()
    reused = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    try:  # a file naming a live pid, written by an earlier process that had that pid
        (registry / str(reused.pid)).write_text(json.dumps({"pid": reused.pid, "start": 1}))
        assert cpu_share.computing_runs() == [live.pid]
        assert sorted(p.name for p in registry.iterdir()) == [str(live.pid)]
    finally:
        reused.stdin.close()
        reused.wait(timeout=30)


def test_a_registered_process_idle_since_an_old_stamp_does_not_count_and_a_busy_one_does(registry, probe):
    idle, busy = probe(), subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(1.0)  # the busy one's CPU time grows meanwhile
        ticks = os.sysconf("SC_CLK_TCK")
        for proc in (idle, busy):
            stat = cpu_share._proc_stat(proc.pid)
            record = {"pid": proc.pid, "start": cpu_share._field(stat, 22), "at": time.time() - 60}
            # as if stamped a minute ago: the idle one has used nothing since, the busy one 30 s
            spent = 0 if proc is idle else 30 * ticks
            record["cpu"] = cpu_share._cpu_ticks(stat) - spent
            (registry / str(proc.pid)).write_text(json.dumps(record))
        assert cpu_share.computing_runs() == [busy.pid]
        assert (registry / str(idle.pid)).exists()  # alive: its file stays, for when it computes again
    finally:
        busy.kill()
        busy.wait(timeout=30)


def test_two_concurrent_cpu_bound_runs_on_different_stores_divide_the_cores(tmp_path, env, registry):
    pipeline = tmp_path / "busy.yaml"
    pipeline.write_text(LONG)
    first = nnopt_run(pipeline, tmp_path / "a", env)
    wait_for(lambda: (registry / str(first.pid)).exists())  # it counts from its start, before torch loads
    second = nnopt_run(pipeline, tmp_path / "b", env)
    finish(first)
    finish(second)
    share = max(1, torch_default_threads(env) // 2)  # 1 each on 2 cores
    assert stage_threads(tmp_path / "a") == share
    assert stage_threads(tmp_path / "b") == share


def test_a_run_alone_keeps_torchs_default_thread_count(tmp_path, env, probe):
    pipeline = tmp_path / "busy.yaml"
    pipeline.write_text(LONG.replace("steps: 3000", "steps: 5"))
    dead = probe()  # was live, is gone by the time the run starts
    dead.stdin.close()
    dead.wait(timeout=30)
    finish(nnopt_run(pipeline, tmp_path / "s", env))
    assert stage_threads(tmp_path / "s") == torch_default_threads(env)


def test_an_omp_num_threads_the_user_set_is_kept_beside_other_runs(tmp_path, env, probe):
    pipeline = tmp_path / "busy.yaml"
    pipeline.write_text(LONG.replace("steps: 3000", "steps: 5"))
    chosen = torch_default_threads(env)  # torch caps OMP_NUM_THREADS at the cores: choose all of them
    if chosen < 2:
        pytest.skip("one core: the share and the user's choice cannot differ")
    probe()  # beside it the share would be chosen // 2
    finish(nnopt_run(pipeline, tmp_path / "s", {**env, "OMP_NUM_THREADS": str(chosen)}))
    assert stage_threads(tmp_path / "s") == chosen


def test_beside_a_live_run_openmp_threads_wait_passively(registry, probe, monkeypatch):
    monkeypatch.setenv("OMP_WAIT_POLICY", "")  # records the variable, so teardown restores it
    monkeypatch.delenv("OMP_WAIT_POLICY")
    assert cpu_share.join() == 0
    assert "OMP_WAIT_POLICY" not in os.environ  # alone: the default (spinning) is fastest
    probe()
    assert cpu_share.join() == 1
    assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE"


def test_an_openmp_wait_policy_the_user_set_is_left_alone(registry, probe, monkeypatch):
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    probe()
    cpu_share.join()
    assert os.environ["OMP_WAIT_POLICY"] == "ACTIVE"


def test_a_registry_directory_owned_by_someone_else_turns_sharing_off(tmp_path, monkeypatch):
    target = tmp_path / "elsewhere"
    target.mkdir()
    link = tmp_path / "link"
    link.symlink_to(target)  # as another user could plant in a shared /tmp
    monkeypatch.setenv(cpu_share.ENV_DIR, str(link))
    assert cpu_share.runtime_dir() is None
    cpu_share.register()
    assert cpu_share.computing_runs() == [] and not list(target.iterdir())
