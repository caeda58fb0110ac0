"""Data-parallel scaling of a train stage: 1 process against K under torchrun (gloo on CPU).

The same pipeline (an MLP on digits, SGD, global batch ``--batch``) is trained by
``nnopt run`` in one process and by ``nnopt run --nproc K``; each figure is the training
loop's own rate as the stage reports it (``metrics.steps_per_second``: optimizer steps of
the global batch per second, start-up and evaluation excluded). The store is fresh each
time, so every stage is computed.

    python benchmarks/ddp_scaling.py [--nproc 2] [--steps 300] [--batch 256] [--widths 256,128]

prints one JSON line: steps/s and samples/s for 1 and K processes, ``speedup`` (K over 1) and
``efficiency`` = speedup / K. On a CPU the single process gets every core (torch's
intra-op threads) while each of K ranks gets 1 thread (torchrun's OMP_NUM_THREADS=1), and
every step adds one gloo all-reduce of the gradients over loopback TCP: small models are
latency-bound there, so efficiency well below 1 is expected.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

PIPELINE = """\
name: ddp-scaling
seed: 0
data: {{name: digits, batch_size: {batch}}}
model:
  arch: {{name: mlp, widths: [{widths}], activation: relu}}
loss: cross_entropy
stages:
  train:
    kind: train
    optimizer: {{name: sgd, lr: 0.05, momentum: 0.9}}
    steps: {steps}
    log_every: 50
    eval_every: {steps}
"""


def rate(path: Path, store: Path, nproc: int) -> float:
    cmd = [sys.executable, "-m", "nnopt", "run", str(path), "--json", "--no-progress", "--store", str(store)]
    if nproc > 1:
        cmd += ["--nproc", str(nproc)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"nnopt run failed ({done.returncode}): {done.stderr[-2000:]}")
    return float(json.loads(done.stdout.splitlines()[-1])["stages"]["train"]["metrics"]["steps_per_second"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nproc", type=int, default=2)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--widths", default="256,128")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "pipeline.yaml"
        path.write_text(PIPELINE.format(batch=args.batch, widths=args.widths.replace(",", ", "), steps=args.steps))
        one = rate(path, Path(tmp) / "one", 1)
        many = rate(path, Path(tmp) / "many", args.nproc)
    speedup = many / one
    print(json.dumps({
        "benchmark": "ddp_scaling", "nproc": args.nproc, "global_batch": args.batch, "steps": args.steps,
        "widths": [int(w) for w in args.widths.split(",")], "backend": "gloo (cpu)",
        "steps_per_s": {"1": one, str(args.nproc): many},
        "samples_per_s": {"1": one * args.batch, str(args.nproc): many * args.batch},
        "speedup": speedup, "efficiency": speedup / args.nproc,
    }))


if __name__ == "__main__":
    main()
