"""Per-step cost of each curated optimizer: nnopt's built optimizer against the same torch class
called directly, and torch's kernels (for-loop, foreach, fused) side by side.

Every optimizer trains the same MLP 64→256→256→10 (ReLU, digits-sized) on one fixed random
batch of 128 for ``--steps`` steps of zero_grad, forward, backward, step, in a plain loop —
so the number is what a step costs, not nnopt's train loop (``train_overhead.py`` measures
that). ``nnopt`` is the optimizer that ``Component().build(params, cpu)`` returns, with the
component's defaults; ``plain`` is the same class constructed directly with the same
hyperparameters and torch's default kernel (what one writes by hand); for Muon, torch's Muon
and AdamW stepped one after the other. Repeats alternate the two; medians are reported.

    python benchmarks/optimizer_step.py [--steps 60] [--repeats 3] [--threads 1] [NAME ...]

prints one JSON line per optimizer: µs per step of each, ``ratio`` = nnopt / plain (target
≤ 1.05), and ``kernels``: µs per step with foreach=False / foreach=True / fused=True where
the class takes that option (null where torch cannot build it).
"""

from __future__ import annotations

import argparse
import inspect
import json
import statistics
import time
from typing import Any, Callable

CURATED = ["sgd", "momentum", "nesterov", "adam", "adamw", "adagrad", "rmsprop", "adadelta", "nadam", "radam",
           "adamax", "adafactor", "muon", "lars", "lamb", "lion"]
KERNELS = {"for_loop": {"foreach": False}, "foreach": {"foreach": True}, "fused": {"fused": True}}


def model_and_batch():
    import torch
    from torch import nn

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10))
    x, y = torch.randn(128, 64), torch.randint(0, 10, (128,))
    return model, x, y


def time_steps(make_optimizer: Callable[[Any], Any], steps: int) -> float:
    """µs per training step (zero_grad, forward, backward, step) after a 10-step warm-up."""
    from torch import nn

    model, x, y = model_and_batch()
    optimizer = make_optimizer(model.parameters())
    loss_fn = nn.CrossEntropyLoss()
    for i in range(steps + 10):
        if i == 10:
            t0 = time.perf_counter()
        optimizer.zero_grad()
        loss_fn(model(x), y).backward()
        optimizer.step()
    return (time.perf_counter() - t0) / steps * 1e6


def torch_options(optimizer) -> dict[str, Any]:
    """The hyperparameters of a built optimizer that its class's constructor takes, without
    the kernel choice (so the class falls back to torch's default kernel)."""
    accepted = set(inspect.signature(type(optimizer).__init__).parameters) - {"self", "params"}
    return {k: v for k, v in optimizer.defaults.items() if k in accepted and k not in ("fused", "foreach")}


def plain_factory(optimizer) -> Callable[[Any], Any]:
    import torch

    from nnopt.plugins.optimizers.muon import MuonWithFallback

    if isinstance(optimizer, MuonWithFallback):
        muon_options, adamw_options = torch_options(optimizer.muon), torch_options(optimizer.fallback)

        class Both:  # what one writes by hand: two optimizers, stepped in turn
            def __init__(self, params):
                params = list(params)
                self.opts = [torch.optim.Muon([p for p in params if p.ndim == 2], **muon_options),
                             torch.optim.AdamW([p for p in params if p.ndim != 2], **adamw_options)]

            def zero_grad(self):
                for o in self.opts:
                    o.zero_grad()

            def step(self):
                for o in self.opts:
                    o.step()

        return Both
    cls, options = type(optimizer), torch_options(optimizer)
    return lambda params: cls(params, **options)


def kernel_factories(optimizer) -> dict[str, Callable[[Any], Any] | None]:
    """foreach=False / foreach=True / fused=True builds of the class, where it takes the option."""
    from nnopt.plugins.optimizers.muon import MuonWithFallback

    if isinstance(optimizer, MuonWithFallback):
        return {}
    cls, options = type(optimizer), torch_options(optimizer)
    accepted = set(inspect.signature(cls.__init__).parameters)
    out: dict[str, Callable[[Any], Any] | None] = {}
    for kernel, flag in KERNELS.items():
        if not set(flag) <= accepted:
            continue
        model, _, _ = model_and_batch()
        try:
            cls(model.parameters(), **options, **flag)
        except (RuntimeError, ValueError, TypeError):
            out[kernel] = None  # torch cannot build this kernel for these parameters
            continue
        out[kernel] = lambda params, flag=flag: cls(params, **options, **flag)
    return out


def component(name: str):
    """The registered component, or None when its module is not there (lars/lamb/lion are optional)."""
    from nnopt.core.registry import Registry

    try:
        cls, _ = Registry().load("optimizers", name)
    except Exception:  # noqa: BLE001 - an optional optimizer whose module is missing or broken
        return None
    return cls()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: steady on a shared machine)")
    parser.add_argument("names", nargs="*", default=CURATED)
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    cpu = torch.device("cpu")
    for name in args.names:
        comp = component(name)
        if comp is None:
            print(json.dumps({"benchmark": "optimizer_step", "optimizer": name, "skipped": "not installed"}))
            continue
        nnopt_factory = lambda params, comp=comp: comp.build(params, cpu)  # noqa: E731
        built = nnopt_factory(model_and_batch()[0].parameters())
        plain = plain_factory(built)
        kernels = kernel_factories(built)
        times: dict[str, list[float]] = {"nnopt": [], "plain": [], **{k: [] for k, f in kernels.items() if f}}
        for _ in range(args.repeats):
            times["nnopt"].append(time_steps(nnopt_factory, args.steps))
            times["plain"].append(time_steps(plain, args.steps))
            for kernel, factory in kernels.items():
                if factory is not None:
                    times[kernel].append(time_steps(factory, args.steps))
        med = {k: statistics.median(v) for k, v in times.items()}
        print(json.dumps({
            "benchmark": "optimizer_step", "optimizer": name, "class": f"{type(built).__module__}.{type(built).__name__}",
            "steps": args.steps, "repeats": args.repeats, "threads": torch.get_num_threads(),
            "nnopt_us": round(med["nnopt"], 1), "plain_us": round(med["plain"], 1),
            "ratio": round(med["nnopt"] / med["plain"], 3),
            "nnopt_kernel": "fused" if built.defaults.get("fused") else "foreach" if built.defaults.get("foreach") else "default",
            "kernels": {k: (round(med[k], 1) if f is not None else None) for k, f in kernels.items()},
        }), flush=True)


if __name__ == "__main__":
    main()
