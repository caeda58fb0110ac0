"""TensorBoard event files, written as the run goes (``nnopt[tensorboard]``).

One log directory per run, ``LOG_DIR/PIPELINE/RUN`` (default ``LOG_DIR``: STORE/tensorboard),
so ``tensorboard --logdir STORE/tensorboard`` shows every run side by side. Each number of a
record becomes a scalar ``STAGE/KEY`` (``train/loss``, ``train/test_accuracy``, a tracked
analyzer's ``train/hessian/top_eigenvalue``) at the record's ``step``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from pydantic import Field

from nnopt.core.kinds import Params, RunInfo, Tracker
from nnopt.core.trackers import missing_extra, scalars


class TensorBoardParams(Params):
    log_dir: str | None = Field(None, description="root of the event files (default STORE/tensorboard)")
    flush_secs: float = Field(5.0, gt=0, description="how often pending events reach the file, seconds")


class TensorBoard(Tracker):
    """Scalars through ``torch.utils.tensorboard.SummaryWriter``; the matrix combination's
    values as hyperparameter text, the run's end status as a text summary."""

    Params: ClassVar[type[Params]] = TensorBoardParams

    def check(self) -> None:
        error = missing_extra("tensorboard", "tensorboard", "tensorboard")
        if error is not None:
            raise error

    def start_run(self, run: RunInfo) -> None:
        from torch.utils.tensorboard import SummaryWriter

        root = Path(self.params.log_dir) if self.params.log_dir else Path(run.store) / "tensorboard"
        self.log_dir = root / run.pipeline / run.run
        self._writer = SummaryWriter(str(self.log_dir), flush_secs=self.params.flush_secs)
        self._steps: dict[str, int] = {}
        if run.params:
            self._writer.add_text("params", "\n".join(f"{k} = {v}" for k, v in run.params.items()))

    def log(self, stage_id: str, record: dict[str, Any]) -> None:
        step = record.get("step")
        if not isinstance(step, int):  # a record without a step: the stage's records are counted
            step = self._steps.get(stage_id, 0)
        self._steps[stage_id] = step + 1
        for key, value in scalars(record).items():
            self._writer.add_scalar(f"{stage_id}/{key}", value, global_step=step)

    def end_run(self, status: str) -> None:
        self._writer.add_text("status", status)
        self._writer.close()
