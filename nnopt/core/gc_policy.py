"""When Python's cyclic garbage collector runs in an ``nnopt`` process.

Importing torch, pydantic and matplotlib leaves about 400,000 long-lived objects; every full
collection walks all of them (0.1-0.15 s each on a 2-core machine, measured), and one process
made several: during imports, mid-stage, and at interpreter exit. Those objects live as long
as the process, so there is nothing to reclaim among them. The collector is therefore held
off while the CLI starts, the survivors are frozen (``gc.freeze``: moved to a permanent
generation no collection visits) when a stage starts and before exit, and collection of
everything allocated afterwards works as usual. Measured by ``benchmarks/whole_process.py``:
about 0.5-0.7 s of a 4 s run.

Only a process that opted in at its start (the ``nnopt`` command) is managed this way; in a
host process (a notebook, pytest running the CLI in-process) both calls do nothing.
"""

from __future__ import annotations

import gc

_managed = False  # this process opted in (``hold_during_startup``)
_held = False  # automatic collection is off because of it


def hold_during_startup() -> None:
    """Opt this process in: stop automatic collection until ``freeze_survivors`` (unless
    someone disabled it already). Call it first thing in a process's entry point."""
    global _managed, _held
    _managed = True
    if gc.isenabled():
        gc.disable()
        _held = True


def freeze_survivors() -> None:
    """In an opted-in process: move every object alive now out of the collector's sight, and
    collect automatically again from here on."""
    global _held
    if not _managed:
        return
    gc.freeze()
    if _held:
        gc.enable()
        _held = False
