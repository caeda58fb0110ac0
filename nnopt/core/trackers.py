"""A run's trackers: the metrics every stage logs, fanned out live to experiment trackers.

The trackers of a run are the pipeline file's ``trackers:`` (validated and resolved with the
rest of the file) and those named by ``nnopt run --track NAME`` (default params; a name the
file already lists keeps the file's params). ``RunTrackers`` opens them before the first
stage computes, hands each of them every record ``StageContext.log_metrics`` writes, as it
is written, and closes them when the run ends. Trackers are in no stage's key: they change
where results are shown, never what they are.

A tracker that cannot work here (``Tracker.check``: a missing extra) stops the run before
anything is computed (``PluginError``, exit 2). One that raises later is reported once on
stderr and turned off for the rest of the run; the run itself goes on.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any, Iterable

from .component import ComponentRef, ref_type
from .errors import PluginError
from .registry import Registry

if TYPE_CHECKING:  # pragma: no cover
    from .kinds import RunInfo, Tracker

TrackerRef = ref_type("trackers")


def track_refs(names: Iterable[str], registry: Registry | None = None) -> list[ComponentRef]:
    """Resolved references for ``--track`` names (default params); an unknown name or a
    tracker that cannot work here raises ``PluginError`` (exit 2) before anything runs."""
    registry = registry or Registry()
    out = []
    for name in dict.fromkeys(names):
        cls, entry = registry.load("trackers", name)
        ref = TrackerRef(name=name)
        ref.resolve(cls, cls.Params(), entry.provider)
        ref.instantiate().check()
        out.append(ref)
    return out


def merged(file_refs: Iterable[ComponentRef], extra: Iterable[ComponentRef]) -> list[ComponentRef]:
    """The file's trackers, then the ``--track`` ones it does not already name."""
    refs = list(file_refs)
    named = {r.name for r in refs}
    return refs + [r for r in extra if r.name not in named]


class RunTrackers:
    """The trackers of one run; ``for_stage(id)`` is what a computing stage's context logs to.

    Built (each tracker instantiated and checked) before anything runs; started on the first
    stage that computes, so a run whose stages are all cached opens no tracker run at all."""

    def __init__(self, refs: Iterable[ComponentRef], run: "RunInfo"):
        self._trackers: list[tuple[str, "Tracker"]] = []
        for ref in refs:
            tracker = ref.instantiate()
            tracker.check()  # a missing extra stops the run here, before anything is computed
            self._trackers.append((ref.name, tracker))
        self._run = run
        self._started = False
        self._off: dict[str, str] = {}  # tracker -> the call that failed

    def __bool__(self) -> bool:
        return bool(self._trackers)

    def start(self) -> None:
        """Open every tracker's run (once)."""
        if not self._started:
            self._started = True
            for name, tracker in self._trackers:
                self._call(name, "start_run", tracker.start_run, self._run)

    def for_stage(self, stage_id: str):
        """``record -> None`` for ``StageContext``: logs under ``stage_id`` to every tracker."""
        self.start()
        return lambda record: self.log(stage_id, record)

    def log(self, stage_id: str, record: dict[str, Any]) -> None:
        for name, tracker in self._trackers:
            self._call(name, "log", tracker.log, stage_id, record)

    def end(self, status: str) -> None:
        """Close every started tracker with the run's status (``ok``, ``diverged``, ...)."""
        if self._started:
            for name, tracker in self._trackers:
                self._call(name, "end_run", tracker.end_run, status)
        self._trackers = []

    def _call(self, name: str, what: str, fn, *args: Any) -> None:
        # a tracker turned off by a failed log is still closed (its files, its connection),
        # silently: it was reported once already; one whose start failed has nothing to close
        if name in self._off and (what != "end_run" or self._off[name] == "start_run"):
            return
        try:
            fn(*args)
        except Exception as err:  # noqa: BLE001 - a tracker must never fail the run it exports
            if name not in self._off:
                self._warn(name, what, str(err) if isinstance(err, PluginError) else f"{type(err).__name__}: {err}")

    def _warn(self, name: str, what: str, message: str) -> None:
        # once per tracker: a broken connection would otherwise repeat itself every record
        self._off[name] = what
        print(f"warning: tracker '{name}' failed in {what} ({message}); it is off for the rest of this run", file=sys.stderr)


def missing_extra(tracker: str, module: str, extra: str) -> PluginError | None:
    """The error naming ``pip install 'nnopt[EXTRA]'`` when ``module`` is not importable."""
    import importlib.util

    if importlib.util.find_spec(module) is not None:
        return None
    return PluginError(f"tracker '{tracker}' needs {module}, which is not installed: pip install 'nnopt[{extra}]'")


def scalars(record: dict[str, Any]) -> dict[str, float]:
    """The numbers of a record, nested keys joined with ``/`` (``step`` and ``epoch`` are the
    axes, not metrics; strings, lists and booleans are left out). A tracked analyzer's record
    (``{"track": KEY, ...}``) puts its numbers under ``KEY/``."""
    prefix = record["track"] + "/" if isinstance(record.get("track"), str) else ""
    return _numbers({k: v for k, v in record.items() if k not in ("step", "epoch", "track")}, prefix)


def _numbers(values: dict[str, Any], prefix: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for key, value in values.items():
        if isinstance(value, dict):
            out.update(_numbers(value, f"{prefix}{key}/"))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[f"{prefix}{key}"] = float(value)
    return out
