"""The Slurm executor (``--executor slurm``, extra ``nnopt[slurm]``): one job array per sweep.

Submitted through submitit's ``AutoExecutor``: the combinations not already cached become
one array (``map_array``), every element ``task.run_task`` (an ordinary run of one
combination) with the user's ``--slurm-partition``, ``--slurm-time`` (minutes),
``--slurm-gpus`` (per node), ``--slurm-cpus`` (per task; torch runs on as many threads),
``--slurm-mem`` (GB) and ``--slurm-option KEY=VALUE`` (any other sbatch option); ``--jobs J``
caps how many elements run at once (``slurm_array_parallelism``). submitit's job folder,
logs and pickles are ``<store>/sweeps/<invocation>/slurm`` unless ``--slurm-folder`` says
otherwise: it and the store must be on a filesystem every node sees (SPEC §6).
``--slurm-cluster local`` runs the array as local processes (submitit's LocalExecutor),
``debug`` in this process: both for trying a sweep without a cluster. This command waits
for the array and prints the sweep as a local run does; if it is stopped, the jobs go on,
and a later ``nnopt run`` of the file finds what they finished.
``--fail-fast`` cancels the elements not yet finished.
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

from .task import Task, run_task

POLL_S = 0.5


def execute(tasks: list[Task], options: Any, on_result: Callable[[Task, Any], bool]) -> None:
    import submitit

    from .sweep import cores

    folder = Path(options.slurm_folder) if options.slurm_folder else Path(tasks[0].store) / "sweeps" / tasks[0].invocation / "slurm"
    cluster = None if options.slurm_cluster == "auto" else options.slurm_cluster
    executor = submitit.AutoExecutor(folder=folder, cluster=cluster)
    threads = max(1, options.slurm_cpus)
    if executor.cluster == "local":  # one machine: divide its cores as the local executor does
        threads = max(1, cores() // max(1, min(options.jobs or len(tasks), len(tasks))))
    params: dict[str, Any] = {"name": "nnopt-sweep", "timeout_min": options.slurm_time, "cpus_per_task": threads}
    if options.slurm_gpus:
        params["gpus_per_node"] = options.slurm_gpus
    if options.slurm_mem_gb:
        params["mem_gb"] = options.slurm_mem_gb
    if options.slurm_partition:
        params["slurm_partition"] = options.slurm_partition
    if options.jobs:
        params["slurm_array_parallelism"] = options.jobs
    if options.slurm_extra:
        params["slurm_additional_parameters"] = dict(options.slurm_extra)
    executor.update_parameters(**params)
    tasks = [replace(t, threads=threads) for t in tasks]
    jobs = executor.map_array(run_task, tasks)
    pending = dict(zip(jobs, tasks))
    stopping = False
    while pending:
        # a debug job runs when its result is asked for: ask in order
        ready = list(pending)[:1] if executor.cluster == "debug" else [j for j in pending if j.done()]
        for job in ready:
            task = pending.pop(job)
            try:
                result: Any = job.result()
            except Exception as err:  # noqa: BLE001 - submitit's FailedJobError / UncompletedJobError
                if stopping:  # cancelled by --fail-fast: reported as not run
                    continue
                result = RuntimeError(_first_line(err))
            if on_result(task, result) and not stopping:
                stopping = True
                for other in pending:
                    other.cancel(check=False)
        if pending and executor.cluster != "debug":
            time.sleep(POLL_S)


def _first_line(err: BaseException) -> str:
    """submitit's errors carry a whole traceback and log excerpt: the last meaningful line."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    errors = [line for line in lines if "Error" in line or "error" in line]
    return (errors[-1] if errors else lines[0] if lines else type(err).__name__)[:300]
