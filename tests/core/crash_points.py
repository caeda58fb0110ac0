"""Kill a run at a chosen write, as SIGKILL would there (a helper of ``test_checkpoint``).

Every step by which a run writes (a metrics line, a weights file, ``torch.save``, ``fsync``,
``os.replace``, ``os.rename``, ``os.truncate``) and every ``save_checkpoint`` call is an
*event*. ``record(monkeypatch, trace)`` wraps them in this process and appends one
``Event`` per call, in order, to ``trace``. A kill point names one event by its place
relative to a checkpoint, so that it means the same in every run of one pipeline:

    {"checkpoint": n, "index": j, "variant": v}
        the j-th event counted from the start of the n-th ``save_checkpoint`` (j = 0: that
        call itself); v = "before": die before the event runs; "torn": die halfway through
        it (``torch.save`` and metrics lines: half their bytes reach the file);
        "unflushed": die right after ``torch.save`` returns, its buffer never flushed.

``python crash_points.py JOB.json`` (``{"pipeline": FILE, "argv": [...], "points": [...]}``,
each point with the ``store`` its runs use) runs ``nnopt ARGV --store STORE`` once per kill
point in a child forked from this process (torch imported once; a process that has run no
torch kernel forks safely), which dies at its point with ``os._exit(KILLED)``: no
``finally``, no ``atexit``, no flush of Python buffers, what a kill leaves. The same command
then resumes in that store, in a second child. It prints ``{store: {"killed": exit status,
"resumed": exit status}}`` as one JSON line; each run's output is in ``STORE.*.log``.
"""

from __future__ import annotations

import io
import json
import os
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, NoReturn

KILLED = 77  # the exit status of a child that died at its point
MISSED = 78  # the run ended without reaching its point
LANES = 2  # kill points worked on at once (each: a killed run, then its resumption)


@dataclass(frozen=True)
class Event:
    name: str
    checkpoint: int  # how many save_checkpoint calls have started, this event included
    inside: bool  # within a save_checkpoint call


def _targets() -> list[tuple[Any, str, str]]:
    import torch

    from nnopt.core.stage import StageContext

    return [
        (StageContext, "save_checkpoint", "checkpoint"),
        (StageContext, "log_metrics", "log_metrics"),
        (StageContext, "save_weights", "save_weights"),
        (torch, "save", "torch.save"),
        (os, "fsync", "os.fsync"),
        (os, "replace", "os.replace"),
        (os, "rename", "os.rename"),
        (os, "truncate", "os.truncate"),
    ]


_ORIGINAL: dict[str, Callable] = {}  # the unwrapped targets, by event name


def _wrap_all(setattr_: Callable[[Any, str, Any], None], on_event: Callable[[str, Callable, tuple], Any]) -> None:
    """Replace every target by a wrapper that hands ``on_event`` its name, the original and
    the call's arguments; ``on_event`` calls the original (or does not)."""
    for owner, attr, name in _targets():
        original = getattr(owner, attr)
        _ORIGINAL.setdefault(name, original)

        def wrapper(*args: Any, _name: str = name, _original: Callable = original, **kwargs: Any) -> Any:
            return on_event(_name, lambda: _original(*args, **kwargs), args)

        setattr_(owner, attr, wrapper)


class _Counter:
    """Numbers the events of one run as ``Event``s."""

    def __init__(self) -> None:
        self.checkpoint = 0
        self.depth = 0

    def event(self, name: str) -> Event:
        if name == "checkpoint":
            self.checkpoint += 1
        return Event(name, self.checkpoint, self.depth > 0 or name == "checkpoint")

    def call(self, name: str, go: Callable[[], Any]) -> Any:
        if name != "checkpoint":
            return go()
        self.depth += 1
        try:
            return go()
        finally:
            self.depth -= 1


def record(monkeypatch: Any, trace: list[Event]) -> None:
    """Append an ``Event`` to ``trace`` for every event of this process from now on."""
    counter = _Counter()

    def on_event(name: str, go: Callable[[], Any], args: tuple) -> Any:
        trace.append(counter.event(name))
        return counter.call(name, go)

    _wrap_all(monkeypatch.setattr, on_event)


def since(trace: list[Event], checkpoint: int) -> list[Event]:
    """The events from the start of the ``checkpoint``-th save_checkpoint to the next one (or
    the end): a kill point's ``index`` is a place in this list."""
    return [e for e in trace if e.checkpoint == checkpoint]


def _kill_at(point: dict[str, Any]) -> None:
    """Wrap the targets in this (child) process so that it dies at ``point``."""
    counter = _Counter()
    seen = [0]  # events since the point's checkpoint started

    def on_event(name: str, go: Callable[[], Any], args: tuple) -> Any:
        event = counter.event(name)
        if event.checkpoint == point["checkpoint"]:
            if seen[0] == point["index"]:
                _die(point["variant"], name, go, args)
            seen[0] += 1
        return counter.call(name, go)

    _wrap_all(setattr, on_event)


def _die(variant: str, name: str, go: Callable[[], Any], args: tuple) -> None:
    if variant == "unflushed":
        go()
    elif variant == "torn" and name == "torch.save":
        obj, f = args[0], args[1]
        buffer = io.BytesIO()
        _ORIGINAL["torch.save"](obj, buffer)
        data = buffer.getvalue()
        target = f if hasattr(f, "write") else open(f, "wb")
        target.write(data[: len(data) // 2])
        target.flush()
    elif variant == "torn" and name == "log_metrics":
        ctx, record_ = args[0], args[1]
        line = json.dumps(record_, sort_keys=True, default=str) + "\n"
        with open(ctx.out_dir / "metrics.jsonl", "ab") as f:  # the stage's own buffer is lost
            f.write(line[: len(line) // 2].encode())
    elif variant != "before":
        raise ValueError(f"no variant '{variant}' for {name}")
    os._exit(KILLED)


def _run(argv: list[str], store: str, log: Path, point: dict[str, Any] | None = None) -> NoReturn:
    """In a forked child: ``nnopt ARGV --store STORE``, its output to ``log``; with a
    ``point``, it dies there (``KILLED``) or ends with ``MISSED``. Never returns."""
    code = 1
    try:
        fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        if point is not None:
            _kill_at(point)
        from nnopt.cli import main

        returned = main([*argv, "--store", store], standalone_mode=False)
        code = returned if isinstance(returned, int) else 0
    except SystemExit as done:
        code = done.code if isinstance(done.code, int) else 1
    except BaseException:  # noqa: BLE001 - reported in the log, as the exit status says
        traceback.print_exc()
    if point is not None:
        print(f"the run ended (exit {code}) before its kill point", file=sys.stderr)
        code = MISSED
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _child(body: Callable[[], NoReturn]) -> int:
    """The exit status of ``body`` run in a forked child."""
    pid = os.fork()
    if pid == 0:
        body()
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def _lane(argv: list[str], point: dict[str, Any]) -> NoReturn:
    """Kill a run at ``point``, resume it in its store, and write both exit statuses to
    ``STORE.exits``. Forks only (its children run torch), so it too forks safely."""
    store = point["store"]
    killed = _child(lambda: _run(argv, store, Path(store + ".killed.log"), point))
    resumed = _child(lambda: _run(argv, store, Path(store + ".resumed.log"))) if killed == KILLED else None
    Path(store + ".exits").write_text(json.dumps({"killed": killed, "resumed": resumed}))
    os._exit(0)


def main(job_file: str) -> None:
    import matplotlib  # noqa: F401 - imported once here, not in every child
    import torch

    import nnopt.cli  # noqa: F401
    import nnopt.core.runner  # noqa: F401
    from nnopt.core.planner import load_plans

    job = json.loads(Path(job_file).read_text())
    # what every run does first, done once here rather than in every child (planning imports
    # the plugins; torch's own flag imports inductor): neither runs a kernel, so forking stays safe
    load_plans(job["pipeline"], [])
    torch.use_deterministic_algorithms(True, warn_only=True)
    lanes: set[int] = set()
    for point in job["points"]:
        if len(lanes) >= LANES:
            lanes.discard(os.wait()[0])
        pid = os.fork()
        if pid == 0:
            _lane(job["argv"], point)
        lanes.add(pid)
    while lanes:
        lanes.discard(os.wait()[0])
    print(json.dumps({p["store"]: json.loads(Path(p["store"] + ".exits").read_text()) for p in job["points"]}))


if __name__ == "__main__":
    main(sys.argv[1])
