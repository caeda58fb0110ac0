"""``nnopt diagnose FILE``: the ``diagnose`` stage of one train stage, run as an ordinary
cached stage of the user's pipeline, and its findings shown as text, JSON, diffs of the
user's file, or the best verified patch written to a new file.

The pipeline is planned with one more stage, ``{kind: diagnose, of: STAGE}`` (an override,
exactly as ``--set`` would add it), and only that stage and what it needs are run: the train
stage itself is not trained. A matrix file gets one diagnosis per combination.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nnopt.core.errors import Diagnostic, Location, SpecError

#: the fields of each finding in ``--json``, in this order (the issue's contract)
FINDING_FIELDS = ("id", "severity", "title", "evidence", "explanation", "recommendation", "patch", "verified",
                  "before", "after")


@dataclass
class Diagnosis:
    """One combination's diagnosis: the stage's results, where they are, and the file's diffs."""

    stage: str
    params: dict[str, Any]
    status: str
    results: dict[str, Any]
    stage_dir: str
    seconds: float
    cached: bool
    diffs: dict[str, str] = field(default_factory=dict)  # finding id -> unified diff of the user's file
    message: str | None = None

    @property
    def findings(self) -> list[dict[str, Any]]:
        return list(self.results.get("findings", []))

    @property
    def healthy(self) -> bool:
        return bool(self.results.get("healthy", False))

    def to_json(self) -> dict[str, Any]:
        rows = [{**{k: f.get(k) for k in FINDING_FIELDS}, "diff": self.diffs.get(f["id"], "")} for f in self.findings]
        out = {"findings": rows, "healthy": self.healthy, "stage": self.stage, "status": self.status,
               "dir": self.stage_dir, "seconds": self.seconds, "cached": self.cached}
        if self.params:
            out["params"] = self.params
        if self.message and self.status != "ok":
            out["message"] = self.message
        return out


def diagnosis_stage_id(target: str, taken: set[str]) -> str:
    """``diagnose-<target>``, or with a number when the pipeline already has that id."""
    base, i = f"diagnose-{target}", 2
    out = base
    while out in taken:
        out, i = f"{base}-{i}", i + 1
    return out


def _train_stages(data: Any) -> list[str]:
    stages = data.get("stages") if isinstance(data, dict) else None
    if not isinstance(stages, dict):
        return []
    return [str(k) for k, v in stages.items() if isinstance(v, dict) and v.get("kind") == "train"]


def diagnose_file(file: str, sets: list[str], store: Any, stage: str | None = None, *, probe_steps: int | None = None,
                  fixes: int | None = None, lr_range: bool | None = None, force: bool = False,
                  progress: bool = False, on_stage: Any = None, one_combination: str | None = None) -> list[Diagnosis]:
    """Diagnose train stage ``stage`` of ``file`` (default: its first train stage), once per
    matrix combination; ``SpecError`` (exit 2) for a bad file or stage before anything runs,
    and, when ``one_combination`` names an option needing it (``--apply``), for a matrix of
    several combinations."""
    from nnopt.core.planner import load_plans
    from nnopt.core.runner import new_run_id, run_plan
    from nnopt.core.yaml_source import parse_yaml
    from nnopt.plugins.diagnosis.patch_diff import diffs_of

    path = Path(file)
    if not path.is_file():
        raise SpecError([Diagnostic(Location(file), "", "no such pipeline file")])
    text = path.read_text(encoding="utf-8", errors="replace")
    try:
        data = parse_yaml(text, file).data
    except SpecError:
        load_plans(file, sets)  # reports the file's own errors, located
        raise
    trains = _train_stages(data)
    if stage is None:
        if not trains:
            raise SpecError([Diagnostic(Location(file), "stages", "no train stage to diagnose")])
        stage = trains[0]
    elif stage not in trains:
        raise SpecError([Diagnostic(Location(file), f"stages.{stage}", f"no train stage '{stage}' (train stages: "
                                    f"{', '.join(trains) or 'none'})", f"--stage {trains[0]}" if trains else None)])
    sid = diagnosis_stage_id(stage, set(map(str, (data.get("stages") or {}).keys())))
    options = {"kind": "diagnose", "of": stage}
    for key, value in (("probe_steps", probe_steps), ("fixes", fixes), ("lr_range", lr_range)):
        if value is not None:
            options[key] = value
    override = f"stages.{sid}=" + json.dumps(options)
    plans = load_plans(file, [*sets, override])
    if one_combination and len(plans) > 1:
        raise SpecError([Diagnostic(Location(file), "matrix", f"{one_combination} needs one combination, and this file has "
                                    f"{len(plans)}", "pin each matrix axis to one value: --set 'matrix.AXIS=[VALUE]'")])
    invocation = new_run_id(plans[0].name)
    out = []
    for plan in plans:
        needed = _with_dependencies(plan, sid)
        trimmed = dataclasses.replace(plan, stages=[s for s in plan.stages if s.id in needed])
        report = run_plan(trimmed, store, force=force, invocation=invocation, progress=progress, on_stage=on_stage)
        rep = next(s for s in report.stages if s.id == sid)
        results = _results_of(store, rep)
        diagnosis = Diagnosis(stage, dict(plan.params), rep.status, results, str(rep.dir or ""), rep.seconds,
                              rep.status == "cached", message=rep.message)
        diagnosis.diffs = diffs_of(text, file, diagnosis.findings)
        out.append(diagnosis)
    return out


def _with_dependencies(plan: Any, sid: str) -> set[str]:
    by_id = {s.id: s for s in plan.stages}
    needed, todo = set(), [sid]
    while todo:
        cur = todo.pop()
        if cur in needed or cur not in by_id:
            continue
        needed.add(cur)
        todo.extend(by_id[cur].deps)
    return needed


def _results_of(store: Any, rep: Any) -> dict[str, Any]:
    if rep.status not in ("ran", "cached") or not rep.key:
        return {}
    result = store.stage_dir(rep.key) / "result.json"
    return json.loads(result.read_text(encoding="utf-8")).get("results", {}) if result.is_file() else {}


def best_verified(diagnosis: Diagnosis) -> dict[str, Any] | None:
    """The most severe verified finding (findings are ranked), or None."""
    return next((f for f in diagnosis.findings if f.get("verified")), None)


def apply_best(file: str, diagnosis: Diagnosis, output: str) -> dict[str, Any] | None:
    """Write ``file`` with the best verified patch applied to ``output`` (comments and layout
    kept); returns the finding applied, or None (nothing written) when none was verified."""
    from nnopt.core.yaml_patch import patch_text
    from nnopt.plugins.diagnosis.patch_diff import patch_pairs

    best = best_verified(diagnosis)
    if best is None:
        return None
    text = Path(file).read_text(encoding="utf-8")
    patched = patch_text(text, patch_pairs(best), file)
    target = Path(output)
    tmp = target.with_name(target.name + ".tmp")
    tmp.write_text(patched, encoding="utf-8")
    tmp.replace(target)  # atomic: a reader never sees half a file
    return best


# ---------------------------------------------------------------------- text
def render_text(diagnosis: Diagnosis, file: str) -> str:
    """The diagnosis for a terminal: each finding with its evidence, explanation, the fix,
    whether it was verified (before → after), and the diff of the file."""
    lines = []
    head = f"diagnosis of stage '{diagnosis.stage}' of {file}"
    if diagnosis.params:
        head += " [" + ", ".join(f"{k}={v}" for k, v in diagnosis.params.items()) + "]"
    lines.append(head + f" ({'cached' if diagnosis.cached else f'{diagnosis.seconds:.1f} s'})")
    if diagnosis.status not in ("ran", "cached"):
        lines.append(f"  the diagnosis did not complete: {diagnosis.status}: {diagnosis.message or ''}")
        return "\n".join(lines)
    findings = diagnosis.findings
    lines.append("  healthy: no critical or warning finding" if diagnosis.healthy else
                 f"  {sum(f['severity'] in ('critical', 'warning') for f in findings)} problem(s) found")
    for i, f in enumerate(findings, 1):
        lines.append("")
        lines.append(f"{i}. [{f['severity']}] {f['id']}: {f['title']}")
        lines.append(f"   why: {f['explanation']}")
        lines.append(f"   fix: {f['recommendation']}")
        if f.get("tried"):
            b, a = f.get("before") or {}, f.get("after") or {}
            if "error" in a:
                lines.append(f"   tried: the patched pipeline is invalid: {a['error']}")
            else:
                lines.append(f"   tried: {'verified' if f.get('verified') else 'not verified'}: probe loss "
                             f"{_num(b.get('loss'))} -> {_num(a.get('loss'))}"
                             + (", diverged -> trains" if b.get("diverged") and not a.get("diverged") else "")
                             + _instrument_text(b, a))
        diff = diagnosis.diffs.get(f["id"])
        if diff:
            lines.extend("   " + d for d in diff.rstrip("\n").splitlines())
        plot = (f.get("evidence") or {}).get("plot")
        if plot and diagnosis.stage_dir:
            lines.append(f"   plot: {Path(diagnosis.stage_dir) / plot}")
    return "\n".join(lines)


def _instrument_text(before: dict[str, Any], after: dict[str, Any]) -> str:
    bi, ai = before.get("instrument") or {}, after.get("instrument") or {}
    if not bi.get("name"):
        return ""
    return f"; {bi['name']} {_num(bi.get('value'))} -> {_num(ai.get('value'))}"


def _num(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, (int, float)) and not isinstance(value, bool) else str(value)
