"""nnopt's train loop against a minimal hand-written PyTorch loop, in one process.

Both train the same MLP [256, 128] (ReLU) on scikit-learn's digits with SGD (lr 0.05,
momentum 0.9), batch 64, for the same number of epochs. The plain loop is what a careful
person writes by hand: a DataLoader over a TensorDataset with shuffling, zero_grad,
forward, backward, step — no logging, no evaluation. nnopt's figure is the training loop
time its train stage reports (``metrics.seconds``: the same work, plus its NaN checks,
metrics lines and progress accounting); the whole stage (data load, evaluation, weights,
plots) is reported beside it. Repeats alternate the two and report medians.

    python benchmarks/train_overhead.py [--epochs 20] [--repeats 3]

prints one JSON line; ``ratio`` = nnopt / plain (below 1: nnopt is faster).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from digits_job import PIPELINE  # noqa: E402 - the shared job, beside this script


def nnopt_run(epochs: int, workdir: Path) -> tuple[float, float, int]:
    from nnopt.core.planner import load_plans
    from nnopt.core.runner import run_plan
    from nnopt.core.store import Store

    path = workdir / "bench.yaml"
    path.write_text(PIPELINE.format(name="bench", epochs=epochs))
    (plan,) = load_plans(path)
    t0 = time.perf_counter()
    report = run_plan(plan, Store(workdir / "store"), force=True, progress=False, argv=[])
    wall = time.perf_counter() - t0
    (stage,) = report.stages
    assert stage.status == "ran", stage.message
    return stage.metrics["seconds"], wall, stage.metrics["steps"]


def plain_run(epochs: int) -> tuple[float, int]:
    import torch
    from sklearn.datasets import load_digits
    from torch import nn
    from torch.utils.data import DataLoader, TensorDataset

    torch.manual_seed(0)
    digits = load_digits()
    x = torch.tensor(digits.data[:1437] / 16.0, dtype=torch.float32)
    y = torch.tensor(digits.target[:1437], dtype=torch.int64)
    loader = DataLoader(TensorDataset(x, y), batch_size=64, shuffle=True)
    model = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 128), nn.ReLU(), nn.Linear(128, 10))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()
    steps = 0
    t0 = time.perf_counter()
    for _ in range(epochs):
        for xb, yb in loader:
            optimizer.zero_grad()
            loss = loss_fn(model(xb), yb)
            loss.backward()
            optimizer.step()
            steps += 1
    return time.perf_counter() - t0, steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    import torch

    nn_loop, nn_wall, plain = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        nnopt_run(1, Path(tmp))  # warm-up: imports, first-call overheads
        plain_run(1)
        for _ in range(args.repeats):
            loop, wall, steps = nnopt_run(args.epochs, Path(tmp))
            nn_loop.append(loop)
            nn_wall.append(wall)
            seconds, plain_steps = plain_run(args.epochs)
            plain.append(seconds)
    assert steps == plain_steps, (steps, plain_steps)
    nnopt_s, plain_s = statistics.median(nn_loop), statistics.median(plain)
    print(json.dumps({
        "benchmark": "train_overhead",
        "epochs": args.epochs, "steps": steps, "repeats": args.repeats, "threads": torch.get_num_threads(),
        "nnopt_loop_s": round(nnopt_s, 4), "plain_loop_s": round(plain_s, 4),
        "ratio": round(nnopt_s / plain_s, 3),
        "nnopt_stage_wall_s": round(statistics.median(nn_wall), 4),
        "nnopt_steps_per_s": round(steps / nnopt_s, 1), "plain_steps_per_s": round(steps / plain_s, 1),
    }))


if __name__ == "__main__":
    main()
