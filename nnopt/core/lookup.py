"""Finding and describing what the store holds: ``nnopt show`` and ``nnopt ls``."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from .errors import Diagnostic, Location, SpecError, did_you_mean
from .store import Store, read_json


def _not_found(ref: str, message: str, candidates: list[str] = ()) -> SpecError:
    return SpecError([Diagnostic(Location(f"REF {ref}"), "", message, did_you_mean(ref, candidates))])


def find_run(store: Store, ref: str, shown: str | None = None) -> dict[str, Any]:
    """A run record by id, id prefix, pipeline name (its latest run), or ``latest``.
    ``shown``: the reference as the user wrote it, for messages."""
    try:
        return _find_run(store, ref)
    except SpecError as err:
        if shown is None:
            raise
        d = err.diagnostics[0]
        raise SpecError([Diagnostic(Location(f"REF {shown}"), "", d.message, d.suggestion)]) from None


def _find_run(store: Store, ref: str) -> dict[str, Any]:
    runs = store.runs()
    if not runs:
        raise _not_found(ref, f"the store {store.root} holds no runs")
    if ref == "latest":
        return runs[-1]
    exact = [r for r in runs if r["run"] == ref]
    if exact:
        return exact[0]
    by_pipeline = [r for r in runs if r.get("pipeline") == ref]
    if by_pipeline:
        return by_pipeline[-1]
    prefixed = [r for r in runs if r["run"].startswith(ref)]
    if len(prefixed) == 1:
        return prefixed[0]
    if len(prefixed) > 1:
        raise _not_found(ref, f"'{ref}' matches {len(prefixed)} runs; give more of the id")
    raise _not_found(ref, "no run with this id or pipeline name", [r["run"] for r in runs] + [r.get("pipeline", "") for r in runs])


def _stage_data(store: Store, key: str, stage_id: str | None = None) -> dict[str, Any]:
    d = store.stage_dir(key)
    if not store.is_complete(key):
        return {"id": stage_id, "key": key, "kind": None, "dir": str(d), "status": "corrupt", "seconds": None,
                "metrics": {}, "results": {}, "spec": None, "artifacts": [], "providers": {},
                "message": "damaged or incomplete: the next `nnopt run` of its pipeline computes it again"}
    manifest = read_json(d / "manifest.json")
    result = read_json(d / "result.json")
    return {
        "id": stage_id or manifest.get("stage"), "key": key, "kind": manifest.get("kind"), "dir": str(d),
        "status": result.get("status"), "seconds": result.get("seconds"), "metrics": result.get("metrics", {}),
        "results": result.get("results", {}), "spec": manifest.get("spec"),
        "artifacts": sorted(manifest.get("artifacts", {})), "providers": manifest.get("providers", {}),
    }


def describe_ref(store: Store, ref: str) -> tuple[str, dict[str, Any]]:
    """Text and JSON describing a run (REF) or one stage (RUN/STAGE or a key prefix)."""
    run_part, _, stage_part = ref.partition("/")
    keys = store.find_stage(ref) if not stage_part else []
    if len(keys) == 1:
        data = _stage_data(store, keys[0])
        return _stage_text(data), data
    run = find_run(store, run_part, shown=ref)
    if stage_part:
        stages = run.get("stages", {})
        if stage_part not in stages:
            hint = did_you_mean(stage_part, stages)
            raise _not_found(ref, f"run {run['run']} has no stage '{stage_part}'" + (f" (did you mean '{run_part}/{hint}'?)" if hint else ""))
        key = stages[stage_part]["key"]
        if not store.stage_dir(key).exists():
            raise _not_found(ref, f"stage '{stage_part}' of run {run['run']} is not in the store ({stages[stage_part]['status']})")
        data = _stage_data(store, key, stage_part)
        return _stage_text(data), data
    stages = {}
    for sid, s in run.get("stages", {}).items():
        present = store.stage_dir(s["key"]).exists()
        stages[sid] = _stage_data(store, s["key"], sid) if present else {"id": sid, "key": s["key"], "status": s["status"]}
        stages[sid]["run_status"] = s["status"]
    data = {**run, "stages": stages}
    lines = [f"run {run['run']}  pipeline {run['pipeline']}  status {run['status']}  {_when(run.get('started'))}",
             f"file {run.get('file')}" + (f"  params {run['params']}" if run.get("params") else "")]
    for sid, s in stages.items():
        lines.append(f"  {sid:<14} {s.get('run_status', ''):<8} {s['key'][:16]}  {_numbers(s.get('metrics', {}))}")
        if s.get("dir"):
            lines.append(f"    {s['dir']}")
    return "\n".join(lines), data


def _stage_text(data: dict[str, Any]) -> str:
    import json

    lines = [f"stage {data['id']}  kind {data['kind']}  status {data['status']}  key {data['key']}", f"dir {data['dir']}"]
    if data.get("message"):
        lines.append(data["message"])
    if data["metrics"]:
        lines.append("metrics: " + _numbers(data["metrics"]))
    if data["results"]:
        lines.append("results: " + json.dumps(data["results"])[:2000])
    if data["spec"] is not None:
        lines.append("spec: " + json.dumps(data["spec"], sort_keys=True))
    lines.append("artifacts:")
    lines += [f"  {Path(data['dir']) / a}" for a in data["artifacts"]]
    return "\n".join(lines)


def _numbers(metrics: dict[str, Any]) -> str:
    return "  ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in metrics.items() if not isinstance(v, (dict, list)))


def _when(t: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t)) if t else ""


def list_runs(store: Store) -> tuple[str, list[dict[str, Any]]]:
    runs = store.runs()
    data = [{k: r.get(k) for k in ("run", "pipeline", "status", "started", "params")} | {"stages": len(r.get("stages", {}))} for r in runs]
    lines = [f"{r['run']:<44} {str(r['pipeline']):<20} {str(r['status']):<11} {r['stages']:>3} stages  {_when(r['started'])}"
             for r in data]
    return ("\n".join(lines) if lines else f"no runs in {store.root}"), data


def list_stages(store: Store) -> tuple[str, list[dict[str, Any]]]:
    data = []
    for key in store.all_stage_keys():
        try:
            m = read_json(store.stage_dir(key) / "manifest.json")
            if not store.is_complete(key):
                raise ValueError("incomplete")
        except (OSError, ValueError, AttributeError):
            m = {"status": "corrupt"}
        data.append({"key": key, "stage": m.get("stage"), "kind": m.get("kind"), "pipeline": m.get("pipeline"),
                     "status": m.get("status"), "ended": m.get("ended")})
    lines = [f"{d['key'][:16]}  {d['pipeline'] or '?':<20} {d['stage'] or '?':<14} {d['kind'] or '?':<10} {d['status']:<9} "
             f"{_when(d['ended'])}" for d in data]
    return ("\n".join(lines) if lines else f"no stages in {store.root}"), data
