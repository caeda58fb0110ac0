"""One ``nnopt run``: the plan index first, else planning and running every matrix cell.

The CLI and the Python API (``nnopt.run``) both call ``run_pipeline``; it returns the run
reports of the invocation (one per matrix combination) and prints nothing: callers decide
what to show (``on_stage`` is called as each stage finishes).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from .errors import Diagnostic, Location, SpecError, did_you_mean
from .registry import Registry
from .store import Store


@dataclass
class Invocation:
    """What one run of a pipeline file did: its name and one report per matrix cell."""

    pipeline: str
    reports: list[Any]  # runner.RunReport
    from_index: bool = False  # answered from the plan index, without planning (or torch)

    @property
    def failed(self) -> bool:
        return any(r.status != "ok" for r in self.reports)

    def to_json(self) -> dict[str, Any]:
        """The ``nnopt run --json`` object: one run, or ``{"pipeline", "runs"}`` for a matrix."""
        if len(self.reports) == 1 and not self.reports[0].params:
            return self.reports[0].to_json()
        return {"pipeline": self.pipeline, "runs": [r.to_json() for r in self.reports]}


def run_pipeline(
    file: str,
    sets: list[str],
    store: Store,
    *,
    force: bool = False,
    redo: tuple[str, ...] = (),
    wait: bool = True,
    progress: bool = False,
    argv: list[str] | None = None,
    debug: bool = False,
    on_stage: Callable[[Any], None] | None = None,
    on_cell: Callable[[Any], None] | None = None,
    registry: Registry | None = None,
    track: list[Any] = (),
) -> Invocation:
    """Run ``file`` with ``--set`` overrides ``sets``: everything not cached is computed.

    A pipeline whose plan index entry is intact is answered from it (no planning, no torch);
    otherwise it is validated (``SpecError`` on any problem, before anything runs) and each
    matrix cell runs in turn. ``on_cell(plan)`` is called before a cell of a matrix runs.
    ``track``: resolved ``--track`` trackers (``trackers.track_refs``) besides the file's.
    """
    from . import plan_index
    from .runner import cached_runs

    argv = argv if argv is not None else sys.argv
    registry = registry or Registry()
    if not Path(file).is_file():
        raise SpecError([Diagnostic(Location(file), "", "no such pipeline file")])
    digest = plan_index.index_digest(file, list(sets), registry)
    if not force and not redo:
        entry = plan_index.lookup(store, digest)
        if entry is not None:
            reports = cached_runs(store, entry, file, argv)
            if on_stage:
                for rep in (s for r in reports for s in r.stages):
                    on_stage(rep)
            return Invocation(entry["pipeline"], reports, from_index=True)

    from .planner import load_plans
    from .runner import new_run_id, run_plan

    plans = load_plans(file, list(sets), registry)
    _check_redo(plans, redo)
    invocation = new_run_id(plans[0].name)
    reports = []
    for plan in plans:
        if len(plans) > 1 and on_cell:
            on_cell(plan)
        reports.append(run_plan(plan, store, force=force, redo=set(redo), wait=wait, invocation=invocation,
                                progress=progress, on_stage=on_stage, debug=debug, argv=argv, track=list(track)))
    if all(s.status in ("ran", "cached", "diverged") for r in reports for s in r.stages):
        plan_index.save(store, digest, plans)
    return Invocation(plans[0].name, reports)


def _check_redo(plans: list[Any], redo: tuple[str, ...]) -> None:
    ids = {s.id for p in plans for s in p.stages}
    bad = [Diagnostic(Location(f"--redo {r}"), r, "no such stage in this pipeline", did_you_mean(r, ids)) for r in redo if r not in ids]
    if bad:
        raise SpecError(bad)
