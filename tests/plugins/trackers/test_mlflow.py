"""The mlflow tracker: a local file store (``file:`` URI) holding the run's metrics."""

from __future__ import annotations

from pathlib import Path

import pytest

PIPELINE = """\
name: mlf
seed: 0
device: cpu
data: {{name: synthetic, task: gaussian_mixture, n_train: 64, n_test: 32, dim: 4, batch_size: 16}}
model: {{arch: {{name: mlp, widths: [8]}}}}
loss: cross_entropy
trackers: [{{name: mlflow, tracking_uri: '{uri}', experiment: trials}}]
stages:
  train:
    kind: train
    optimizer: {{name: sgd, lr: 0.1}}
    steps: 20
    log_every: 5
matrix:
  stages.train.optimizer.lr: [0.1]
"""


def test_the_file_store_has_the_runs_metrics_params_and_status(tmp_path: Path, monkeypatch):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    from nnopt.core.invocation import run_pipeline
    from nnopt.core.store import Store

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    uri = (tmp_path / "mlruns").as_uri()
    path = tmp_path / "p.yaml"
    path.write_text(PIPELINE.format(uri=uri))
    report = run_pipeline(str(path), [], Store(tmp_path / "store")).reports[0]
    assert report.status == "ok"
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("trials")
    [run] = client.search_runs([experiment.experiment_id])
    assert run.info.run_name == report.run and run.info.status == "FINISHED"
    assert run.data.params == {"stages.train.optimizer.lr": "0.1"}
    assert {"train/loss", "train/lr", "train/test_loss", "train/test_accuracy"} <= set(run.data.metrics)
    history = client.get_metric_history(run.info.run_id, "train/loss")
    assert sorted(m.step for m in history) == [5, 10, 15, 20]
    assert run.data.metrics["train/test_accuracy"] == pytest.approx(report.stages[0].metrics["test_accuracy"])
