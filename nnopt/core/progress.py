"""A progress bar on stderr for a running stage: step, loss and throughput (rich)."""

from __future__ import annotations

import time
from typing import Any


class StageProgress:
    """``with ctx.progress(total, "train") as bar: bar.update(1, loss=0.3)``.

    Redraws at most ~10 times a second (rich's refresh), so updating every step is cheap.
    Disabled, it only counts, which keeps the stage code free of ``if progress`` branches.
    """

    def __init__(self, total: int, description: str, enabled: bool = True):
        self.total = total
        self.description = description
        self.enabled = enabled
        self.completed = 0
        self._progress = None
        self._task = None
        self._start = time.perf_counter()

    def __enter__(self) -> "StageProgress":
        self._start = time.perf_counter()
        if self.enabled:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self._progress = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[info]}"),
                TimeRemainingColumn(),
                console=Console(stderr=True),
                transient=False,
            )
            self._progress.start()
            self._task = self._progress.add_task(self.description, total=self.total, info="")
        return self

    def update(self, advance: int = 1, **fields: Any) -> None:
        self.completed += advance
        if self._progress is None:
            return
        elapsed = max(time.perf_counter() - self._start, 1e-9)
        parts = [f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in fields.items()]
        parts.append(f"{self.completed / elapsed:,.0f} steps/s")
        self._progress.update(self._task, advance=advance, info="  ".join(parts))

    def __exit__(self, *exc: Any) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
