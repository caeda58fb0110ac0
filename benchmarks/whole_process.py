"""``nnopt run`` against a hand-written PyTorch script, whole process, wall time.

Both train the same MLP 64-256-128-10 (ReLU) on scikit-learn's digits (1437 train, 360
test images) with SGD (lr 0.05, momentum 0.9), batch 64, for the same number of epochs,
each as a fresh ``python`` process timed from spawn to exit. The plain script is what a
careful person writes by hand: load the data, standardize it, a DataLoader over a
TensorDataset with shuffling, zero_grad / forward / backward / step, the test accuracy at
the end, ``torch.save`` of the weights. nnopt runs an equivalent pipeline into a fresh store
with ``--no-progress`` (and does more: per-epoch test evaluation, metrics, a loss plot,
checksummed manifest). Runs alternate (which one goes first swaps every repeat, so drift
and other load on the machine hit both alike) and medians are reported.

    python benchmarks/whole_process.py [--epochs 20 150] [--repeats 5] [--no-breakdown]

prints one JSON line per length; ``ratio`` = nnopt / plain (below 1: nnopt is faster).
Unless ``--no-breakdown``, three more nnopt runs per length under ``python -X importtime``,
with timestamps around their phases, print on stderr (medians) where nnopt's time goes:
interpreter start, imports by package, planning, seeding, data, the loop, after the loop the
evaluation, weights, plots and manifest, interpreter exit, and garbage-collection pauses.
nnopt's runs use a private registry of live runs (``$NNOPT_RUNTIME_DIR``): other nnopt runs on
the machine would otherwise take threads from it, and the plain script heeds none either.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from digits_job import PIPELINE  # noqa: E402 - the shared job, beside this script

PLAIN = '''\
import json
import sys
from pathlib import Path

import numpy as np
import torch
from sklearn.datasets import load_digits
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

epochs, out = int(sys.argv[1]), Path(sys.argv[2])
torch.manual_seed(0)
x, y = load_digits(return_X_y=True)
order = np.random.default_rng(0).permutation(len(y))
test, train = order[:360], order[360:]
x = x / 16.0
mean, std = x[train].mean(axis=0), x[train].std(axis=0)
std[std == 0] = 1.0
x = torch.tensor((x - mean) / std, dtype=torch.float32)
y = torch.tensor(y, dtype=torch.int64)
loader = DataLoader(TensorDataset(x[train], y[train]), batch_size=64, shuffle=True)
model = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 128), nn.ReLU(), nn.Linear(128, 10))
optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
loss_fn = nn.CrossEntropyLoss()
steps = 0
for _ in range(epochs):
    for xb, yb in loader:
        optimizer.zero_grad()
        loss = loss_fn(model(xb), yb)
        loss.backward()
        optimizer.step()
        steps += 1
model.eval()
with torch.no_grad():
    accuracy = (model(x[test]).argmax(1) == y[test]).double().mean().item()
out.mkdir(parents=True, exist_ok=True)
torch.save(model.state_dict(), out / "model.pt")
print(json.dumps({"steps": steps, "test_accuracy": accuracy}))
'''

# Runs `nnopt run` in this process with wall-clock stamps around its phases, written as JSON
# to $NNOPT_BREAKDOWN at exit. Wrapping is by name and skips what a refactor renamed, so the
# breakdown degrades to coarser phases instead of failing.
DRIVER = r'''
import atexit, functools, gc, json, os, sys, time
T0 = time.monotonic()
events = []
gc_started = [0.0]

def gc_timer(phase, info):
    if phase == "start":
        gc_started[0] = time.monotonic()
    else:
        events.append((f"gc{info['generation']}", gc_started[0], time.monotonic()))

gc.callbacks.append(gc_timer)

def wrap(owner, name, label):
    import inspect
    try:
        static = inspect.getattr_static(owner, name)
    except AttributeError:
        return
    fn = getattr(owner, name)
    @functools.wraps(fn)
    def timed(*a, **k):
        t = time.monotonic()
        try:
            return fn(*a, **k)
        finally:
            events.append((label, t, time.monotonic()))
    setattr(owner, name, staticmethod(timed) if isinstance(static, staticmethod) else timed)

import nnopt.cli as cli
T_CLI = time.monotonic()
import nnopt.core.planner as planner, nnopt.core.runner as runner, nnopt.core.stage as stage
import nnopt.core.store as store, nnopt.core.progress as progress, nnopt.core.plan_index as plan_index
import nnopt.plugins.stages._common as common, nnopt.plugins.analyzers._plot as plot
import nnopt.plugins.stages.train as train
wrap(planner, "load_plans", "planning")
wrap(plan_index, "index_digest", "plan_index")
wrap(plan_index, "save", "plan_index")
wrap(runner, "run_plan", "run_plan")
wrap(runner, "_compute", "compute")
wrap(runner, "_seed_everything", "seeding")
wrap(runner, "_nnopt_version", "nnopt_version")
wrap(stage.StageContext, "load_data", "data")
wrap(stage.StageContext, "save_weights", "weights")
wrap(store.Store, "commit", "commit")
wrap(progress.StageProgress, "__enter__", "loop_enter")
wrap(progress.StageProgress, "__exit__", "loop_exit")
for mod in (common, train):
    wrap(mod, "evaluate", "evaluate")
wrap(train, "plot_loss", "plots")
wrap(train, "draw_plots", "plots")
wrap(train.Train, "run", "stage_run")

@atexit.register
def dump():
    with open(os.environ["NNOPT_BREAKDOWN"], "w") as f:
        json.dump({"t0": T0, "t_cli": T_CLI, "t_exit": time.monotonic(), "events": events}, f)

sys.argv = ["nnopt", *sys.argv[1:]]
cli.main()
'''


def nnopt_cmd(pipeline: Path, store: Path) -> list[str]:
    return [sys.executable, "-m", "nnopt", "run", str(pipeline), "--store", str(store), "--no-progress"]


def isolated_env(tmp: Path, **extra: str) -> dict[str, str]:
    """This environment with a private registry of live nnopt runs: the plain script takes no
    notice of other processes either, so other people's nnopt runs on this machine must not
    halve nnopt's threads here (``nnopt.core.cpu_share``)."""
    return {**os.environ, "NNOPT_RUNTIME_DIR": str(tmp / "runtime"), **extra}


def timed(cmd: list[str], env: dict[str, str]) -> tuple[float, subprocess.CompletedProcess]:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stderr[-3000:]}")
    return wall, proc


def measure(epochs: int, repeats: int, tmp: Path) -> dict[str, float]:
    """Whole-process wall times of both, alternating, after one warm-up run of each."""
    pipeline = tmp / f"whole_{epochs}.yaml"
    pipeline.write_text(PIPELINE.format(name="whole", epochs=epochs))
    plain = tmp / "plain.py"
    plain.write_text(PLAIN)
    runs = {"nnopt": [], "plain": []}
    accuracy, steps = {}, {}

    def one(which: str, i: int) -> None:
        out = tmp / f"{which}_{epochs}_{i}"  # a fresh store (or output folder) every run
        if which == "nnopt":
            wall, proc = timed(nnopt_cmd(pipeline, out) + ["--json"], isolated_env(tmp))
            metrics = json.loads(proc.stdout)["stages"]["train"]["metrics"]
            accuracy["nnopt"], steps["nnopt"] = metrics["test_accuracy"], metrics["steps"]
        else:
            wall, proc = timed([sys.executable, str(plain), str(epochs), str(out)], dict(os.environ))
            result = json.loads(proc.stdout)
            accuracy["plain"], steps["plain"] = result["test_accuracy"], result["steps"]
        runs[which].append(wall)

    one("nnopt", -1)  # warm-up of both: the page cache holds torch's files afterwards
    one("plain", -1)
    runs = {"nnopt": [], "plain": []}
    for i in range(repeats):
        for which in (("nnopt", "plain") if i % 2 == 0 else ("plain", "nnopt")):
            one(which, i)
    assert steps["nnopt"] == steps["plain"], steps  # the same job, step for step
    nnopt_s, plain_s = statistics.median(runs["nnopt"]), statistics.median(runs["plain"])
    return {
        "benchmark": "whole_process", "epochs": epochs, "steps": steps["nnopt"], "repeats": repeats,
        "nnopt_s": round(nnopt_s, 3), "plain_s": round(plain_s, 3), "ratio": round(nnopt_s / plain_s, 3),
        "nnopt_runs_s": [round(v, 3) for v in runs["nnopt"]], "plain_runs_s": [round(v, 3) for v in runs["plain"]],
        "nnopt_test_accuracy": round(accuracy["nnopt"], 4), "plain_test_accuracy": round(accuracy["plain"], 4),
    }


# ------------------------------------------------------------------------------ breakdown
_IMPORT_LINE = re.compile(r"import time:\s+(\d+) \|\s+(\d+) \| ( *)(\S+)")
_GROUPS = ("torch", "sklearn", "scipy", "matplotlib", "PIL", "numpy", "safetensors", "pydantic", "pydantic_core",
           "yaml", "click", "rich", "filelock")


def import_groups(stderr: str) -> dict[str, float]:
    """Seconds of import by who pulled a module in: its outermost ancestor among the big
    packages (scipy under sklearn counts as sklearn), torch._dynamo/_inductor apart."""
    nodes: list[tuple[int, str, int, int | None]] = []  # level, name, self µs, parent index
    stack: list[int] = []
    for line in stderr.splitlines():
        m = _IMPORT_LINE.match(line)
        if not m:
            continue
        level, idx = len(m[3]) // 2, len(nodes)
        nodes.append((level, m[4], int(m[1]), None))
        while stack and nodes[stack[-1]][0] > level:  # importtime prints children before parents
            child = stack.pop()
            nodes[child] = nodes[child][:3] + (idx,)
        stack.append(idx)
    groups: dict[str, float] = {}
    for i, (_, name, self_us, _) in enumerate(nodes):
        chain, j = [], i
        while j is not None:
            chain.append(nodes[j][1])
            j = nodes[j][3]
        if any(n.startswith(("torch._dynamo", "torch._inductor")) for n in chain):
            group = "torch._dynamo+_inductor"
        else:
            known = [n.split(".")[0] for n in chain if n.split(".")[0] in _GROUPS]
            group = known[-1] if known else "nnopt+stdlib+other"
        groups[group] = groups.get(group, 0.0) + self_us / 1e6
    return dict(sorted(groups.items(), key=lambda kv: -kv[1]))


def breakdown(epochs: int, tmp: Path, repeats: int) -> dict[str, object]:
    """Medians over ``repeats`` instrumented runs of each phase and import group (seconds)."""
    runs = [breakdown_once(epochs, tmp, i) for i in range(repeats)]

    def medians(part: str) -> dict[str, float]:
        keys = list(dict.fromkeys(k for r in runs for k in r[part]))
        return {k: round(statistics.median(r[part].get(k, 0.0) for r in runs), 3) for k in keys}

    return {"epochs": epochs, "repeats": repeats, "wall_s (under -X importtime)": medians("wall")["wall"],
            "phases_s": medians("phases"), "imports_s (by package, all phases)": medians("imports")}


def breakdown_once(epochs: int, tmp: Path, i: int) -> dict[str, dict[str, float]]:
    """One nnopt run under ``-X importtime`` with the driver's stamps, as phases and import groups."""
    pipeline = tmp / f"whole_{epochs}.yaml"
    out = tmp / f"breakdown_{epochs}.json"
    driver = tmp / "driver.py"
    driver.write_text(DRIVER)
    env = isolated_env(tmp, NNOPT_BREAKDOWN=str(out))
    spawn = time.monotonic()
    wall, proc = timed([sys.executable, "-X", "importtime", str(driver), "run", str(pipeline), "--store",
                        str(tmp / f"breakdown_store_{epochs}_{i}"), "--no-progress"], env)
    end = spawn + wall
    rec = json.loads(out.read_text())
    ev: dict[str, list[tuple[float, float]]] = {}
    for label, a, b in rec["events"]:
        ev.setdefault(label, []).append((a, b))

    def total(label: str, after: float = float("-inf"), before: float = float("inf")) -> float:
        return sum(b - a for a, b in ev.get(label, []) if a >= after and b <= before)

    (c0, c1), = ev["compute"]
    (r0, r1), = ev["stage_run"]
    loop0 = ev["loop_enter"][0][0] if "loop_enter" in ev else r0
    loop1 = ev["loop_exit"][-1][1] if "loop_exit" in ev else r1
    first_seed = ev["seeding"][0][0]
    evaluate_after = total("evaluate", after=loop1)
    weights_after = total("weights", after=loop1)
    plots = total("plots", after=loop1)
    phases = {
        "interpreter start (python, site)": rec["t0"] - spawn,
        "import nnopt.cli (click)": rec["t_cli"] - rec["t0"],
        "plan-index digest + planning (imports the components, so torch)": total("plan_index", before=c0)
        + total("planning"),
        "run_plan up to the stage (run record, lock)": c0 - ev["run_plan"][0][0],
        "stage start to seeding (torch import if planning did not)": first_seed - c0,
        "seeding (_seed_everything)": total("seeding"),
        "stage set-up before the loop (data, model; a torch.optim optimizer imports torch._dynamo)": loop0 - r0,
        "  of which data (ctx.load_data)": total("data"),
        "training loop": loop1 - loop0,
        "after the loop, in the stage": r1 - loop1,
        "  final evaluation(s)": evaluate_after,
        "  weights (safetensors)": weights_after,
        "  plots (matplotlib import + drawing + PNG)": plots,
        "  other": r1 - loop1 - evaluate_after - weights_after - plots,
        "after the stage: result, manifest, commit": c1 - r1,
        "  of which git rev-parse (nnopt_version)": total("nnopt_version"),
        "  of which commit (artifact sha256, manifest, rename)": total("commit"),
        "after run_plan: plan index, run record, summary": rec["t_exit"] - ev["run_plan"][-1][1],
        "interpreter exit (atexit, teardown)": end - rec["t_exit"],
        "garbage collection pauses before exit, full (gen 2)": total("gc2"),
        "garbage collection pauses before exit, young (gen 0, 1)": total("gc0") + total("gc1"),
    }
    return {"wall": {"wall": wall}, "phases": phases, "imports": import_groups(proc.stderr)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, nargs="+", default=[20, 150])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no-breakdown", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="nnopt_whole_") as tmp:
        for epochs in args.epochs:
            print(json.dumps(measure(epochs, args.repeats, Path(tmp))), flush=True)
            if not args.no_breakdown:
                print(json.dumps(breakdown(epochs, Path(tmp), 3), indent=1), file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
