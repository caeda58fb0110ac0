"""A 51 × 51 filter-normalized loss surface of an MLP 64-256-256-10 on 1,024 digits samples
(issue 9's performance target): seconds for the vmap path (grid points evaluated in chunks of
stacked weights) against the plain loop (``load_state_dict`` per point), and the whole-process
time of the same analysis run by the CLI. Prints one JSON object.

    python benchmarks/surface.py [--points 51] [--chunk 16]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PIPELINE = """\
name: surface-bench
seed: 0
device: cpu
data: {{name: digits, batch_size: 64}}
model:
  arch: {{name: mlp, widths: [256, 256], activation: relu}}
loss: cross_entropy
stages:
  probe:
    kind: analyze
    analyzers:
      - {{name: surface, samples: 1024, chunk: {chunk}, x: {{start: -1, stop: 1, points: {points}}},
         y: {{start: -1, stop: 1, points: {points}}}}}
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=51)
    parser.add_argument("--chunk", type=int, default=16)
    args = parser.parse_args()

    import torch
    from torch import nn

    from nnopt.core.kinds import AnalysisContext
    from nnopt.plugins.analyzers.surface import Surface
    from nnopt.plugins.datasets.digits import Digits

    data = Digits(Digits.Params()).prepare(0)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(),
                          nn.Linear(256, 10)).eval()
    grid = {"x": {"start": -1, "stop": 1, "points": args.points}, "y": {"start": -1, "stop": 1, "points": args.points}}
    out = {"grid": f"{args.points}x{args.points}", "samples": 1024, "params": sum(p.numel() for p in model.parameters()),
           "torch_threads": torch.get_num_threads(), "chunk": args.chunk}
    results = {}
    for method in ("vmap", "loop"):
        analyzer = Surface(Surface.Params(samples=1024, method=method, chunk=args.chunk, **grid))
        ctx = AnalysisContext(model=model, loss_fn=nn.functional.cross_entropy, data=data, device=torch.device("cpu"),
                              generator=torch.Generator().manual_seed(0))
        started = time.perf_counter()
        results[method] = analyzer.analyze(ctx)
        out[f"{method}_seconds"] = round(time.perf_counter() - started, 3)
    out["loop_over_vmap"] = round(out["loop_seconds"] / out["vmap_seconds"], 2)
    out["max_abs_difference"] = max(abs(a - b) for ra, rb in zip(results["vmap"]["loss"], results["loop"]["loss"])
                                    for a, b in zip(ra, rb))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "surface.yaml"
        path.write_text(PIPELINE.format(points=args.points, chunk=args.chunk))
        started = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "nnopt", "run", str(path), "--json", "--store", str(Path(tmp) / "s")],
                              capture_output=True, text=True)
        out["cli_seconds"] = round(time.perf_counter() - started, 3)
        if proc.returncode == 0:
            r = json.loads(proc.stdout)["stages"]["probe"]["results"]["surface"]
            out["cli_grid_seconds"] = round(r["grid_seconds"], 3)
        else:
            out["cli_error"] = proc.stderr.strip().splitlines()[-1:]
    print(json.dumps(out))


if __name__ == "__main__":
    main()
