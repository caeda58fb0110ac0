"""The local executor: ``--jobs J`` worker processes on this machine.

The workers are *spawned* (a fresh interpreter each, never forked: a fork of a process whose
OpenMP and torch thread pools have started can deadlock), at most J at once and never more
than there are tasks, each running tasks one after another. The machine's cores are divided
among them: each worker runs torch on ``max(1, cores // workers)`` threads, fixed before its
first stage (the thread count can change a result's bits, so it is the same for all its
stages and recorded in each manifest). A worker registers with ``cpu_share`` like any run, so
other nnopt runs on the machine count it.
"""

from __future__ import annotations

import multiprocessing
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import replace
from typing import Any, Callable

from ..store import StageBusy
from .task import Task, run_task


def _start_worker(threads: int) -> None:
    import os

    os.environ["OMP_NUM_THREADS"] = str(threads)  # before torch loads: its pools start at this size
    from ..cpu_share import join

    join()


def execute(tasks: list[Task], options: Any, on_result: Callable[[Task, Any], bool]) -> None:
    """Run ``tasks`` in ``options.jobs`` spawned workers (package docstring)."""
    from .sweep import cores

    workers = max(1, min(options.jobs or 1, len(tasks)))
    threads = max(1, cores() // workers)
    tasks = [replace(t, threads=threads) for t in tasks]
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
                               initializer=_start_worker, initargs=(threads,))
    queue = list(tasks)
    running: dict[Any, Task] = {}
    stop = False
    try:
        while queue or running:
            # at most one task per worker is handed over at a time: the pool would queue more
            # ahead, and a task queued is a task --fail-fast could no longer keep from starting
            while queue and not stop and len(running) < workers:
                task = queue.pop(0)
                running[pool.submit(run_task, task)] = task
            if not running:
                break
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for fut in done:
                task = running.pop(fut)
                try:
                    result: Any = fut.result()
                except (StageBusy, KeyboardInterrupt):
                    raise
                except BrokenProcessPool as err:
                    result = RuntimeError(f"its worker process died ({err or 'killed'})")
                except Exception as err:  # noqa: BLE001 - a worker's failure outside run_plan: that combination failed
                    result = err
                stop = on_result(task, result) or stop
    except BaseException:
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown(wait=True)
