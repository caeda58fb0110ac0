"""One combination of a sweep, run as an ordinary ``nnopt run`` of it: what every executor calls.

A ``Task`` names a combination by its index in ``load_plans``' order (the matrix order, which
is deterministic for a given file and ``--set`` list) and carries the stage keys the
parent planned, so a worker that plans the file again and finds other keys (the file was
edited meanwhile) refuses instead of running something else. ``run_task`` plans the file
(once per worker process), runs that combination with ``runner.run_plan`` against the shared
store (whose per-key file locks make two workers needing the same upstream stage compute it
once: one computes, the other waits and reuses it), and returns the run report as plain
data (picklable and JSON-able), so the parent can rebuild it with ``report_from_dict``.
It imports no torch at module level: a spawned worker sets its thread count first.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

_plans_cache: dict[tuple[str, tuple[str, ...]], list[Any]] = {}


@dataclass(frozen=True)
class Task:
    """What a worker needs to run combination ``index`` of ``file`` (paths absolute)."""

    file: str
    sets: tuple[str, ...]
    store: str
    index: int
    keys: tuple[str, ...]  # the stage keys the parent planned, in run order
    invocation: str
    threads: int  # torch threads of this task (the machine's cores divided among the workers)
    force: bool = False
    redo: tuple[str, ...] = ()
    wait: bool = True
    debug: bool = False
    argv: tuple[str, ...] = field(default_factory=tuple)


def use_threads(threads: int) -> None:
    """Give this process ``threads`` torch threads for every stage it runs: set in the
    environment (so ``cpu_share.share_threads`` takes it as the user's choice and divides it
    no further) and in torch, if it is loaded or loadable."""
    os.environ["OMP_NUM_THREADS"] = str(threads)
    os.environ["MKL_NUM_THREADS"] = str(threads)
    import torch

    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


def run_task(task: Task) -> dict[str, Any]:
    """Run one combination (see the module docstring); returns ``report_to_dict`` of its report.
    ``StageBusy`` (``wait=False`` and a stage locked elsewhere) and ``KeyboardInterrupt``
    propagate, as they do from ``run_plan``."""
    use_threads(task.threads)
    from ..planner import load_plans
    from ..runner import run_plan
    from ..store import Store

    cache_key = (task.file, tuple(task.sets))
    if cache_key not in _plans_cache:
        _plans_cache[cache_key] = load_plans(task.file, list(task.sets))
    plans = _plans_cache[cache_key]
    plan = plans[task.index] if task.index < len(plans) else None
    if plan is None or tuple(s.key for s in plan.stages) != task.keys:
        raise PlanChanged("the pipeline file or a component changed after the sweep was planned; run the sweep again")
    report = run_plan(plan, Store(Path(task.store)), force=task.force, redo=set(task.redo), wait=task.wait, progress=False,
                      argv=list(task.argv), debug=task.debug, invocation=task.invocation)
    return report_to_dict(report)


class PlanChanged(RuntimeError):
    """A worker planned the file to other stage keys than the parent did."""


def report_to_dict(report: Any) -> dict[str, Any]:
    return asdict(report)


def report_from_dict(data: dict[str, Any]) -> Any:
    from ..runner import RunReport, StageReport

    stages = [StageReport(**s) for s in data["stages"]]
    return RunReport(data["pipeline"], data["run"], data["params"], stages, data.get("invocation", ""))


def failed_result(task: Task, message: str, plan: Any) -> dict[str, Any]:
    """The report of a combination whose worker could not run it (died, lost, refused): its
    first stage failed with ``message``, the rest skipped. Nothing of it is in the store."""
    from ..runner import new_run_id

    ids, name = [s.id for s in plan.stages], plan.name
    stages = [{"id": sid, "status": "failed" if i == 0 else "skipped", "key": key, "dir": "", "seconds": 0.0, "metrics": {},
               "results": {}, "message": message if i == 0 else f"skipped: '{ids[0]}' is failed", "after_divergence": False}
              for i, (sid, key) in enumerate(zip(ids, task.keys))]
    return {"pipeline": name, "run": new_run_id(name), "params": dict(plan.params),
            "stages": stages, "invocation": task.invocation}
