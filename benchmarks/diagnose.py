"""How long `nnopt diagnose` takes, and what it finds in every shipped pipeline.

1. The quickstart: ``nnopt diagnose pipelines/quickstart.yaml`` as a fresh process (spawn to
   exit, a fresh store each repeat), against ``nnopt run`` of the same pipeline, which trains
   it (the plain alternative: finding out by training). One JSON line with both medians and
   ``ratio`` = diagnose / run (the issue's budget: a diagnosis under 30 s on 2 CPU cores).
2. Unless ``--no-sweep``: every train stage written in every pipeline under ``pipelines/``
   (every matrix combination with ``--all-combinations``, else the first), diagnosed in a
   fresh process each: one JSON line per diagnosis (file, stage, combination, seconds of the
   process and of the stage, healthy, the ids and severities found), then a summary line:
   diagnoses, their time (median, max), findings per diagnosis, and how many severe findings
   fell on pipelines that are *not* broken on purpose (``BROKEN_ON_PURPOSE``): false alarms.

    python benchmarks/diagnose.py [--repeats 3] [--no-sweep] [--all-combinations] [--only SUBSTRING]
        [--plot docs/figures/diagnose_pipelines.png] [--from-jsonl FILE]

``--plot PATH`` draws the sweep: seconds per diagnosis and findings per diagnosis (stacked by
severity), one bar per train stage; ``--from-jsonl FILE`` draws it from the lines a previous
run printed instead of diagnosing again.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

#: shipped pipelines built to show a failure: in these, a severe finding is the point
#: (a combination of a matrix file is broken on purpose where its comment says so)
BROKEN_ON_PURPOSE = {
    "diagnose/",  # the broken-pipeline suite
    "edge_of_divergence.yaml",  # lr 1.5 > 2/λmax diverges
    "survey/depth_degradation.yaml",  # the deep plain networks
    "survey/adam_nonconvergence.yaml",  # Reddi et al.'s counterexample
    "survey/saxe_depth.yaml",  # deep linear networks from small inits
    "survey/slow_escape.yaml",  # saddle points and tiny inits
    "survey/large_batch_warmup.yaml",  # the cell without warmup
    "survey/batchnorm_lr.yaml",  # plain networks at a large rate
    "survey/fixup.yaml",  # a deep residual net without normalization
    "landscape/large_batch_sharpness.yaml",  # large batches
    "survey/coordinate_descent.yaml",
    "survey/noise_floor.yaml",
}


def _nnopt(args: list[str], store: Path) -> tuple[float, subprocess.CompletedProcess]:
    env = {**os.environ, "NNOPT_HOME": str(store), "PYTHONHASHSEED": "0"}
    t = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "nnopt", *args], capture_output=True, text=True, env=env, cwd=ROOT)
    return time.perf_counter() - t, proc


def quickstart(repeats: int) -> dict:
    diag, run, stage = [], [], []
    for _ in range(repeats):
        with tempfile.TemporaryDirectory() as tmp:
            seconds, proc = _nnopt(["diagnose", "pipelines/quickstart.yaml", "--json", "--no-progress"], Path(tmp) / "s")
            diag.append(seconds)
            stage.append(json.loads(proc.stdout)["seconds"])
        with tempfile.TemporaryDirectory() as tmp:
            run.append(_nnopt(["run", "pipelines/quickstart.yaml", "--no-progress"], Path(tmp) / "s")[0])
    d, r = statistics.median(diag), statistics.median(run)
    return {"benchmark": "diagnose_quickstart", "diagnose_process_s": round(d, 2), "diagnose_stage_s": round(statistics.median(stage), 2),
            "run_process_s": round(r, 2), "ratio": round(d / r, 3), "repeats": repeats, "budget_s": 30,
            "cpus": os.cpu_count()}


def _train_stages(file: Path) -> list[str]:
    import yaml

    data = yaml.safe_load(file.read_text(encoding="utf-8"))
    return [k for k, v in (data.get("stages") or {}).items() if isinstance(v, dict) and v.get("kind") == "train"]


def _first_combination(file: Path, store: Path) -> list[str]:
    """``--set`` values pinning every matrix axis to its first value (``matrix.AXIS=[v]``:
    a plain ``--set`` of a swept path is refused)."""
    _, proc = _nnopt(["plan", str(file), "--json"], store)
    try:
        plan = json.loads(proc.stdout)
    except ValueError:
        return []
    runs = plan.get("runs")
    if not runs:
        return []
    return [f"matrix.{k}=[{json.dumps(v)}]" for k, v in runs[0]["params"].items()]


def sweep(all_combinations: bool, only: str | None) -> list[dict]:
    rows = []
    for file in sorted((ROOT / "pipelines").rglob("*.yaml")):
        rel = str(file.relative_to(ROOT / "pipelines"))
        if only and only not in rel:
            continue
        for stage in _train_stages(file):
            with tempfile.TemporaryDirectory() as tmp:
                store = Path(tmp) / "s"
                sets = [] if all_combinations else _first_combination(file, store)
                args = ["diagnose", str(file), "--stage", stage, "--json", "--no-progress"]
                for s in sets:
                    args += ["--set", s]
                seconds, proc = _nnopt(args, store)
            try:
                out = json.loads(proc.stdout)
            except ValueError:
                rows.append({"file": rel, "stage": stage, "error": (proc.stderr or proc.stdout).strip()[-300:],
                             "exit": proc.returncode})
                print(json.dumps(rows[-1]), flush=True)
                continue
            for combo in out.get("combinations", [out]):
                row = {"file": rel, "stage": stage, "params": combo.get("params") or {},
                       "process_s": round(seconds, 2), "stage_s": round(combo.get("seconds") or 0, 2),
                       "status": combo.get("status"), "healthy": combo.get("healthy"),
                       "findings": [[f["id"], f["severity"], f["verified"]] for f in combo.get("findings", [])],
                       "broken_on_purpose": any(rel.startswith(b) or rel == b for b in BROKEN_ON_PURPOSE)}
                rows.append(row)
                print(json.dumps(row), flush=True)
    return rows


def summary(rows: list[dict]) -> dict:
    done = [r for r in rows if "error" not in r]
    severe = lambda r: [f for f in r["findings"] if f[1] in ("critical", "warning")]  # noqa: E731
    false_alarms = [r for r in done if not r["broken_on_purpose"] and severe(r)]
    times = [r["stage_s"] for r in done]
    return {"benchmark": "diagnose_pipelines", "diagnoses": len(done), "errors": len(rows) - len(done),
            "stage_s_median": round(statistics.median(times), 2) if times else None,
            "stage_s_max": round(max(times), 2) if times else None,
            "findings_per_diagnosis": round(statistics.mean(len(r["findings"]) for r in done), 2) if done else None,
            "severe_on_broken": sum(bool(severe(r)) for r in done if r["broken_on_purpose"]),
            "broken": sum(r["broken_on_purpose"] for r in done),
            "false_alarms": len(false_alarms), "healthy_pipelines": sum(not r["broken_on_purpose"] for r in done),
            "false_alarm_details": [[r["file"], r["stage"], [f[0] for f in severe(r)]] for r in false_alarms]}


def plot(rows: list[dict], path: Path) -> Path:
    """Two panels over every diagnosed train stage: the diagnosis's seconds, and its findings
    stacked by severity; the pipelines broken on purpose are marked."""
    from matplotlib.figure import Figure

    rows = [r for r in rows if "error" not in r and "findings" in r]
    labels = [f"{r['file'].removesuffix('.yaml')}:{r['stage']}" + (" *" if r["broken_on_purpose"] else "") for r in rows]
    fig = Figure(figsize=(max(8.0, 0.28 * len(rows)), 7.0), layout="constrained")
    top, bottom = fig.subplots(2, 1, sharex=True)
    x = range(len(rows))
    top.bar(x, [r["stage_s"] for r in rows], color="#0072B2")
    top.set_ylabel("seconds per diagnosis (stage)")
    top.set_title("nnopt diagnose over every shipped train stage (* = broken on purpose)")
    base = [0] * len(rows)
    for severity, colour in (("critical", "#D55E00"), ("warning", "#E69F00"), ("info", "#56B4E9")):
        counts = [sum(f[1] == severity for f in r["findings"]) for r in rows]
        bottom.bar(x, counts, bottom=base, color=colour, label=severity)
        base = [b + c for b, c in zip(base, counts)]
    bottom.set_ylabel("findings")
    bottom.legend(loc="upper right")
    bottom.set_xticks(list(x), labels, rotation=90, fontsize=7)
    fig.savefig(path, dpi=150)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-sweep", action="store_true")
    parser.add_argument("--no-quickstart", action="store_true")
    parser.add_argument("--all-combinations", action="store_true")
    parser.add_argument("--only", default=None, help="only pipeline files whose path contains this")
    parser.add_argument("--plot", type=Path, default=None, help="draw the sweep to this PNG")
    parser.add_argument("--from-jsonl", type=Path, default=None, help="draw (and summarize) the lines of an earlier run")
    args = parser.parse_args()
    if args.from_jsonl is not None:
        rows = [json.loads(line) for line in args.from_jsonl.read_text().splitlines() if line.startswith('{"file"')]
        print(json.dumps(summary(rows)))
        if args.plot:
            plot(rows, args.plot)
        return
    if not args.no_quickstart:
        print(json.dumps(quickstart(args.repeats)), flush=True)
    if not args.no_sweep:
        rows = sweep(args.all_combinations, args.only)
        print(json.dumps(summary(rows)), flush=True)
        if args.plot:
            plot(rows, args.plot)


if __name__ == "__main__":
    main()
