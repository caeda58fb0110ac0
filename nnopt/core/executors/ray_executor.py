"""The Ray executor (``--executor ray``, extra ``nnopt[ray]``): each combination a Ray task.

With ``--ray-address`` the tasks go to that existing cluster (``auto``, ``ray://HOST:10001``,
...): every task asks for ``--ray-cpus`` CPUs and runs torch on as many threads, and every
node must see the same store path (a shared filesystem, SPEC §6) and have nnopt and the
pipeline's plugins installed. Without it a local Ray instance is started for the sweep
(``ray.init(num_cpus=J)`` with ``--jobs J``, default all cores) and shut down after; its
tasks divide the cores as the local executor's workers do. A task is ``task.run_task``: an
ordinary run of one combination. ``--fail-fast`` cancels the tasks not yet finished.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Callable

from .task import Task, run_task


def execute(tasks: list[Task], options: Any, on_result: Callable[[Task, Any], bool]) -> None:
    import ray

    from ..store import StageBusy
    from .sweep import cores

    started = False
    if options.ray_address:
        threads = max(1, options.ray_cpus)
        if not ray.is_initialized():
            ray.init(address=options.ray_address, log_to_driver=False)
            started = True
    else:
        slots = options.jobs or cores()
        threads = max(1, cores() // max(1, min(slots, len(tasks))))
        if not ray.is_initialized():
            ray.init(num_cpus=slots, include_dashboard=False, log_to_driver=False)
            started = True
    remote = ray.remote(num_cpus=threads if options.ray_address else 1, max_retries=0)(run_task)
    try:
        refs = {remote.remote(replace(t, threads=threads)): t for t in tasks}
        pending = list(refs)
        stopping = False
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            for ref in done:
                task = refs[ref]
                try:
                    result: Any = ray.get(ref)
                except ray.exceptions.TaskCancelledError:
                    continue
                except ray.exceptions.RayTaskError as err:
                    cause = getattr(err, "cause", None)
                    if isinstance(cause, (StageBusy, KeyboardInterrupt)):
                        raise cause from None
                    result = cause if isinstance(cause, Exception) else RuntimeError(str(err).splitlines()[0])
                except ray.exceptions.RayError as err:  # the worker or its node died
                    result = RuntimeError(f"its Ray task was lost ({type(err).__name__})")
                if on_result(task, result) and not stopping:
                    stopping = True
                    for other in pending:
                        ray.cancel(other)
    except BaseException:
        for ref in refs if "refs" in locals() else ():
            ray.cancel(ref, force=False)
        raise
    finally:
        if started:
            ray.shutdown()
