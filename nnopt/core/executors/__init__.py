"""Executors of a sweep's combinations: local worker processes, Ray tasks, a Slurm job array.

nnopt schedules nothing beyond one machine's worker processes: across machines it hands the
combinations to Ray or Slurm (submitit), every task an ordinary ``run_plan`` of one
combination against a store all of them share (``sweep.run_sweep``; SPEC §4, §6).
Each executor module has ``execute(tasks, options, on_result)``: it runs every
``task.Task`` and calls ``on_result(task, report_dict_or_exception)`` as each ends; a True
return (--fail-fast) makes it start no further task.
"""

from .sweep import EXECUTORS, SweepOptions, cores, parse_shard, run_sweep, shard_indices

__all__ = ["EXECUTORS", "SweepOptions", "cores", "parse_shard", "run_sweep", "shard_indices"]
