"""Finding and describing what the store holds: ``nnopt show`` and ``nnopt ls``.

The unit of both is the *invocation*: the runs of one ``nnopt run`` (one run a combination
of its matrix; ``store.invocation_id``). ``show`` of a pipeline name or ``latest`` shows the
whole latest invocation, ``show`` of a run id one run, ``show`` of a stage its artifacts
verified in full. ``ls`` lists one entry per invocation, and one per series of consecutive
invocations of a pipeline that ran the same stage keys to the same statuses (cached
re-runs), with their count.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from .errors import Diagnostic, Location, SpecError, did_you_mean
from .store import Store, invocation_id, read_json

#: the metrics ``ls`` shows of a stage, when it has them
HEADLINE = ("train_loss", "test_loss", "test_accuracy", "diverged_at_step")
#: an invocation that did not finish says so, before how its finished runs ended
_STATUS_ORDER = ("running", "interrupted", "stopped", "busy", "failed", "diverged", "ok")


def _not_found(ref: str, message: str, candidates: list[str] = ()) -> SpecError:
    return SpecError([Diagnostic(Location(f"REF {ref}"), "", message, did_you_mean(ref, candidates))])


def _shown_as(err: SpecError, shown: str | None) -> SpecError:
    """``err`` naming the reference as the user wrote it (``shown``), if given."""
    if shown is None:
        return err
    d = err.diagnostics[0]
    return SpecError([Diagnostic(Location(f"REF {shown}"), "", d.message, d.suggestion)])


# ------------------------------------------------------------------ finding
def find_run(store: Store, ref: str, shown: str | None = None) -> dict[str, Any]:
    """A run record by id, id prefix, pipeline name (its latest run), or ``latest``.
    ``shown``: the reference as the user wrote it, for messages."""
    try:
        return _find_run(store, ref)
    except SpecError as err:
        raise _shown_as(err, shown) from None


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


def find_runs(store: Store, ref: str, shown: str | None = None) -> tuple[str, list[dict[str, Any]]]:
    """What a REF without ``/`` names: ``("run", [record])`` for a run id, ``("invocation",
    records)`` for an invocation id, a pipeline name (its latest invocation) or ``latest``
    (the store's); an id prefix may stand for either."""
    try:
        return _find_runs(store, ref)
    except SpecError as err:
        raise _shown_as(err, shown) from None


def _find_runs(store: Store, ref: str) -> tuple[str, list[dict[str, Any]]]:
    runs = store.runs()
    if not runs:
        raise _not_found(ref, f"the store {store.root} holds no runs")

    def cells(inv: str) -> list[dict[str, Any]]:
        return [r for r in runs if invocation_id(r) == inv]

    if ref == "latest":
        return "invocation", cells(invocation_id(runs[-1]))
    exact = [r for r in runs if r["run"] == ref]
    if exact:
        return "run", exact
    if any(invocation_id(r) == ref for r in runs):
        return "invocation", cells(ref)
    by_pipeline = [r for r in runs if r.get("pipeline") == ref]
    if by_pipeline:
        return "invocation", cells(invocation_id(by_pipeline[-1]))
    ids = {r["run"]: "run" for r in runs} | {invocation_id(r): "invocation" for r in runs}
    prefixed = [i for i in ids if i.startswith(ref)]
    if len(prefixed) == 1:
        (found,) = prefixed
        return ids[found], [r for r in runs if r["run"] == found] if ids[found] == "run" else cells(found)
    if prefixed:
        raise _not_found(ref, f"'{ref}' matches {len(prefixed)} runs and invocations; give more of the id")
    raise _not_found(ref, "no run or invocation with this id, and no pipeline of this name",
                     list(ids) + [r.get("pipeline", "") for r in runs])


# ------------------------------------------------------------------ show
def describe_ref(store: Store, ref: str) -> tuple[str, dict[str, Any]]:
    """Text and JSON describing what REF names: one stage (a key prefix, RUN/STAGE), one run
    (its id), or a whole invocation (its id, a pipeline name, ``latest``). An invocation of
    one run without matrix params reads as that run, as ``nnopt run --json`` prints it."""
    run_part, _, stage_part = ref.partition("/")
    keys = store.find_stage(ref) if not stage_part else []
    if len(keys) == 1:
        data = stage_data(store, keys[0])
        return _stage_text(data), data
    if stage_part:
        run = find_run(store, run_part, shown=ref)
        stages = run.get("stages", {})
        if stage_part not in stages:
            hint = did_you_mean(stage_part, stages)
            raise _not_found(ref, f"run {run['run']} has no stage '{stage_part}'" + (f" (did you mean '{run_part}/{hint}'?)" if hint else ""))
        key = stages[stage_part]["key"]
        if not store.stage_dir(key).exists():
            raise _not_found(ref, f"stage '{stage_part}' of run {run['run']} is not in the store ({stages[stage_part]['status']})")
        data = stage_data(store, key, stage_part)
        return _stage_text(data), data
    what, runs = find_runs(store, ref, shown=ref)
    if what == "run" or (len(runs) == 1 and not runs[0].get("params")):
        text, data = _run_view(store, runs[0])
        return "\n".join(text[:1] + [f"file {runs[0].get('file')}"] + text[1:]), data
    return _invocation_view(store, runs)


def stage_data(store: Store, key: str, stage_id: str | None = None) -> dict[str, Any]:
    """What ``show`` says of one stored stage, its artifacts first checked against their
    checksums in full: a damaged stage has status ``damaged``, names its ``damaged`` files,
    and shows no metrics or results (they cannot be trusted)."""
    d = store.stage_dir(key)
    damaged = store.damaged_artifacts(key)
    if not damaged and not store.is_complete(key):  # the artifacts match, and its result does not read back
        damaged = ["result.json"]
    try:
        manifest = read_json(d / "manifest.json")
        manifest = manifest if isinstance(manifest, dict) else {}
    except (OSError, ValueError):
        manifest = {}
    data = {"id": stage_id or manifest.get("stage"), "key": key, "kind": manifest.get("kind"), "dir": str(d),
            "status": "damaged", "seconds": None, "metrics": {}, "results": {}, "spec": manifest.get("spec"),
            "artifacts": sorted(manifest.get("artifacts") or {}), "providers": manifest.get("providers", {})}
    if damaged:
        named = ", ".join(f"{rel} ({'checksum mismatch' if (d / rel).is_file() else 'missing'})" for rel in damaged)
        return data | {"damaged": damaged,
                       "message": f"damaged: {named}; the next `nnopt run` of its pipeline computes it again"}
    result = read_json(d / "result.json")
    return data | {"status": result.get("status"), "seconds": result.get("seconds"), "metrics": result.get("metrics", {}),
                   "results": result.get("results", {})}


def _stage_text(data: dict[str, Any]) -> str:
    lines = [f"stage {data['id']}  kind {data['kind']}  status {data['status']}  key {data['key']}", f"dir {data['dir']}"]
    if data.get("message"):
        lines.append(data["message"])
    if data["metrics"]:
        lines.append("metrics: " + _numbers(data["metrics"]))
    if data["results"]:
        lines.append("results:  (whole, unabridged: --json, or result.json in dir)")
        lines += results_lines(data["results"])
    if data["spec"] is not None:
        lines.append("spec:")
        lines += [f"  {line}" for line in spec_yaml(data["spec"]).splitlines()]
    lines.append("artifacts:")
    lines += [f"  {Path(data['dir']) / a}" for a in data["artifacts"]]
    return "\n".join(lines)


#: a list longer than this is shown as its first items and its length
LIST_ITEMS = 8


def results_lines(results: dict[str, Any], indent: str = "  ") -> list[str]:
    """A stage's results for reading: one line per scalar, ``{columns, rows}`` tables as
    aligned text tables (every row), long lists as their first ``LIST_ITEMS`` items and their
    length. Nothing is cut silently: an abridged list says how long it is."""
    out: list[str] = []
    for name, value in results.items():
        if isinstance(value, dict) and isinstance(value.get("rows"), list) and isinstance(value.get("columns"), list):
            out.append(f"{indent}{name}:")
            out += [f"{indent}  {line}" for line in _table(value["columns"], value["rows"])]
        elif isinstance(value, dict) and value:
            out.append(f"{indent}{name}:")
            out += results_lines(value, indent + "  ")
        else:
            out.append(f"{indent}{name}: {_short(value)}")
    return out


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, list) and len(value) > LIST_ITEMS:
        head = ", ".join(_short(v) for v in value[:LIST_ITEMS])
        return f"[{head}, ...]  ({len(value)} items)"
    if isinstance(value, list):
        return "[" + ", ".join(_short(v) for v in value) + "]"
    return json.dumps(value) if isinstance(value, (dict, str)) or value is None else str(value)


def _table(columns: list[Any], rows: list[Any]) -> list[str]:
    cells = [[str(c) for c in columns]]
    for row in rows:
        values = [row.get(c) for c in columns] if isinstance(row, dict) else list(row)
        cells.append(["–" if v is None else v if isinstance(v, str) else _short(v) for v in values])
    widths = [max(len(r[i]) for r in cells if i < len(r)) for i in range(len(cells[0]))]
    return ["  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip() for r in cells]


def spec_yaml(spec: Any) -> str:
    """A resolved spec as block-style YAML, keys sorted: the same spec reads the same."""
    import yaml

    return yaml.safe_dump(spec, default_flow_style=False, sort_keys=True, allow_unicode=True, width=100)


def _run_view(store: Store, run: dict[str, Any]) -> tuple[list[str], dict[str, Any]]:
    """Text lines and JSON of one run, each stage's data read (and verified) from the store."""
    stages = {}
    for sid, s in run.get("stages", {}).items():
        present = store.stage_dir(s["key"]).exists()
        stages[sid] = stage_data(store, s["key"], sid) if present else {"id": sid, "key": s["key"], "status": s["status"]}
        stages[sid]["run_status"] = s["status"]
    data = {**run, "stages": stages}
    lines = [f"run {run['run']}  pipeline {run['pipeline']}  status {run['status']}  {_when(run.get('started'))}"
             + (f"  params {_params(run['params'])}" if run.get("params") else "")]
    for sid, s in stages.items():
        shown = s.get("message") if s.get("status") == "damaged" else _numbers(s.get("metrics", {}))
        lines.append(f"  {sid:<14} {s.get('run_status', ''):<8} {s['key'][:16]}  {shown}")
        if s.get("dir"):
            lines.append(f"    {s['dir']}")
    return lines, data


def _invocation_view(store: Store, runs: list[dict[str, Any]]) -> tuple[str, dict[str, Any]]:
    """Text and JSON of every run of one invocation (a matrix: one run per combination)."""
    first, last = runs[0], runs[-1]
    views = [_run_view(store, r) for r in runs]
    data = {"invocation": invocation_id(first), "pipeline": first.get("pipeline"), "status": _overall(runs),
            "file": first.get("file"), "started": first.get("started"), "ended": last.get("ended"),
            "runs": [d for _, d in views]}
    lines = [f"invocation {data['invocation']}  pipeline {data['pipeline']}  status {data['status']}  "
             f"{_when(data['started'])}  {len(runs)} run{'s' if len(runs) != 1 else ''}", f"file {data['file']}"]
    for text, _ in views:
        lines += text
    from .sweep_summary import is_sweep, summarize

    if is_sweep(runs):  # a matrix: its summary table, as `nnopt run` printed it
        table = summarize(store, runs)
        data["summary"] = table.to_json()
        lines += ["", table.markdown()]
    return "\n".join(lines), data


# ------------------------------------------------------------------ ls
def list_runs(store: Store) -> tuple[str, list[dict[str, Any]]]:
    """One entry per invocation, oldest first; consecutive invocations of a pipeline whose
    runs had the same params, stage keys and statuses are one entry with their ``count``."""
    results: dict[str, dict[str, Any]] = {}  # headline metrics by stage key: read once
    entries: list[dict[str, Any]] = []
    for runs in store.invocations():
        entry = _entry(store, runs, results)
        if entries and _same(entries[-1], entry):
            prev = entries[-1]
            entry |= {"invocations": prev["invocations"] + entry["invocations"], "count": prev["count"] + 1,
                      "first_started": prev["first_started"]}
            entries[-1] = entry
        else:
            entries.append(entry)
    lines = []
    for e in entries:
        when = f"×{e['count']}, latest {_when(e['started'])}" if e["count"] > 1 else _when(e["started"])
        runs_note = f"  {len(e['runs'])} runs" if len(e["runs"]) > 1 else ""
        lines.append(f"{e['pipeline'] or '?':<20} {e['status']:<11} {when}  invocation {e['invocation']}{runs_note}")
        lines += [f"  {_run_line(r)}" for r in e["runs"]]
    return ("\n".join(lines) if lines else f"no runs in {store.root}"), entries


def _entry(store: Store, runs: list[dict[str, Any]], results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    inv = invocation_id(runs[0])
    cells = []
    for r in runs:
        outcomes = {sid: {"key": s.get("key"), "status": s.get("status"), "metrics": _headline(store, s.get("key"), results)}
                    for sid, s in r.get("stages", {}).items()}
        cells.append({k: r.get(k) for k in ("run", "pipeline", "status", "started", "ended", "params")}
                     | {"stages": len(r.get("stages", {})), "outcomes": outcomes})
    return {"invocation": inv, "pipeline": runs[0].get("pipeline"), "status": _overall(runs), "count": 1,
            "started": runs[0].get("started"), "ended": runs[-1].get("ended"), "first_started": runs[0].get("started"),
            "invocations": [inv], "runs": cells}


def _same(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Whether two entries ran the same thing to the same end (so that one can stand for both);
    a live one stands only for itself: its end is not known yet."""

    def signature(e: dict[str, Any]) -> Any:
        return (e["pipeline"], e["status"], [(json.dumps(c["params"], sort_keys=True), c["status"],
                                              [(sid, o["key"], o["status"]) for sid, o in c["outcomes"].items()])
                                             for c in e["runs"]])

    return "running" not in (a["status"], b["status"]) and signature(a) == signature(b)


def _headline(store: Store, key: str | None, results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """A stage's headline metrics from its result.json (``{}`` if it is not in the store)."""
    if not key:
        return {}
    if key not in results:
        try:
            metrics = read_json(store.stage_dir(key) / "result.json").get("metrics") or {}
        except (OSError, ValueError, AttributeError):
            metrics = {}
        results[key] = {k: metrics[k] for k in HEADLINE if k in metrics}
    return results[key]


def _run_line(cell: dict[str, Any]) -> str:
    """``[lr=0.1] run ID  ok  train ran, probe ran  train: train_loss=… test_accuracy=…``"""
    statuses = [o["status"] for o in cell["outcomes"].values()]
    if len(set(statuses)) == 1 and len(statuses) > 1:
        stages = f"all {statuses[0]}"
    else:
        stages = ", ".join(f"{sid} {o['status']}" for sid, o in cell["outcomes"].items())
    numbers = []
    for sid, o in cell["outcomes"].items():
        m = o["metrics"]
        if "diverged_at_step" in m:
            numbers.append(f"{sid}: diverged at step {m['diverged_at_step']}")
        elif m:
            numbers.append(f"{sid}: {_numbers(m)}")
    params = f"{_params(cell['params'])}  " if cell.get("params") else ""
    return f"{params}run {cell['run']}  {cell['status']}  {stages}" + "".join(f"  {n}" for n in numbers)


def _overall(runs: list[dict[str, Any]]) -> str:
    """An invocation's status: one that did not finish says how, else its worst run's."""
    statuses = {r.get("status") for r in runs}
    return next((s for s in _STATUS_ORDER if s in statuses), str(runs[-1].get("status")))


def _params(params: dict[str, Any]) -> str:
    """``[stages.train.optimizer.lr=0.1, seed=1]``: a matrix combination, as --set writes it."""
    return "[" + ", ".join(f"{k}={json.dumps(v, separators=(',', ':')) if isinstance(v, (dict, list)) else v}"
                           for k, v in params.items()) + "]"


def _numbers(metrics: dict[str, Any]) -> str:
    return "  ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in metrics.items() if not isinstance(v, (dict, list)))


def _when(t: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t)) if t else ""


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
