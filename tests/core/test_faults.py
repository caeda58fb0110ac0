"""Fault and load tests: kills at random points, concurrent runs, damaged artifacts, Ctrl-C.

- 20 kill points drawn (seeded) from every write of a train + analyze run: the killed run
  (``os._exit`` at the write, as SIGKILL: ``crash_points``) is resumed and must end bit for bit
  as an uninterrupted run, with no partial stage directory left.
- 4 concurrent ``nnopt run`` of one pipeline on one store: every stage computed once.
- Each kind of artifact (weights, result, metrics, manifest, checkpoint) truncated, altered
  or missing: detected and recomputed, never used.
- SIGINT: the training loop stops at a safe point with a checkpoint, exit 130; a second one
  exits at once; the next run resumes to the uninterrupted bits.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import Cli, statuses
from test_checkpoint import differences, masked_seconds

import crash_points
import nnopt
from nnopt.core.store import CHECKPOINT, Store

PIPELINE = """\
name: faults
seed: 0
data: {name: synthetic, task: gaussian_mixture, n_train: 128, n_test: 64, dim: 8, batch_size: 16}
model:
  arch: {name: mlp, widths: [16], activation: relu}
loss: cross_entropy
stages:
  train:
    kind: train
    optimizer: {name: sgd, lr: 0.1, momentum: 0.9}
    steps: 30
    keep: [0, 15]
    log_every: 5
    checkpoint_every: 10
  probe:
    kind: analyze
    from: train
    analyzers: [{name: grad_norms, source: train, samples: 64}]
"""

KILLS = 20
WALL = ("seconds", "steps_per_second")  # wall-clock metrics: all else must match exactly


def env(extra: Path | None = None) -> dict[str, str]:
    paths = ([str(extra)] if extra else []) + [str(Path(nnopt.__file__).parents[1]), os.environ.get("PYTHONPATH", "")]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, paths))}


def run_json(store: Path, path: str, *extra: str) -> dict:
    result, out = Cli(store).run_json(path, "--no-progress", *extra)
    assert result.exit_code == 0, result.stderr
    return out


def outcome(out: dict) -> dict:
    """A run's results without wall-clock numbers: what equal runs share exactly."""
    return {sid: {"key": s["key"], "metrics": {k: v for k, v in s.get("metrics", {}).items() if k not in WALL},
                  "results": s.get("results")} for sid, s in out["stages"].items()}


def consistent(store: Path) -> list[str]:
    """What is wrong with the store: a stage directory that is not complete and intact, or a
    work directory left in tmp/ after a run ended well."""
    s, out = Store(store), []
    for key in s.all_stage_keys():
        if not s.is_complete(key) or s.damaged_artifacts(key):
            out.append(f"partial or damaged stage {key[:12]}")
    tmp = store / "tmp"
    out += [f"work directory {p.name[:12]} left" for p in (tmp.iterdir() if tmp.is_dir() else []) if not p.name.startswith("old.")]
    return out


# ------------------------------------------------------------------ kill -9 at random points
def test_a_run_killed_at_20_random_writes_resumes_to_the_uninterrupted_bits(pipeline, tmp_path, monkeypatch):
    path = pipeline(PIPELINE)
    trace: list[crash_points.Event] = []
    with monkeypatch.context() as patch:
        crash_points.record(patch, trace)
        reference = run_json(tmp_path / "reference", path)
    # every write of the run, both stages (training, checkpoint writes, the commits, the analysis)
    places = [(e.checkpoint, j) for n in sorted({e.checkpoint for e in trace})
              for j, e in enumerate(crash_points.since(trace, n))]
    assert len(places) >= KILLS
    rng = random.Random(11)
    torn = {"torch.save": ["before", "torn", "unflushed"], "log_metrics": ["before", "torn"]}
    points = []
    for i, (n, j) in enumerate(sorted(rng.sample(places, KILLS))):
        name = crash_points.since(trace, n)[j].name
        points.append({"checkpoint": n, "index": j, "variant": rng.choice(torn.get(name, ["before"])), "event": name,
                       "store": str(tmp_path / f"killed-{i}")})
    assert len({p["event"] for p in points}) >= 4  # spread over kinds of writes, not one

    job = tmp_path / "job.json"
    job.write_text(json.dumps({"pipeline": path, "argv": ["run", path, "--no-progress", "--json"], "points": points}))
    done = subprocess.run([sys.executable, crash_points.__file__, str(job)], capture_output=True, text=True,
                          timeout=900, env=env())
    assert done.returncode == 0, done.stderr
    exits = json.loads(done.stdout.splitlines()[-1])

    failures, want = [], Path(reference["stages"]["train"]["dir"])
    for p in points:
        where = f"killed {p['variant']} {p['event']} (event {p['index']} after checkpoint {p['checkpoint']})"
        killed, resumed = exits[p["store"]]["killed"], exits[p["store"]]["resumed"]
        if killed != crash_points.KILLED:
            failures.append(f"{where}: exit {killed}: {Path(p['store'] + '.killed.log').read_text()[-500:]}")
            continue
        if resumed != 0:
            failures.append(f"{where}: resumed, exit {resumed}: {Path(p['store'] + '.resumed.log').read_text()[-500:]}")
            continue
        out = json.loads(Path(p["store"] + ".resumed.log").read_text().splitlines()[-1])
        if outcome(out) != outcome(reference):
            failures.append(f"{where}: results differ")
        got = Path(p["store"], "stages", reference["stages"]["train"]["key"][:2], reference["stages"]["train"]["key"])
        failures += [f"{where}: {d}" for d in differences(got, want)]
        failures += [f"{where}: {d}" for d in consistent(Path(p["store"]))]
    assert not failures, "\n".join(failures)


# ------------------------------------------------------------------ concurrent runs
def test_four_concurrent_runs_on_one_store_compute_each_stage_once(pipeline, tmp_path):
    path, store = pipeline(PIPELINE), tmp_path / "store"
    procs = [subprocess.Popen([sys.executable, "-m", "nnopt", "run", path, "--json", "--no-progress", "--store", str(store)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env()) for _ in range(4)]
    results = [(p.wait(timeout=300), p.stdout.read(), p.stderr.read()) for p in procs]
    assert [code for code, _, _ in results] == [0] * 4, [err[-1000:] for _, _, err in results]
    outs = [json.loads(stdout.splitlines()[-1]) for _, stdout, _ in results]
    ran = {sid: sum(statuses(o)[sid] == "ran" for o in outs) for sid in outs[0]["stages"]}
    assert ran == {"train": 1, "probe": 1}, [statuses(o) for o in outs]
    records = [json.loads(f.read_text()) for f in (store / "runs").glob("*.json")]
    assert len(records) == 4 and {r["status"] for r in records} == {"ok"}
    assert {sid: sum(r["stages"][sid]["status"] == "ran" for r in records) for sid in ran} == {"train": 1, "probe": 1}
    assert all(outcome(o) == outcome(outs[0]) for o in outs)
    assert consistent(store) == []


# ------------------------------------------------------------------ damaged artifacts
def damage(path: Path, how: str) -> None:
    if how == "missing":
        path.unlink()
    elif how == "truncated":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    else:  # altered: one byte flipped in the middle, same size
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0x01
        path.write_bytes(bytes(data))


ARTIFACTS = {"weights": "weights/final.safetensors", "result": "result.json", "metrics": "metrics.jsonl",
             "manifest": "manifest.json"}
# weights altered (test_integrity) and missing (test_robustness), result.json altered
# (test_integrity) are tested there already
COVERED = {("weights", "altered"), ("weights", "missing"), ("result", "altered")}


@pytest.mark.parametrize("kind,how", [(k, h) for k in ARTIFACTS for h in ("truncated", "altered", "missing")
                                      if (k, h) not in COVERED])
def test_a_damaged_artifact_is_detected_and_recomputed_never_used(pipeline, tmp_path, kind, how):
    path, store = pipeline(PIPELINE), tmp_path / "store"
    first = run_json(store, path)
    stage_dir = Path(first["stages"]["train"]["dir"])
    weights, metrics = stage_dir / "weights" / "final.safetensors", stage_dir / "metrics.jsonl"
    good = (weights.read_bytes(), masked_seconds(metrics.read_text()))
    target = stage_dir / ARTIFACTS[kind]
    if kind == "manifest" and how == "altered":  # still JSON: a checksum it names changes
        manifest = json.loads(target.read_text())
        digest = manifest["artifacts"]["weights/final.safetensors"]
        manifest["artifacts"]["weights/final.safetensors"] = ("0" if digest[0] != "0" else "1") + digest[1:]
        target.write_text(json.dumps(manifest))
    else:
        damage(target, how)

    again = run_json(store, path)
    assert statuses(again)["train"] == "ran"
    assert outcome(again) == outcome(first)  # the analysis read recomputed weights, not damaged ones
    assert (weights.read_bytes(), masked_seconds(metrics.read_text())) == good
    assert consistent(store) == []


@pytest.mark.parametrize("how", ["truncated", "altered", "missing"])
def test_a_damaged_checkpoint_is_never_resumed_from(pipeline, tmp_path, monkeypatch, how):
    from nnopt.core.stage import StageContext

    path = pipeline(PIPELINE)
    reference = run_json(tmp_path / "reference", path)
    store = tmp_path / "store"
    original = StageContext.save_checkpoint

    def save_then_stop(self, state):  # as a kill right after the second checkpoint
        original(self, state)
        if state["step"] == 20:
            raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(StageContext, "save_checkpoint", save_then_stop)
        assert Cli(store)("run", path, "--no-progress").exit_code == 130
    checkpoint = store / "tmp" / reference["stages"]["train"]["key"] / CHECKPOINT
    assert checkpoint.is_file()
    if how == "altered":  # a flipped byte inside a tensor: only a checksum can tell
        data = bytearray(checkpoint.read_bytes())
        data[len(data) // 3] ^= 0x01
        checkpoint.write_bytes(bytes(data))
    else:
        damage(checkpoint, how)
    resumed = run_json(store, path)
    assert outcome(resumed) == outcome(reference)
    assert differences(Path(resumed["stages"]["train"]["dir"]), Path(reference["stages"]["train"]["dir"])) == []
    assert consistent(store) == []


# ------------------------------------------------------------------ Ctrl-C
#: training slowed to ~0.1 s per log window (numerics untouched), so that a signal lands mid-training
SLOW = """\
import time
import nnopt.core.loop as loop
_flush = loop.TrainLoop._flush
def _slow(self, *args):
    time.sleep(0.1)
    return _flush(self, *args)
loop.TrainLoop._flush = _slow
"""

LONG = PIPELINE.replace("steps: 30", "steps: 400").replace("checkpoint_every: 10", "checkpoint_every: 1000")


def start(path: str, store: Path, site: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "nnopt", "run", path, "--no-progress", "--json", "--store", str(store)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env(site))


def wait_for_training(proc: subprocess.Popen, store: Path) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        lines = [line for m in (store / "tmp").glob("*/metrics.jsonl") for line in m.read_text().splitlines()]
        if len(lines) >= 3:
            return
        time.sleep(0.05)
    raise AssertionError(f"training never started: {proc.stderr.read()[-2000:] if proc.poll() is not None else ''}")


@pytest.fixture
def slow_site(tmp_path) -> Path:
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(SLOW)
    return site


def test_ctrl_c_stops_training_at_a_safe_point_with_a_checkpoint_and_the_next_run_resumes(pipeline, tmp_path, slow_site):
    path = pipeline(LONG)
    reference = run_json(tmp_path / "reference", path)
    store = tmp_path / "store"
    proc = start(path, store, slow_site)
    wait_for_training(proc, store)
    proc.send_signal(signal.SIGINT)
    code = proc.wait(timeout=60)
    err = proc.stderr.read()
    assert code == 130, err[-2000:]
    assert "safe point" in err
    key = reference["stages"]["train"]["key"]
    assert (store / "tmp" / key / CHECKPOINT).is_file()  # kept, though checkpoint_every is never reached
    assert not list((store / "stages").glob("*/*")) if (store / "stages").exists() else True

    resumed = run_json(store, path)
    assert outcome(resumed) == outcome(reference)
    assert differences(Path(resumed["stages"]["train"]["dir"]), Path(reference["stages"]["train"]["dir"])) == []
    assert consistent(store) == []


def test_a_second_ctrl_c_exits_at_once_and_leaves_the_store_consistent(pipeline, tmp_path, slow_site):
    path = pipeline(LONG)
    store = tmp_path / "store"
    proc = start(path, store, slow_site)
    wait_for_training(proc, store)
    proc.send_signal(signal.SIGINT)
    proc.send_signal(signal.SIGINT)
    t0 = time.monotonic()
    assert proc.wait(timeout=60) == 130
    assert time.monotonic() - t0 < 5
    assert not list((store / "stages").glob("*/*")) if (store / "stages").exists() else True
    again = run_json(store, path)
    assert statuses(again) == {"train": "ran", "probe": "ran"}
    assert consistent(store) == []
