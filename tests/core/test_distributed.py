"""Data-parallel training under torchrun: shards, 1 vs 2 processes, resumption after a kill.

The multi-process tests start real gloo process groups on the CPU through ``nnopt run
--nproc 2`` (torch.distributed.run) in subprocesses: each takes ~15-25 s on 2 shared cores,
mostly interpreter and torch start-up, so they are marked slow.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import Cli

import nnopt
from nnopt.core import distributed
from nnopt.core.store import CHECKPOINT

#: a global batch of 63 does not split evenly over 2 ranks (32 + 31), and the last batch of an
#: epoch (1437 = 22·63 + 51) is smaller again: the weighting must make the mean exact anyway
PIPELINE = """\
name: ddp
seed: 0
data: {name: digits, batch_size: 63}
model:
  arch: {name: mlp, widths: [32], activation: relu}
loss: cross_entropy
stages:
  train:
    kind: train
    optimizer: {name: sgd, lr: 0.1, momentum: 0.9}
    steps: 40
    log_every: 5
    checkpoint_every: 10
  probe:
    kind: analyze
    from: train
    analyzers: [{name: grad_norms, source: train, samples: 256}]
"""

#: makes every log window take 0.3 s longer (numerics untouched), so that a kill lands mid-training
SLOW = """\
import time
import nnopt.core.loop as loop
_flush = loop.TrainLoop._flush
def _slow(self, *args):
    time.sleep(0.3)
    return _flush(self, *args)
loop.TrainLoop._flush = _slow
"""


def env(extra_path: Path | None = None) -> dict[str, str]:
    paths = [str(extra_path)] if extra_path else []
    paths += [str(Path(nnopt.__file__).parents[1]), os.environ.get("PYTHONPATH", "")]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, paths))}


def nproc_run(path: str, store: Path, *extra: str, environ: dict | None = None, timeout: float = 300) -> tuple[int, dict | None, str]:
    done = subprocess.run([sys.executable, "-m", "nnopt", "run", path, "--json", "--no-progress", "--store", str(store),
                           *extra], capture_output=True, text=True, timeout=timeout, env=environ or env())
    out = json.loads(done.stdout.splitlines()[-1]) if done.stdout.strip() else None
    return done.returncode, out, done.stderr


# ------------------------------------------------------------------ shards
@pytest.mark.parametrize("n,world", [(64, 2), (63, 2), (5, 4), (1, 3), (1000, 7)])
def test_the_shards_of_a_global_batch_are_disjoint_contiguous_and_cover_it(n, world):
    bounds = [distributed.shard_bounds(n, r, world) for r in range(world)]
    assert bounds[0][0] == 0 and bounds[-1][1] == n
    assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))  # contiguous, disjoint
    sizes = [hi - lo for lo, hi in bounds]
    assert max(sizes) - min(sizes) <= 1
    assert [len(t) for t in torch.arange(n).tensor_split(world)] == sizes  # torch's own split


def test_the_weighted_shard_gradients_average_to_the_global_mean_loss_gradient():
    """What DDP computes, by hand: (1/K) Σ_r (n_r K / B) ∇L_r = ∇L_B for uneven shards."""
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2).double()
    x, y = torch.randn(7, 3, dtype=torch.float64), torch.randint(0, 2, (7,))
    loss_fn = torch.nn.functional.cross_entropy
    want = torch.autograd.grad(loss_fn(model(x), y), model.weight)[0]
    world, got, loss = 3, torch.zeros_like(want), 0.0
    for r in range(world):
        xr, yr, w = distributed.Sharding(r, world).split(x, y)
        lr = loss_fn(model(xr), yr)
        got += torch.autograd.grad(lr * (w * world), model.weight)[0] / world
        loss += float(lr) * w
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    assert loss == pytest.approx(float(loss_fn(model(x), y)), rel=1e-12)


def test_without_torchrun_nothing_distributed_is_set_up(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert not distributed.launched() and distributed.world_size() == 1 and distributed.rank() == 0
    distributed.init()
    assert not distributed.active() and not torch.distributed.is_initialized()


# ------------------------------------------------------------------ 1 process vs 2
@pytest.fixture(scope="module")
def reference_two(tmp_path_factory) -> tuple[str, Path, dict]:
    """The pipeline run once by ``nnopt run --nproc 2`` (shared by the tests below)."""
    tmp = tmp_path_factory.mktemp("ddp")
    path = tmp / "pipeline.yaml"
    path.write_text(PIPELINE)
    code, out, err = nproc_run(str(path), tmp / "store", "--nproc", "2")
    assert code == 0, err[-3000:]
    return str(path), tmp / "store", out


@pytest.mark.slow
def test_two_gloo_processes_give_the_final_metrics_of_one_process(reference_two, tmp_path):
    path, store, two = reference_two
    result, one = Cli(tmp_path / "one").run_json(path, "--no-progress")
    assert result.exit_code == 0, result.stderr
    assert {s: v["status"] for s, v in two["stages"].items()} == {"train": "ran", "probe": "ran"}
    m1, m2 = one["stages"]["train"]["metrics"], two["stages"]["train"]["metrics"]
    for k in ("train_loss", "test_loss", "train_accuracy", "test_accuracy", "steps", "epochs"):
        assert m2[k] == pytest.approx(m1[k], rel=1e-5, abs=1e-7), k
    g1, g2 = (o["stages"]["probe"]["results"]["grad_norms"] for o in (one, two))
    assert json.dumps(g1).count(",") == json.dumps(g2).count(",")  # the same shape of results
    assert "data-parallel over 2 processes" in two["stages"]["train"]["message"]
    train_dir = Path(two["stages"]["train"]["dir"])
    manifest = json.loads((train_dir / "manifest.json").read_text())
    assert manifest["determinism"]["world_size"] == 2
    # rank 0 alone wrote: one stage directory per stage, one run record, no scratch left in the store
    assert len(list((store / "stages").glob("*/*"))) == 2
    assert len(list((store / "runs").glob("*.json"))) == 1
    assert not any((store / "tmp").glob("*")) if (store / "tmp").exists() else True
    # the logged train losses are the global batches' means: the same lines as one process's
    lines = [[json.loads(s) for s in (Path(o["stages"]["train"]["dir"]) / "metrics.jsonl").read_text().splitlines()]
             for o in (one, two)]
    assert [sorted(r) for r in lines[0]] == [sorted(r) for r in lines[1]]
    for a, b in zip(*lines):
        for k in ("loss", "test_loss"):
            if k in a:
                assert b[k] == pytest.approx(a[k], rel=1e-5), (a, b)


@pytest.mark.slow
def test_a_cached_pipeline_under_two_processes_is_all_cached_and_exits_0(reference_two):
    path, store, two = reference_two
    code, again, err = nproc_run(path, store, "--nproc", "2")
    assert code == 0, err[-2000:]
    assert {s: v["status"] for s, v in again["stages"].items()} == {"train": "cached", "probe": "cached"}


@pytest.mark.slow
def test_rank_0s_exit_status_is_the_commands(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(PIPELINE.replace("lr: 0.1", "lr: -1"))
    code, _, err = nproc_run(str(bad), tmp_path / "store", "--nproc", "2")
    assert code == 2, err[-2000:]
    assert "Traceback" not in err


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


@pytest.mark.slow
def test_a_data_parallel_run_killed_mid_training_resumes_to_the_uninterrupted_bits(reference_two, tmp_path):
    path, _, two = reference_two
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(SLOW)
    store = tmp_path / "store"
    key = two["stages"]["train"]["key"]
    proc = subprocess.Popen([sys.executable, "-m", "nnopt", "run", path, "--json", "--no-progress", "--store", str(store),
                             "--nproc", "2"], env=env(site), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)
    checkpoint = store / "tmp" / key / CHECKPOINT
    deadline = time.monotonic() + 240
    while not checkpoint.is_file() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert checkpoint.is_file(), proc.stderr.read().decode()[-2000:] if proc.poll() is not None else "no checkpoint"
    for pid in [proc.pid, *descendants(proc.pid)]:  # SIGKILL: every rank, torchrun and the launcher at once
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait(timeout=30)
    assert not (store / "stages").exists() or not list((store / "stages").glob("*/*"))

    code, resumed, err = nproc_run(path, store, "--nproc", "2")
    assert code == 0, err[-3000:]
    got, want = Path(resumed["stages"]["train"]["dir"]), Path(two["stages"]["train"]["dir"])
    assert (got / "weights" / "final.safetensors").read_bytes() == (want / "weights" / "final.safetensors").read_bytes()
    assert resumed["stages"]["train"]["metrics"]["test_loss"] == two["stages"]["train"]["metrics"]["test_loss"]
    assert resumed["stages"]["probe"]["results"] == two["stages"]["probe"]["results"]
