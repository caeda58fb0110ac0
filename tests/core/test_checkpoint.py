"""Resumable checkpoints: one atomic file, and a kill at any write resumes to the same bits.

The kill tests inject the failure: ``crash_points`` runs the pipeline in children that die
with ``os._exit`` (as SIGKILL would: no cleanup, Python buffers lost) before, or halfway
through, each write of a checkpoint and of the steps after it; each store is then resumed
here and must end bitwise as an uninterrupted run (metrics.jsonl apart from wall-clock times).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import Cli

import crash_points
import nnopt
from nnopt.core.stage import StageContext
from nnopt.core.store import CHECKPOINT

CHECKPOINTED = """\
name: ckpt
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
    track: [{name: grad_norms, every: 7}]
"""


# ------------------------------------------------------------------ the file
def context(out_dir: Path) -> StageContext:
    out_dir.mkdir(parents=True, exist_ok=True)
    return StageContext("train", None, 0, torch.device("cpu"), out_dir)


def test_a_checkpoint_is_one_file_holding_the_state_and_the_metrics_length(tmp_path):
    ctx = context(tmp_path / "w")
    ctx.log_metrics({"step": 1})
    ctx.save_checkpoint({"step": 1, "w": torch.arange(3.0)})
    ctx.log_metrics({"step": 2})  # after the checkpoint: dropped on resumption
    ctx.close()
    assert sorted(p.name for p in ctx.out_dir.iterdir()) == sorted([CHECKPOINT, "metrics.jsonl"])

    resumed = context(tmp_path / "w")
    state = resumed.load_checkpoint()
    assert state["step"] == 1 and torch.equal(state["w"], torch.arange(3.0))
    assert (ctx.out_dir / "metrics.jsonl").read_text() == '{"step": 1}\n'


def test_a_resumed_stage_hands_its_trackers_the_lines_kept_from_the_killed_run(tmp_path):
    killed = context(tmp_path / "w")
    killed.log_metrics({"step": 1})
    killed.log_metrics({"step": 2})
    killed.save_checkpoint({"step": 2})
    killed.log_metrics({"step": 3})  # after the checkpoint: recomputed, so logged again by the resumed run
    killed.close()
    sent = []
    resumed = StageContext("train", None, 0, torch.device("cpu"), tmp_path / "w", tracker=sent.append)
    assert resumed.load_checkpoint() == {"step": 2}
    assert sent == [{"step": 1}, {"step": 2}]  # this run's tracker run gets the whole history
    resumed.log_metrics({"step": 3})
    assert sent[-1] == {"step": 3}


def test_a_checkpoint_naming_metrics_lines_that_are_gone_is_discarded_and_the_stage_starts_over(tmp_path):
    ctx = context(tmp_path / "w")
    ctx.log_metrics({"step": 1, "loss": 0.5})
    ctx.save_weights({"w": torch.zeros(2)}, step=0)
    ctx.save_checkpoint({"step": 1})
    ctx.close()
    metrics = ctx.out_dir / "metrics.jsonl"
    metrics.write_bytes(metrics.read_bytes()[:5])  # say, a crash of the machine lost the rest
    assert context(tmp_path / "w").load_checkpoint() is None
    assert list(ctx.out_dir.iterdir()) == []  # as the engine hands a stage that has no checkpoint


class Code:
    """Unpickling this runs ``open(marker, "w")``: a checkpoint must never do that."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


@pytest.mark.parametrize("content", ["garbage", "older format", "code"])
def test_a_checkpoint_that_cannot_be_used_is_discarded_and_the_stage_starts_over(tmp_path, content):
    ctx = context(tmp_path / "w")
    ctx.log_metrics({"step": 1})
    ctx.close()
    path, marker = ctx.out_dir / CHECKPOINT, tmp_path / "code-ran"
    if content == "garbage":
        path.write_bytes(b"\x00not a checkpoint")
    elif content == "older format":  # the bare state of nnopt before one-file checkpoints
        torch.save({"step": 1}, path)
    else:
        torch.save({"format": 1, "metrics_bytes": 0, "state": {"step": Code(marker)}}, path)
    assert context(tmp_path / "w").load_checkpoint() is None
    assert list(ctx.out_dir.iterdir()) == []
    assert not marker.exists()  # loaded with weights_only: data, never code


# ------------------------------------------------------------------ kills
def run_json(store: Path, path: str) -> dict:
    result, out = Cli(store).run_json(path, "--no-progress")
    assert result.exit_code == 0, result.stderr
    return out


def masked_seconds(text: str) -> str:
    """metrics.jsonl with its wall-clock times blanked: all else must match byte for byte."""
    return re.sub(r'"seconds": [-+.0-9eE]+', '"seconds": _', text)


def differences(got: Path, want: Path) -> list[str]:
    """How stage directory ``got`` differs from ``want``: artifacts, weights, metrics."""
    out = []
    artifacts = [set(json.loads((d / "manifest.json").read_text())["artifacts"]) for d in (got, want)]
    if artifacts[0] != artifacts[1]:
        out.append(f"artifacts {sorted(artifacts[0] ^ artifacts[1])} differ")
    for rel in sorted(a for a in artifacts[1] if a.startswith("weights/")):
        if not (got / rel).is_file() or (got / rel).read_bytes() != (want / rel).read_bytes():
            out.append(f"{rel} differs")
    lines = [masked_seconds((d / "metrics.jsonl").read_text()).splitlines() for d in (got, want)]
    if lines[0] != lines[1]:
        missing = [line for line in lines[1] if line not in lines[0]]
        extra = [line for line in lines[0] if line not in lines[1]]
        out.append(f"metrics.jsonl: {len(lines[0])} lines for {len(lines[1])}; missing {missing[:3]}, extra {extra[:3]}")
    return out


def kill_points(trace: list[crash_points.Event], tmp_path: Path) -> list[dict]:
    """Before each write of the first checkpoint (its run resumes from nothing); before, and
    halfway through where a write can be torn, each write of the second (its run resumes from
    the first) and of the three events after it; before each write from the final weights to
    the end of the run (the stage's ending, its commit, the run record)."""
    torn = {"torch.save": ["torn", "unflushed"], "log_metrics": ["torn"]}
    first, second = crash_points.since(trace, 1), crash_points.since(trace, 2)
    inside = sum(e.inside for e in second)
    final = max(j for j, e in enumerate(second) if e.name == "save_weights")
    chosen = [(1, j, ["before"]) for j, e in enumerate(first) if e.inside]
    chosen += [(2, j, ["before", *torn.get(second[j].name, [])]) for j in range(inside + 3)]
    chosen += [(2, j, ["before"]) for j in range(max(final, inside + 3), len(second))]
    return [{"checkpoint": n, "index": j, "variant": v, "event": crash_points.since(trace, n)[j].name,
             "store": str(tmp_path / f"killed-{n}-{j}-{v}")} for n, j, variants in chosen for v in variants]


def test_a_kill_at_any_write_of_a_checkpointed_run_resumes_to_the_same_bits(pipeline, tmp_path, monkeypatch):
    path = pipeline(CHECKPOINTED)
    trace: list[crash_points.Event] = []
    with monkeypatch.context() as patch:
        crash_points.record(patch, trace)
        reference = Path(run_json(tmp_path / "reference", path)["stages"]["train"]["dir"])
    assert [e.name for e in trace].count("checkpoint") == 2  # at steps 10 and 20 of 30
    points = kill_points(trace, tmp_path)

    job = tmp_path / "job.json"
    job.write_text(json.dumps({"pipeline": path, "argv": ["run", path, "--no-progress"], "points": points}))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(Path(nnopt.__file__).parents[1]),
                                                                     os.environ.get("PYTHONPATH")]))}
    done = subprocess.run([sys.executable, crash_points.__file__, str(job)], capture_output=True, text=True,
                          timeout=900, env=env)
    assert done.returncode == 0, done.stderr
    exits = json.loads(done.stdout.splitlines()[-1])

    failures = []
    for p in points:
        where = f"killed {p['variant']} {p['event']} (event {p['index']} of checkpoint {p['checkpoint']})"
        killed, resumed = exits[p["store"]]["killed"], exits[p["store"]]["resumed"]
        if killed != crash_points.KILLED:
            failures.append(f"{where}: exit {killed}: {Path(p['store'] + '.killed.log').read_text()[-500:]}")
        elif resumed != 0:
            failures.append(f"{where}: resumed, exit {resumed}: {Path(p['store'] + '.resumed.log').read_text()[-500:]}")
        else:
            (stage,) = Path(p["store"], "stages").glob("*/*")
            failures += [f"{where}: {d}" for d in differences(stage, reference)]
    assert not failures, "\n".join(failures)
