"""One JSON-lines stream per run: every stage's records, in the order they were logged.

Each stage already keeps its own ``metrics.jsonl`` in its stage directory (always, tracker or
not); this tracker is the same records as one file per run, each line tagged with its stage,
for tools that tail one file (``tail -f``, a notebook polling it) while the run goes on.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, ClassVar

from pydantic import Field

from nnopt.core.kinds import Params, RunInfo, Tracker


class JsonlParams(Params):
    path: str | None = Field(None, description="the file to append to (default STORE/tracking/RUN.jsonl); "
                                                "{run} and {pipeline} in it are replaced")


class Jsonl(Tracker):
    """Appends ``{"stage": ID, "time": UNIX_SECONDS, **record}`` per logged record, flushed
    at once, to one file per run; a ``{"event": "start"|"end", ...}`` line opens and closes it."""

    Params: ClassVar[type[Params]] = JsonlParams

    def start_run(self, run: RunInfo) -> None:
        text = self.params.path or str(Path(run.store) / "tracking" / "{run}.jsonl")
        self.path = Path(text.replace("{run}", run.run).replace("{pipeline}", run.pipeline))
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "a", encoding="utf-8")
        self._write({"event": "start", "pipeline": run.pipeline, "run": run.run, "params": run.params, "time": time.time()})

    def log(self, stage_id: str, record: dict[str, Any]) -> None:
        self._write({"stage": stage_id, "time": time.time(), **record})

    def end_run(self, status: str) -> None:
        self._write({"event": "end", "status": status, "time": time.time()})
        self._file.close()

    def _write(self, line: dict[str, Any]) -> None:
        # flushed per line: a reader following the file sees each record as it is logged
        self._file.write(json.dumps(line, sort_keys=True) + "\n")
        self._file.flush()
