"""Analytic infinite-width kernels: seconds for the sizes of issue 10's yardstick.

    python benchmarks/ntk_analytic.py [--repeats 3] [--threads N] [--skip-cli]

prints one JSON object:

- ``fcn``: ``ntk_analytic`` (NTK and NNGP together, float64) of a depth-5 ReLU network
  (5 hidden layers, NTK parameterization, σ_w = √2, σ_b = 0.1) on N = 500 and 2,000 inputs
  of dimension 64 (x2 = None: the symmetric kernel), best of ``--repeats`` after one warm-up
  call. The yardstick: neural-tangents 0.6.5 (JAX/XLA on CPU) takes 0.39 s at N = 2,000 on
  the reference machine; the target is ≤ 0.4 s;
- ``cntk``: ``cntk`` (depth 3, 3×3 filters, ReLU, float64) on 64 digits images (1×8×8), with
  the flatten readout and with global average pooling, best of ``--repeats``;
- ``cli``: the whole-process wall time of ``nnopt run`` of a pipeline with one
  ``ntk_regression`` stage (analytic NTK and NNGP of a 2-hidden-layer MLP on all 1,438 digits
  training images, infinite time and 3 finite times), in a fresh store: interpreter start,
  imports, data, kernels, solves, plot, writing the stage.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PIPELINE = """\
name: ntk-regression-bench
seed: 0
device: cpu
data: {name: digits}
model:
  arch: {name: mlp, widths: [512, 512], activation: relu, parameterization: ntk, W_std: 1.4142135623730951, b_std: 0.1}
loss: cross_entropy
stages:
  kernels:
    kind: ntk_regression
    kernel: ntk_analytic
    t: [10, 1000, 100000]
"""


def best_of(fn, repeats: int) -> float:
    fn()  # warm-up: first-call allocations and lazy imports are not the kernel's cost
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def resolved(cls, params):
    from nnopt.core.registry import Registry

    p = cls.Params.model_validate(params)
    act = getattr(p, "activation", None)
    if act is not None and not act.is_resolved:
        a_cls, _ = Registry().load("activations", act.name)
        act.resolve(a_cls, a_cls.Params.model_validate(act.params))
    return cls(p)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--skip-cli", action="store_true")
    args = parser.parse_args()

    import torch

    from nnopt.core.registry import Registry
    from nnopt.plugins.kernels.analytic import NTKAnalytic
    from nnopt.plugins.kernels.cntk import CNTK

    if args.threads:
        torch.set_num_threads(args.threads)
    out: dict = {"torch": torch.__version__, "threads": torch.get_num_threads(), "fcn": {}, "cntk": {}}

    g = torch.Generator().manual_seed(0)
    fcn = resolved(NTKAnalytic, {"depth": 5, "activation": "relu", "parameterization": "ntk",
                                 "W_std": 2 ** 0.5, "b_std": 0.1})
    for n in (500, 2000):
        x = torch.randn(n, 64, generator=g, dtype=torch.float64)
        out["fcn"][f"N={n}"] = {"seconds": best_of(lambda: fcn.compute(x, None, None), args.repeats)}
    out["fcn"]["yardstick_neural_tangents_N=2000_s"] = 0.39
    out["fcn"]["target_N=2000_s"] = 0.4

    digits_cls, _ = Registry().load("datasets", "digits")
    data = digits_cls(digits_cls.Params(flatten=False)).prepare(0)
    images = data.x_train[:64].double()
    for readout in ("flatten", "gap"):
        kernel = resolved(CNTK, {"depth": 3, "kernel_size": 3, "readout": readout})
        out["cntk"][readout] = {"images": 64, "shape": list(images.shape[1:]),
                                "seconds": best_of(lambda: kernel.compute(images, None, None), args.repeats)}

    if not args.skip_cli:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "bench.yaml"
            path.write_text(PIPELINE)
            start = time.perf_counter()
            run = subprocess.run([sys.executable, "-m", "nnopt.cli", "run", str(path), "--json", "--no-progress",
                                  "--store", str(Path(tmp) / "store")], capture_output=True, text=True)
            seconds = time.perf_counter() - start
            if run.returncode != 0:
                out["cli"] = {"error": run.stderr[-2000:]}
            else:
                stage = json.loads(run.stdout)["stages"]["kernels"]
                out["cli"] = {"seconds": seconds, "stage_seconds": stage["seconds"],
                              "ntk_test_accuracy": stage["metrics"].get("ntk_test_accuracy"),
                              "nngp_test_accuracy": stage["metrics"].get("nngp_test_accuracy")}
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
