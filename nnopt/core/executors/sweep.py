"""Running the combinations of a ``matrix:`` in parallel, by shard, or on a cluster.

``run_sweep`` is ``invocation.run_pipeline`` with the sweep options of ``nnopt run``
(``--jobs``, ``--shard``, ``--executor``, ``--fail-fast``): it validates the whole file
first (any error: ``SpecError``, exit 2, nothing run), selects the shard's combinations
(``shard_indices``), answers every combination whose stages are all complete in the parent
(no worker is started for it), and hands the others, as ``task.Task``s, to the executor:
``local`` (``jobs`` worker processes on this machine; with one job, in this process),
``ray`` (Ray tasks) or ``slurm`` (one submitit job array). Every worker runs an ordinary
``run_plan`` against the shared store, so a stage two combinations share is computed once
(the store's per-key lock). The reports come back in matrix order, whatever order the
workers finished in, and every run is recorded under one invocation id, as a serial run's.

``--fail-fast`` stops at the first combination that *failed* (a stage failed; a divergence
is a result of the sweep, not a failure of it): no combination starts after it (the ray and
slurm executors cancel those still queued or running), and each combination not run is
reported (and recorded) with every stage ``skipped``.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ..errors import Diagnostic, Location, SpecError
from ..registry import Registry
from ..store import Store
from .task import Task, failed_result, report_from_dict

EXECUTORS = ("local", "ray", "slurm")
#: the optional extra each executor needs: (module, extra)
EXTRAS = {"ray": ("ray", "ray"), "slurm": ("submitit", "slurm")}


@dataclass(frozen=True)
class SweepOptions:
    """The sweep options of ``nnopt run`` (SPEC §4)."""

    jobs: int | None = None  # None: 1 for local, the executor's capacity otherwise
    shard: tuple[int, int] | None = None  # (I, N), 1-based
    executor: str = "local"
    fail_fast: bool = False
    ray_address: str | None = None
    ray_cpus: int = 1  # Ray CPUs (and torch threads) of a task on an existing cluster
    slurm_partition: str | None = None
    slurm_time: int = 60  # minutes
    slurm_gpus: int = 0
    slurm_cpus: int = 1
    slurm_mem_gb: float | None = None
    slurm_cluster: str = "auto"  # auto | slurm | local | debug (submitit's AutoExecutor)
    slurm_folder: str | None = None
    slurm_extra: dict[str, str] = field(default_factory=dict)

    @property
    def default(self) -> bool:
        """Whether these are the options of a plain ``nnopt run`` (serial, whole, keep going)."""
        return self == SweepOptions()


def parse_shard(text: str) -> tuple[int, int]:
    """``"2/4"`` → ``(2, 4)``: shard I of N, 1-based (1 <= I <= N); ValueError otherwise."""
    i, sep, n = text.partition("/")
    if not sep or not i.strip().isdigit() or not n.strip().isdigit():
        raise ValueError(f"'{text}' is not I/N (two whole numbers, e.g. 2/4)")
    i_, n_ = int(i), int(n)
    if n_ < 1 or not 1 <= i_ <= n_:
        raise ValueError(f"'{text}': shards are numbered 1 to N, so 1 <= I <= N and N >= 1")
    return i_, n_


def shard_indices(count: int, shard: tuple[int, int] | None) -> list[int]:
    """The combinations (indices in matrix order) of shard ``(I, N)``: round-robin, those
    ``k`` with ``k mod N == I - 1``. Shards 1..N partition ``range(count)``; every shard's
    combinations differ in size by at most one."""
    if shard is None:
        return list(range(count))
    i, n = shard
    return [k for k in range(count) if k % n == i - 1]


def cores() -> int:
    """The cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def check_extra(executor: str) -> None:
    """A missing optional extra is a command-line error (exit 2) naming what to install."""
    if executor not in EXTRAS:
        return
    module, extra = EXTRAS[executor]
    try:
        __import__(module)
    except ImportError:
        raise SpecError([Diagnostic(Location(f"--executor {executor}"), "",
                                    f"the {executor} executor needs the optional extra: pip install 'nnopt[{extra}]'")]) from None


class NotRunReport:
    """Marker mixin: a combination --fail-fast did not run (its status reads ``skipped``)."""


def _not_run(plan: Any, invocation: str) -> Any:
    from ..runner import RunReport, StageReport, new_run_id

    class NotRun(NotRunReport, RunReport):
        @property
        def status(self) -> str:
            return "skipped"

    stages = [StageReport(s.id, "skipped", s.key, "", message="not run: an earlier combination failed (--fail-fast)")
              for s in plan.stages]
    return NotRun(plan.name, new_run_id(plan.name), dict(plan.params), stages, invocation)


def run_sweep(
    file: str,
    sets: list[str],
    store: Store,
    options: SweepOptions,
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
) -> Any:
    """Run ``file``'s combinations with ``options`` (module docstring); an ``Invocation``."""
    import sys

    from .. import plan_index
    from ..invocation import Invocation, _check_redo
    from ..runner import cached_runs, new_run_id, record_run, run_plan

    check_extra(options.executor)
    argv = list(argv if argv is not None else sys.argv)
    registry = registry or Registry()
    if not Path(file).is_file():
        raise SpecError([Diagnostic(Location(file), "", "no such pipeline file")])
    digest = plan_index.index_digest(file, list(sets), registry)
    whole = options.shard is None
    if whole and not force and not redo:  # a shard never answers for, nor saves, the whole matrix
        entry = plan_index.lookup(store, digest)
        if entry is not None:
            reports = cached_runs(store, entry, file, argv)
            for rep in reports:
                _announce(rep, None, on_stage, on_cell, len(reports) > 1)
            return Invocation(entry["pipeline"], reports, from_index=True)

    from ..planner import load_plans

    plans = load_plans(file, list(sets), registry)
    _check_redo(plans, redo)
    indices = shard_indices(len(plans), options.shard)
    invocation = new_run_id(plans[0].name)
    many = len(plans) > 1
    reports: dict[int, Any] = {}
    stop = False

    def finished(index: int, report: Any) -> bool:
        nonlocal stop
        reports[index] = report
        _announce(report, plans[index], on_stage, on_cell, many)
        stop = stop or (options.fail_fast and report.status == "failed")
        return stop

    serial = options.executor == "local" and (options.jobs or 1) == 1
    tasks: list[Task] = []
    for i in indices:
        plan = plans[i]
        cached = not force and not redo and all(store.is_complete(s.key) for s in plan.stages)
        if stop:
            break
        if serial or cached:  # a cached combination costs a worker more than it costs here
            if serial and many and on_cell:
                on_cell(plan)
            rep = run_plan(plan, store, force=force, redo=set(redo), wait=wait, invocation=invocation, progress=progress,
                           on_stage=on_stage if serial else None, debug=debug, argv=argv)
            reports[i] = rep
            if not serial:
                _announce(rep, plan, on_stage, on_cell, many)
            stop = stop or (options.fail_fast and rep.status == "failed")
            continue
        tasks.append(Task(str(Path(file).resolve()), tuple(sets), str(store.root.resolve()), i, tuple(s.key for s in plan.stages),
                          invocation, 1, force, tuple(redo), wait, debug, tuple(argv)))
    if tasks and not stop:
        run_tasks(tasks, options, plans, store, file, argv, finished)
    for i in indices:  # what --fail-fast did not run is recorded as such
        if i not in reports:
            reports[i] = _not_run(plans[i], invocation)
            record_run(store, reports[i], file, argv, time.time())
    ordered = [reports[i] for i in indices]
    if whole and all(s.status in ("ran", "cached", "diverged") for r in ordered for s in r.stages):
        plan_index.save(store, digest, plans)
    return Invocation(plans[0].name, ordered)


def run_tasks(tasks: list[Task], options: SweepOptions, plans: list[Any], store: Store, file: str, argv: list[str],
              finished: Callable[[int, Any], bool]) -> None:
    """Hand ``tasks`` to the executor; ``finished(index, report)`` as each comes back (True:
    stop, --fail-fast). A task whose worker failed outside ``run_plan`` (it died, the file
    changed) is reported failed, and recorded here since its worker recorded nothing final."""
    from ..runner import record_run

    def on_result(task: Task, result: dict[str, Any] | BaseException) -> bool:
        if isinstance(result, BaseException):
            report = report_from_dict(failed_result(task, f"{type(result).__name__}: {result}", plans[task.index]))
            record_run(store, report, file, argv, time.time())
        else:
            report = report_from_dict(result)
        return finished(task.index, report)

    if options.executor == "local":
        from .local import execute
    elif options.executor == "ray":
        from .ray_executor import execute
    else:
        from .slurm import execute
    execute(tasks, options, on_result)


def _announce(report: Any, plan: Any, on_stage: Callable | None, on_cell: Callable | None, many: bool) -> None:
    """What a serial run says as it goes, said when a combination's report arrives."""
    if many and on_cell and plan is not None:
        on_cell(plan)
    if on_stage:
        for st in report.stages:
            on_stage(st)
