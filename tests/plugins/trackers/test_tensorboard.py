"""The tensorboard tracker: event files that TensorBoard's own reader reads back."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

PIPELINE = """\
name: tb
seed: 0
device: cpu
data: {{name: synthetic, task: gaussian_mixture, n_train: 64, n_test: 32, dim: 4, batch_size: 16}}
model: {{arch: {{name: mlp, widths: [8]}}}}
loss: cross_entropy
trackers: [{{name: tensorboard, log_dir: '{log_dir}'}}]
stages:
  train:
    kind: train
    optimizer: {{name: sgd, lr: 0.1}}
    steps: 20
    log_every: 5
"""


def test_event_files_hold_every_logged_window_and_evaluation(tmp_path: Path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from nnopt.core.invocation import run_pipeline
    from nnopt.core.store import Store

    path = tmp_path / "p.yaml"
    path.write_text(PIPELINE.format(log_dir=tmp_path / "tb"))
    result = run_pipeline(str(path), [], Store(tmp_path / "store"))
    report = result.reports[0]
    assert report.status == "ok"
    run_dir = tmp_path / "tb" / "tb" / report.run  # LOG_DIR/PIPELINE/RUN
    events = EventAccumulator(str(run_dir))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"train/loss", "train/lr", "train/test_loss", "train/test_accuracy"} <= tags
    loss = events.Scalars("train/loss")
    assert [e.step for e in loss] == [5, 10, 15, 20]
    logged = [json.loads(line) for line in (Path(report.stages[0].dir) / "metrics.jsonl").read_text().splitlines()]
    assert [e.value for e in loss] == pytest.approx([r["loss"] for r in logged if "loss" in r], rel=1e-6)
    assert len(events.Scalars("train/lr")) == 4
