"""Empirical NTK timings (issue 10): the MLP 64-1024-1024-1024-O on N random inputs, by each
implementation of ``empirical_ntk``, and the whole-process time of an analyze stage with
``ntk_spectrum``. Prints one JSON object.

    python benchmarks/ntk.py                 # the default cases (a few minutes on 2 cores)
    python benchmarks/ntk.py --case structured:1:256 --repeats 5

Each case runs in a subprocess of its own so that its peak memory is that process's peak
resident set (``ru_maxrss``, which sees torch's allocations; tracemalloc does not), minus the
resident set after building the model and inputs. Seconds are the best of ``repeats`` calls
after one warm-up call. Yardstick (issue 10): neural-tangents 0.6.5 on JAX/XLA CPU, this
machine, scalar output, N = 256: structured 0.044 s, jacobian contraction 12.2 s.
The 10-class Jacobian and NTK-vector-product cases run at N = 32: at N = 256 the Jacobian
alone is 256·10·2.2M float32 entries (22 GB), and ntk_vp needs 2,560 vjp+jvp pairs.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

DEFAULT_CASES = ["structured:1:256", "jacobian:1:256", "ntk_vp:1:256",
                 "structured:10:256", "jacobian:10:32", "ntk_vp:10:32", "structured:10:32"]


def one_case(method: str, outputs: int, n: int, repeats: int) -> dict:
    import torch
    from torch import nn

    from nnopt.core.kinds import KernelSource
    from nnopt.plugins.kernels.empirical import EmpiricalNTK

    torch.manual_seed(0)
    widths = [64, 1024, 1024, 1024]
    layers: list[nn.Module] = []
    for a, b in zip(widths, widths[1:]):
        layers += [nn.Linear(a, b), nn.ReLU()]
    model = nn.Sequential(*layers, nn.Linear(widths[-1], outputs)).eval()
    x = torch.randn(n, 64)
    kernel = EmpiricalNTK(EmpiricalNTK.Params(method=method, output="trace", memory_mb=4096))
    source = KernelSource(model, None, torch.device("cpu"), torch.float32)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    kernel.compute(x, None, source)  # warm-up (first-call costs of torch.func, allocator)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        kernel.compute(x, None, source)
        times.append(time.perf_counter() - t)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"method": method, "outputs": outputs, "n": n, "seconds": min(times), "all_seconds": times,
            "peak_extra_mb": (peak - base) / 1024, "block": kernel.block_used,
            "threads": torch.get_num_threads()}


def cli_time() -> dict:
    """Whole-process ``nnopt run`` of one analyze stage with ntk_spectrum (fresh store)."""
    pipeline = textwrap.dedent("""
        name: ntk-spectrum-bench
        seed: 0
        device: cpu
        data: {name: digits}
        model:
          arch: {name: mlp, widths: [512, 512], parameterization: ntk}
        loss: cross_entropy
        stages:
          probe:
            kind: analyze
            analyzers:
              - {name: ntk_spectrum, samples: 256}
        """)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "p.yaml"
        path.write_text(pipeline)
        t = time.perf_counter()
        out = subprocess.run([sys.executable, "-m", "nnopt.cli", "run", str(path), "--json", "--store",
                              str(Path(tmp) / "store")], capture_output=True, text=True)
        seconds = time.perf_counter() - t
    stage = json.loads(out.stdout)["stages"]["probe"] if out.returncode == 0 else {}
    return {"pipeline": "digits, mlp 64-512-512-10 (ntk), ntk_spectrum on 256 examples (10 outputs, trace)",
            "seconds": seconds, "returncode": out.returncode,
            "stage_seconds": stage.get("seconds"),
            "method": (stage.get("results") or {}).get("ntk_spectrum", {}).get("method")}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--case", action="append", help="METHOD:OUTPUTS:N (repeatable)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one case in this process
    ap.add_argument("--no-cli", action="store_true")
    args = ap.parse_args()
    if args.one:
        m, o, n = args.one.split(":")
        print(json.dumps(one_case(m, int(o), int(n), args.repeats)))
        return
    results = []
    for case in args.case or DEFAULT_CASES:
        out = subprocess.run([sys.executable, __file__, "--one", case, "--repeats", str(args.repeats)],
                             capture_output=True, text=True)
        results.append(json.loads(out.stdout) if out.returncode == 0 else {"case": case, "error": out.stderr[-500:]})
    by = {(r.get("method"), r.get("outputs"), r.get("n")): r.get("seconds") for r in results}
    ratios = {}
    for o, n in ((1, 256), (10, 32)):
        s, j = by.get(("structured", o, n)), by.get(("jacobian", o, n))
        if s and j:
            ratios[f"{o}_outputs_n{n}"] = {"structured_over_jacobian": s / j, "speedup": j / s}
    report = {"model": "mlp 64-1024-1024-1024-O (relu), float32, output: trace", "cases": results, "ratios": ratios,
              "yardstick_neural_tangents_0.6.5": {"structured_s": 0.044, "jacobian_contraction_s": 12.2}}
    if not args.no_cli:
        report["cli_analyze_ntk_spectrum"] = cli_time()
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
