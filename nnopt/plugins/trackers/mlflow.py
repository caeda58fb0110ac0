"""MLflow runs, logged as the run goes (``nnopt[mlflow]``: mlflow-skinny).

One MLflow run per nnopt run, in the experiment named after the pipeline (or ``experiment``),
at ``tracking_uri`` (default: MLflow's own ``MLFLOW_TRACKING_URI`` when set, else a local
file store ``file:STORE/mlruns``). Its name is the nnopt run id; the matrix combination's
values are its params; each number of a record is a metric ``STAGE/KEY`` at the record's step.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, ClassVar

from pydantic import Field

from nnopt.core.kinds import Params, RunInfo, Tracker
from nnopt.core.trackers import missing_extra, scalars

_STATUS = {"ok": "FINISHED", "diverged": "FINISHED", "failed": "FAILED", "interrupted": "KILLED"}


class MlflowParams(Params):
    tracking_uri: str | None = Field(None, description="MLflow tracking URI (default $MLFLOW_TRACKING_URI, "
                                                        "else file:STORE/mlruns)")
    experiment: str | None = Field(None, description="experiment name (default: the pipeline's name)")


class Mlflow(Tracker):
    """Metrics through ``mlflow.tracking.MlflowClient`` (no global active run is touched)."""

    Params: ClassVar[type[Params]] = MlflowParams

    def check(self) -> None:
        error = missing_extra("mlflow", "mlflow", "mlflow")
        if error is not None:
            raise error

    def start_run(self, run: RunInfo) -> None:
        from mlflow.tracking import MlflowClient

        uri = self.params.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or \
            (Path(run.store).resolve() / "mlruns").as_uri()
        self.tracking_uri = uri
        if uri.startswith("file:") or "://" not in uri:
            # MLflow 3 refuses its file store unless asked; a local store is this tracker's
            # default (no server, nothing to install beyond mlflow-skinny), so it asks for it
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        self._client = MlflowClient(tracking_uri=uri)
        name = self.params.experiment or run.pipeline
        experiment = self._client.get_experiment_by_name(name)
        experiment_id = experiment.experiment_id if experiment else self._client.create_experiment(name)
        tags = {"nnopt.pipeline": run.pipeline, "nnopt.file": os.path.abspath(run.file),
                "nnopt.invocation": run.invocation or run.run}
        self.run_id = self._client.create_run(experiment_id, run_name=run.run, tags=tags).info.run_id
        for key, value in run.params.items():
            self._client.log_param(self.run_id, key, value)
        self._steps: dict[str, int] = {}

    def log(self, stage_id: str, record: dict[str, Any]) -> None:
        from mlflow.entities import Metric

        step = record.get("step")
        if not isinstance(step, int):
            step = self._steps.get(stage_id, 0)
        self._steps[stage_id] = step + 1
        now = int(time.time() * 1000)
        metrics = [Metric(f"{stage_id}/{key}", value, now, step) for key, value in scalars(record).items()]
        if metrics:
            self._client.log_batch(self.run_id, metrics=metrics)

    def end_run(self, status: str) -> None:
        self._client.set_terminated(self.run_id, status=_STATUS.get(status, "FINISHED"))
