"""Running a plan: each stage is reused from the store or computed, once, under its lock.

For each stage in order: if a dependency did not finish, it is ``skipped`` (a stage kind with
``runs_after_divergence``, a report, still runs when every such dependency diverged or was
skipped after a divergence); if its key is
complete in the store (and no ``--force``/``--redo`` asks otherwise) and every artifact still
matches its manifest's checksum, it is ``cached``; a damaged stage is never used: it is
recomputed (``ran``, with a message naming the damaged files). Otherwise the runner takes
the stage's file lock (a concurrent run computing the same key makes this one wait, then
reuse the result; with ``wait=False`` it raises ``StageBusy``), seeds every generator, runs
the stage in its work directory ``tmp/<key>`` and commits it atomically.
A run killed mid-stage leaves that directory with the stage's last checkpoint, if the stage
saved one; the next run of the same key continues from it. A stage that
diverges is committed with status ``diverged`` (the divergence is its deterministic result);
a stage that fails leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import os
import platform
import random
import secrets
import socket
import subprocess
import sys
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from . import distributed, figure_style
from .errors import StageError
from .gc_policy import freeze_survivors
from .planner import Plan, PlannedStage
from .stage import MASKS_FILE, ResolvedWeights, StageContext, json_safe, weights_file
from .store import CHECKPOINT, StageBusy, Store, read_json, write_json

OK = ("ran", "cached")


@dataclass
class StageReport:
    id: str
    status: str  # ran | cached | failed | diverged | skipped
    key: str
    dir: str
    seconds: float = 0.0
    metrics: dict[str, Any] = field(default_factory=dict)
    results: dict[str, Any] = field(default_factory=dict)
    message: str | None = None
    #: skipped only because a stage before it diverged (not because one failed)
    after_divergence: bool = False

    def to_json(self) -> dict[str, Any]:
        out = {k: v for k, v in asdict(self).items() if k not in ("id", "after_divergence")}
        if not out["results"]:
            out.pop("results")
        if out["message"] is None:
            out.pop("message")
        return json_safe(out)


@dataclass
class RunReport:
    pipeline: str
    run: str
    params: dict[str, Any]
    stages: list[StageReport]
    invocation: str = ""  # shared by the runs of one command (the combinations of a matrix)

    @property
    def status(self) -> str:
        statuses = {s.status for s in self.stages}
        if "failed" in statuses:
            return "failed"
        if "diverged" in statuses:
            return "diverged"
        return "ok"

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"pipeline": self.pipeline, "run": self.run, "status": self.status}
        if self.params:
            out["params"] = self.params
        out["stages"] = {s.id: s.to_json() for s in self.stages}
        return out


def new_run_id(name: str) -> str:
    return f"{name}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"


def stored_report(store: Store, stage_id: str, key: str) -> StageReport:
    """The report of a complete stage, read back from its ``result.json``."""
    result = read_json(store.stage_dir(key) / "result.json")
    status = "diverged" if result.get("status") == "diverged" else "cached"
    return StageReport(stage_id, status, key, str(store.stage_dir(key)), result.get("seconds", 0.0),
                       result.get("metrics", {}), result.get("results", {}), result.get("message"))


def record_run(store: Store, report: RunReport, file: str, argv: list[str], started: float, status: str | None = None) -> None:
    """Write the run record; ``status="running"`` marks it with this process, so that others
    can tell a live run from one that was killed (``store.run_is_live``)."""
    store.write_run({
        "run": report.run, "pipeline": report.pipeline, "file": os.path.abspath(file), "params": report.params,
        "invocation": report.invocation or report.run, "status": status or report.status, "argv": argv, "started": started,
        "ended": None if status == "running" else time.time(),
        "process": {"pid": os.getpid(), "host": socket.gethostname()} if status == "running" else None,
        "stages": {s.id: {"key": s.key, "status": s.status} for s in report.stages},
    })


def cached_runs(store: Store, entry: dict[str, Any], file: str, argv: list[str]) -> list[RunReport]:
    """The runs of a plan-index hit (``plan_index.lookup``), read from the store and recorded
    like any other run: every stage is complete, so nothing is computed (or imported)."""
    invocation = new_run_id(entry["pipeline"])
    reports = []
    for run in entry["runs"]:
        started = time.time()
        report = RunReport(entry["pipeline"], new_run_id(entry["pipeline"]), run["params"],
                           [stored_report(store, s["id"], s["key"]) for s in run["stages"]], invocation)
        record_run(store, report, file, argv, started)
        reports.append(report)
    return reports


def run_plan(
    plan: Plan,
    store: Store,
    *,
    force: bool = False,
    redo: set[str] = frozenset(),
    wait: bool = True,
    progress: bool = True,
    argv: list[str] | None = None,
    on_stage: Callable[[StageReport], None] | None = None,
    debug: bool = False,
    invocation: str = "",
    track: list[Any] = (),
) -> RunReport:
    """Run what is not cached; returns the report (also saved as a run record). The stages
    that compute stream their metrics to the plan's trackers and those of ``track`` (resolved
    ``--track`` references: ``trackers.track_refs``)."""
    from .kinds import RunInfo
    from .trackers import RunTrackers, merged

    argv = argv if argv is not None else sys.argv
    started = time.time()
    report = RunReport(plan.name, new_run_id(plan.name), plan.params, [], invocation)
    tracking = RunTrackers(merged(getattr(plan, "trackers", []), track),
                           RunInfo(plan.name, report.run, plan.params, plan.file, store.root, invocation))
    # recorded before anything runs, so that `nnopt gc` in another shell keeps the stages
    # this run has finished and is about to read
    pending = RunReport(report.pipeline, report.run, report.params, [StageReport(s.id, "pending", s.key, "") for s in plan.stages],
                        invocation)
    record_run(store, pending, plan.file, argv, started, status="running")
    by_id: dict[str, StageReport] = {}
    redo_all = _with_dependents(plan, redo)
    try:
        for st in plan.stages:
            rep = _one_stage(plan, st, store, by_id, force or st.id in redo_all, wait, progress, argv, debug, tracking)
            by_id[st.id] = rep
            report.stages.append(rep)
            if on_stage:
                on_stage(rep)
    except BaseException as err:  # the record keeps every key: gc keeps a checkpoint to resume
        status = "busy" if isinstance(err, StageBusy) else "interrupted"
        done = {s.id for s in report.stages}
        report.stages += [StageReport(s.id, status, s.key, "") for s in plan.stages if s.id not in done]
        record_run(store, report, plan.file, argv, started, status=status)
        tracking.end(status)
        raise
    record_run(store, report, plan.file, argv, started)
    tracking.end(report.status)
    return report


def _with_dependents(plan: Plan, redo: set[str]) -> set[str]:
    out = set(redo)
    for st in plan.stages:  # stages are in dependency order
        if set(st.deps) & out:
            out.add(st.id)
    return out


def _one_stage(plan, st: PlannedStage, store: Store, done: dict[str, StageReport], forced: bool, wait: bool,
               progress: bool, argv: list[str], debug: bool, tracking: Any = None) -> StageReport:
    from .loop import INTERRUPT

    if INTERRUPT.requested:  # a Ctrl-C came as the previous stage ended: stop before the next one
        INTERRUPT.requested = False
        raise KeyboardInterrupt
    blocked = [d for d in st.deps if done[d].status not in OK]
    settled = all(done[d].status == "diverged" or done[d].after_divergence for d in blocked)
    if blocked and not (settled and st.cls.runs_after_divergence):
        return StageReport(st.id, "skipped", st.key, "", message=f"skipped: '{blocked[0]}' is {done[blocked[0]].status}",
                           after_divergence=settled)
    # a stage is used only after its artifacts are checked against the manifest's checksums
    if not forced and store.is_complete(st.key) and not store.damaged_artifacts(st.key):
        return stored_report(store, st.id, st.key)
    damage = None
    with store.lock(st.key, wait):
        if not forced and store.is_complete(st.key):  # another run may have computed or repaired it while we waited
            damaged = store.damaged_artifacts(st.key)
            if not damaged:
                return stored_report(store, st.id, st.key)
            damage = _damage_message(store, st.key, damaged)
        # a damaged stage is computed afresh, as if forced: nothing of it can be trusted
        rep = _compute(plan, st, store, progress, argv, debug, resume=not forced and damage is None, tracking=tracking)
    if damage:
        rep.message = "; ".join(filter(None, [damage, rep.message]))
    return rep


def _damage_message(store: Store, key: str, damaged: list[str]) -> str:
    """``recomputed: damaged artifact weights/final.safetensors (checksum mismatch)``."""
    stage_dir = store.stage_dir(key)
    named = ", ".join(f"{rel} ({'checksum mismatch' if (stage_dir / rel).is_file() else 'missing'})" for rel in damaged)
    return f"recomputed: damaged artifact{'s' if len(damaged) > 1 else ''} {named}"


def _compute(plan: Plan, st: PlannedStage, store: Store, progress: bool, argv: list[str], debug: bool,
             resume: bool, tracking: Any = None) -> StageReport:
    import torch

    from .planner import resolve_device
    from .progress import StageProgress

    device = distributed.local_device(torch.device(resolve_device(plan.device)))
    if distributed.active() and st.cls.data_parallel:  # the other ranks compute it with us
        distributed.lead_compute(st.key, resume)
    freeze_survivors()  # the engine's and torch's objects outlive every stage: collections skip them
    determinism = _seed_everything(st.seed, device)
    if distributed.active():  # like the thread count, the process count changes rounding: recorded
        determinism["world_size"] = distributed.world_size()
    workdir = store.workdir(st.key, resume)
    weights = _resolved_weights(plan, st, store)
    ctx = StageContext(st.id, st.spec, st.seed, device, workdir, st.data, st.model, st.loss, weights,
                       progress=lambda total, desc: StageProgress(total, desc, enabled=progress),
                       tracker=tracking.for_stage(st.id) if tracking else None)
    start_wall, t0 = time.time(), time.perf_counter()
    try:
        try:
            with figure_style.labelled(figure_style.run_label(plan.name, st.id, getattr(plan, "params", None))):
                outcome = st.cls(st.spec).run(ctx)
        finally:
            ctx.close()
    except StageError as err:
        store.discard(workdir)
        return StageReport(st.id, "failed", st.key, "", time.perf_counter() - t0, message=str(err))
    except KeyboardInterrupt:  # keep a checkpointed workdir: the next run resumes from it
        if not (workdir / CHECKPOINT).is_file():
            store.discard(workdir)
        raise
    except Exception as err:  # a bug in a component: keep the run going, report it in one line
        store.discard(workdir)
        message = f"{type(err).__name__}: {err}"
        if debug:
            traceback.print_exc()
        return StageReport(st.id, "failed", st.key, "", time.perf_counter() - t0, message=message)
    seconds = time.perf_counter() - t0
    status = "diverged" if outcome.status == "diverged" else "ok"
    write_json(workdir / "spec.json", st.resolved)
    write_json(workdir / "result.json", json_safe({"status": status, "metrics": outcome.metrics, "results": outcome.results,
                                                   "message": outcome.message, "seconds": seconds}))
    manifest = {
        "key": st.key, "stage": st.id, "kind": st.kind, "pipeline": plan.name, "status": status,
        "spec": st.resolved, "key_payload": st.key_payload, "command": argv, "nnopt": _nnopt_version(), "providers": st.providers,
        "python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
        "device": str(device), "seed": st.seed, "determinism": determinism,
        "started": start_wall, "ended": time.time(),
    }
    (workdir / "metrics.jsonl").touch()  # every stage directory has one (SPEC §5), if empty
    final = store.commit(workdir, st.key, manifest)
    return StageReport(st.id, "diverged" if status == "diverged" else "ran", st.key, str(final), seconds,
                       json_safe(outcome.metrics), json_safe(outcome.results), outcome.message)


def _resolved_weights(plan: Plan, st: PlannedStage, store: Store) -> dict[str, ResolvedWeights]:
    weights = {}
    for text, ref in st.weights.items():
        # the weights a stage starts `from` go into the stage's own model (it may change,
        # say, the activation); other references are read with the model that made them
        model = st.model if st.spec.from_ is not None and text == str(st.spec.from_) else plan.stage(ref.stage).model
        stage_dir = store.stage_dir(plan.stage(ref.stage).key)
        weights[text] = ResolvedWeights(stage_dir / weights_file(ref.step), model, stage_dir / MASKS_FILE)
    # every step a referenced stage keeps is readable too (``STAGE@N``, ``ctx.kept_steps``): the
    # stage's key, already in this one's, covers all its kept weights (an analyzer following a
    # whole trajectory names the stage once)
    for stage_id in dict.fromkeys(ref.stage for ref in st.weights.values()):
        dep = plan.stage(stage_id)
        stage_dir = store.stage_dir(dep.key)
        for step in sorted(dep.cls(dep.spec).kept_steps()):
            weights.setdefault(f"{stage_id}@{step}", ResolvedWeights(stage_dir / weights_file(step), dep.model,
                                                                     stage_dir / MASKS_FILE))
    return weights


def compute_replica(plan: Plan, st: PlannedStage, store: Store) -> None:
    """A rank > 0 of a torchrun run: compute the data-parallel stage ``st`` with rank 0 (its
    collectives pair with rank 0's), seeded alike, writing nothing: rank 0 commits the stage
    (``core.distributed``). A stage error is rank 0's to report."""
    import torch

    from .planner import resolve_device

    device = distributed.local_device(torch.device(resolve_device(plan.device)))
    _seed_everything(st.seed, device)
    scratch = distributed.scratch_dir()
    ctx = distributed.ReplicaContext(st.id, st.spec, st.seed, device, scratch, st.data, st.model, st.loss,
                                     _resolved_weights(plan, st, store))
    try:
        st.cls(st.spec).run(ctx)
    except Exception:  # noqa: BLE001 - rank 0 meets the same error, reports it and goes on: so does this rank
        pass
    finally:
        ctx.close()
        distributed.discard_scratch(scratch)


def _seed_everything(seed: int, device: "Any") -> dict[str, Any]:
    """Seed Python, numpy and torch; ask torch for deterministic kernels; fix this stage's CPU
    thread count, its share of the cores among the runs computing here (``cpu_share``).
    Returns the flags."""
    import numpy as np
    import torch

    from .cpu_share import share_threads
    from .determinism import use_deterministic_algorithms

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    use_deterministic_algorithms(warn_only=True)  # not torch's own: it imports torch._inductor, ~1 s
    torch.backends.cudnn.benchmark = False
    if device.type == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    # the thread count can change a result's bits, so it is chosen here, once per stage, and recorded
    threads = share_threads()
    return {"use_deterministic_algorithms": True, "cudnn_benchmark": False, "torch_threads": threads}


def _nnopt_version() -> dict[str, Any]:
    from nnopt import __version__

    out: dict[str, Any] = {"version": __version__}
    here = Path(__file__).resolve().parents[2]
    if (here / ".git").exists():
        with contextlib.suppress(OSError, subprocess.SubprocessError):  # no git here: no commit to name
            out["git_commit"] = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True,
                                               text=True, timeout=5).stdout.strip() or None
    return out
