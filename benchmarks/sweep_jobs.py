"""A 4-combination sweep, serial against ``--jobs 2``, whole process, wall time.

The sweep: one shared ``base`` train stage on scikit-learn's digits (MLP 64-128-10, SGD,
batch 64) and a ``tune`` stage from it swept over 2 learning rates x 2 seeds, each a few
epochs, so the four ``tune`` stages are the work to divide. Each measurement is a fresh
``python -m nnopt run FILE --store FRESH --no-progress [--jobs 2]`` timed from spawn to exit;
serial and parallel runs alternate (which goes first swaps every repeat), and medians are
reported. The parallel process pays for spawning two workers (each imports torch) and gives
each half the cores, so on 2 cores the ratio is bounded by the serial run's own use of both
cores; on more cores, or with combinations that do not use every core themselves (small
models), it approaches 1/J.

    python benchmarks/sweep_jobs.py [--epochs 3] [--repeats 3] [--jobs 2]

prints one JSON line: ``serial_s``, ``parallel_s``, ``ratio`` = parallel / serial (below 1:
--jobs is faster), ``speedup`` = serial / parallel, ``cores``. Runs use a private registry of
live runs (``$NNOPT_RUNTIME_DIR``), so other nnopt runs on the machine take no threads from them.
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

PIPELINE = """\
name: sweep_jobs
data: {{name: digits, batch_size: 64}}
model: {{arch: {{name: mlp, widths: [128], activation: relu}}}}
loss: cross_entropy
stages:
  base:
    kind: train
    optimizer: {{name: sgd, lr: 0.05, momentum: 0.9}}
    epochs: 1
  tune:
    kind: train
    from: base
    optimizer: {{name: sgd, lr: 0.05, momentum: 0.9}}
    epochs: {epochs}
matrix:
  stages.tune.optimizer.lr: [0.01, 0.05]
  stages.tune.seed: [0, 1]
"""


def timed(cmd: list[str], env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    took = time.perf_counter() - t0
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stderr[-2000:]}")
    return took


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--jobs", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="nnopt-sweep-bench-") as tmp:
        root = Path(tmp)
        path = root / "sweep.yaml"
        path.write_text(PIPELINE.format(epochs=args.epochs))
        runtime = root / "runtime"
        runtime.mkdir(mode=0o700)
        env = {**os.environ, "NNOPT_RUNTIME_DIR": str(runtime)}
        serial, parallel = [], []
        for r in range(args.repeats):
            base = [sys.executable, "-m", "nnopt", "run", str(path), "--no-progress"]
            runs = [("serial", base), ("parallel", base + ["--jobs", str(args.jobs)])]
            for name, cmd in (runs if r % 2 == 0 else runs[::-1]):
                took = timed(cmd + ["--store", str(root / f"store-{name}-{r}")], env)
                (serial if name == "serial" else parallel).append(took)
    s, p = statistics.median(serial), statistics.median(parallel)
    print(json.dumps({"benchmark": "sweep_jobs", "combinations": 4, "jobs": args.jobs, "epochs": args.epochs,
                      "repeats": args.repeats, "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
                      "serial_s": round(s, 2), "parallel_s": round(p, 2), "ratio": round(p / s, 3), "speedup": round(s / p, 3),
                      "serial_all_s": [round(x, 2) for x in serial], "parallel_all_s": [round(x, 2) for x in parallel]}))


if __name__ == "__main__":
    main()
