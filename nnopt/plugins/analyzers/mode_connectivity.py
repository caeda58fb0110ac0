"""Mode connectivity: a trained low-loss curve between two solutions, against the straight line
(Garipov, Izmailov, Podoprikhin, Vetrov & Wilson 2018; Draxler et al. 2018)."""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import Field

from nnopt.core.component import Params, WeightRef
from nnopt.core.errors import StageError
from nnopt.core.kinds import AnalysisContext, Analyzer

if TYPE_CHECKING:  # pragma: no cover
    import torch

Curve = Literal["bezier", "polychain"]


class ModeConnectivityParams(Params):
    a: WeightRef = Field(..., description="first solution θ_a (t = 0): STAGE, STAGE@N or STAGE@init")
    b: WeightRef = Field(..., description="second solution θ_b (t = 1)")
    curve: Curve = Field("bezier", description="`bezier`: quadratic Bézier curve with bend θ_1; `polychain`: the "
                         "polygonal chain θ_a → θ_1 → θ_b")
    steps: int = Field(300, ge=0, description="optimizer steps training the bend (0: the bend stays at the midpoint "
                       "of θ_a and θ_b, where the Bézier curve is the straight line)")
    optimizer: Literal["sgd", "adam"] = Field("adam", description="optimizer of the bend")
    lr: float = Field(0.01, gt=0.0, description="its learning rate")
    momentum: float = Field(0.9, ge=0.0, lt=1.0, description="sgd momentum")
    weight_decay: float = Field(0.0, ge=0.0, description="L2 penalty on the bend")
    batch_size: int = Field(64, ge=2, description="training examples per step (one t ~ U(0, 1) per step)")
    points: int = Field(21, ge=2, le=1001, description="evenly spaced t in [0, 1] where the curve and the line are "
                        "evaluated")
    bn: Literal["eval", "recompute"] = Field(
        "recompute", description="BatchNorm: `recompute` trains with batch statistics and re-estimates the running "
        "statistics at every evaluated t (Garipov et al.); `eval` uses the running statistics interpolated "
        "between θ_a's and θ_b's, in training too")
    bn_samples: int | None = Field(None, ge=2, description="training inputs used by bn: recompute; None: all")
    metric: Literal["loss", "error"] = Field("loss", description="what the barriers measure")
    split: Literal["train", "test"] = Field("train", description="the split the barriers are measured on")
    samples: int | None = Field(None, ge=1, description="at most this many examples of each split for the "
                                "evaluation (a seeded subset); None: all")
    method: Literal["auto", "vmap", "loop"] = Field(
        "auto", description="evaluation with vmap over stacked weights, or one point at a time (bn: recompute is always "
        "one at a time); `auto`: vmap on a GPU, loop on a CPU (see surface)")


def bezier(a: dict, bend: dict, b: dict, t: float) -> dict:
    """φ(t) = (1 − t)²·θ_a + 2t(1 − t)·θ_1 + t²·θ_b for every tensor (exactly θ_a at t = 0 and θ_b
    at t = 1; with θ_1 = (θ_a + θ_b)/2 it is the straight line (1 − t)θ_a + tθ_b)."""
    return {k: (1 - t) ** 2 * a[k] + 2 * t * (1 - t) * bend[k] + t ** 2 * b[k] for k in a}


def polychain(a: dict, bend: dict, b: dict, t: float) -> dict:
    """The chain θ_a → θ_1 → θ_b: (1 − 2t)θ_a + 2tθ_1 for t ≤ ½, (2 − 2t)θ_1 + (2t − 1)θ_b after."""
    if t <= 0.5:
        return {k: (1 - 2 * t) * a[k] + 2 * t * bend[k] for k in a}
    return {k: (2 - 2 * t) * bend[k] + (2 * t - 1) * b[k] for k in a}


CURVES = {"bezier": bezier, "polychain": polychain}


class ModeConnectivity(Analyzer):
    """Train the bend θ_1 of a curve φ_θ1(t) between two solutions θ_a, θ_b so that the whole
    curve has low loss, and compare its loss barrier with the straight line's.

    Garipov, Izmailov, Podoprikhin, Vetrov & Wilson 2018 ("Loss surfaces, mode connectivity,
    and fast ensembling of DNNs", NeurIPS): independently trained networks are joined by
    simple curves of nearly constant low loss, although the straight line between them
    crosses a high barrier. Curves (``curve``): the quadratic Bézier curve
    φ(t) = (1 − t)²θ_a + 2t(1 − t)θ_1 + t²θ_b, or the polygonal chain with one bend. The bend
    starts at the midpoint (θ_a + θ_b)/2 (where the Bézier curve *is* the line) and minimizes
    the expected loss E_{t∼U(0,1)} L(φ_θ1(t)) by stochastic gradients: each step draws one
    t ~ U(0, 1) and one mini-batch (both from the analyzer's generator), and differentiates
    the loss of ``functional_call(model, φ(t))`` with respect to θ_1 only (θ_a, θ_b fixed).

    BatchNorm (``bn``, explicit): with ``recompute`` the bend is trained with batch
    statistics and, at every evaluated t, the running statistics are re-estimated at φ(t)
    from training inputs (the paper's procedure — the running statistics of neither endpoint
    fit a point in between); with ``eval`` the running statistics are interpolated linearly
    between θ_a's and θ_b's, in training and evaluation.

    Reported along the curve and along the line (t = i/(points − 1)): train and test loss and
    accuracy; for ``metric`` on ``split``, each path's barrier max_t [v(t) − ((1 − t)v(0) +
    t·v(1))] (the rise above the endpoints' chord, ``linear_mode_connectivity.chord_barrier``)
    and its maximum; the training loss history; ‖θ_1 − (θ_a + θ_b)/2‖ and ‖θ_a − θ_b‖.
    """

    Params: ClassVar[type[ModeConnectivityParams]] = ModeConnectivityParams
    cache_version: ClassVar[int] = 1

    params: ModeConnectivityParams

    def analyze(self, ctx: AnalysisContext) -> dict[str, Any]:
        import torch

        from .linear_mode_connectivity import chord_barrier
        from .weight_paths import PointEvaluator, bn_layers, check_same_tensors, float_state, param_names, stack_lerp, subset

        p = self.params
        started = time.perf_counter()
        if ctx.load_model is None:
            raise StageError("mode_connectivity: this context cannot load the weights of `a` and `b` (use the "
                             "analyzer in an analyze stage)")
        classification = ctx.data.task == "classification"
        if p.metric == "error" and not classification:
            raise StageError(f"mode_connectivity: metric 'error' needs classification data; this dataset is "
                             f"{ctx.data.task} data (use metric: loss)")
        if ctx.data.n_train < 2:
            raise StageError("mode_connectivity: training the bend needs at least 2 training examples")
        model = ctx.load_model(p.a)
        full_a, full_b = float_state(model), float_state(ctx.load_model(p.b))
        check_same_tensors(full_a, full_b, str(p.a), str(p.b), "mode_connectivity")
        names = param_names(model)
        a = {k: full_a[k] for k in names}
        b = {k: full_b[k] for k in names}
        buffers = [k for k in full_a if k not in a]
        bend = {k: (0.5 * (a[k] + b[k])).clone().requires_grad_(True) for k in names}
        curve_of = CURVES[p.curve]
        recompute = p.bn == "recompute" and bool(bn_layers(model))

        # ---------------------------------------------------------------- train the bend
        history = self._train(ctx, model, a, b, bend, buffers, full_a, full_b, curve_of, recompute)
        bend = {k: v.detach() for k, v in bend.items()}

        # ---------------------------------------------------------------- evaluate both paths
        splits = {}
        for name, (x, y) in {"train": (ctx.data.x_train, ctx.data.y_train),
                             "test": (ctx.data.x_test, ctx.data.y_test)}.items():
            if int(x.shape[0]) > 0:
                splits[name] = subset(x, y, p.samples, ctx.generator)
        if p.split not in splits:
            raise StageError(f"mode_connectivity: the {p.split} split is empty (use split: train)")
        bn_inputs = subset(ctx.data.x_train, ctx.data.y_train, p.bn_samples, ctx.generator)[0] if recompute else None
        ts = [i / (p.points - 1) for i in range(p.points)]
        grid = torch.tensor(ts, dtype=torch.float64)
        line_buffers = {k: full_a[k] for k in buffers}, {k: full_b[k] for k in buffers}

        def curve_states(i: int, j: int) -> dict[str, torch.Tensor]:
            pts = [curve_of(a, bend, b, t) for t in ts[i:j]]
            out = {k: torch.stack([pt[k] for pt in pts]) for k in names}
            out.update(stack_lerp(*line_buffers, grid[i:j]))
            return out

        evaluator = PointEvaluator(model, ctx.loss_fn, splits, classification, bn=p.bn, bn_inputs=bn_inputs,
                                   method=p.method)
        on_curve = evaluator.evaluate(len(ts), curve_states)
        on_line = evaluator.evaluate(len(ts), lambda i, j: stack_lerp(full_a, full_b, grid[i:j]))

        def summary(values: dict[str, dict[str, Any]]) -> dict[str, Any]:
            out: dict[str, Any] = {}
            for split in ("train", "test"):
                got = values.get(split)
                out[f"{split}_loss"] = got["loss"] if got else None
                out[f"{split}_accuracy"] = got["accuracy"] if got else None
            v = values[p.split]["loss"] if p.metric == "loss" else [1.0 - x for x in values[p.split]["accuracy"]]
            barrier, where = chord_barrier(ts, v)
            out.update({"values": v, "barrier": barrier, "barrier_t": where,
                        "max": max(v) if not any(math.isnan(x) for x in v) else math.nan})
            return out

        curve, line = summary(on_curve), summary(on_line)
        mid = {k: 0.5 * (a[k] + b[k]) for k in names}
        return {
            "a": str(p.a),
            "b": str(p.b),
            "curve_kind": p.curve,
            "metric": p.metric,
            "split": p.split,
            "bn": p.bn,
            "t": ts,
            "curve": curve,
            "line": line,
            "curve_barrier": curve["barrier"],
            "line_barrier": line["barrier"],
            "endpoints": [curve["values"][0], curve["values"][-1]],
            "training": history,
            "bend_offset": _dist(bend, mid),
            "distance": _dist(a, b),
            "method": evaluator.method,
            "seconds": time.perf_counter() - started,
        }

    def _train(self, ctx: AnalysisContext, model, a, b, bend, buffers, full_a, full_b, curve_of, recompute) -> dict:
        import torch
        from torch.func import functional_call

        from .weight_paths import bn_layers

        p = self.params
        if p.steps == 0:
            return {"steps": 0, "loss": [], "final_loss": None}
        params = list(bend.values())
        if p.optimizer == "adam":
            opt = torch.optim.Adam(params, lr=p.lr, weight_decay=p.weight_decay)
        else:
            opt = torch.optim.SGD(params, lr=p.lr, momentum=p.momentum, weight_decay=p.weight_decay)
        modes = {m: m.training for m in model.modules()}
        snapshot = {k: v.detach().clone() for k, v in model.state_dict().items()}
        x, y = ctx.data.x_train, ctx.data.y_train
        n = int(x.shape[0])
        batch = min(p.batch_size, n)
        order, at = torch.randperm(n, generator=ctx.generator), 0
        every = max(1, p.steps // 50)
        record: list[list[float]] = []
        recent: list[float] = []
        scratch = {k: full_a[k].clone() for k in buffers}  # running stats BN updates in train mode
        try:
            model.eval()  # dropout off: the bend is fitted to the deterministic network
            if recompute:
                for m in bn_layers(model):
                    m.train()  # batch statistics, as at every point of the curve after recomputing
            for step in range(p.steps):
                t = float(torch.rand((), generator=ctx.generator, dtype=torch.float64))
                if at + batch > n:
                    order, at = torch.randperm(n, generator=ctx.generator), 0
                idx = order[at : at + batch].to(x.device)
                at += batch
                point = curve_of(a, bend, b, t)
                if recompute:
                    bufs = scratch
                else:
                    bufs = {k: torch.lerp(full_a[k], full_b[k], t) for k in buffers}
                out = functional_call(model, (point, bufs), (x[idx],))
                loss = ctx.loss_fn(out, y[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                value = float(loss.detach())
                recent.append(value)
                if step % every == 0 or step == p.steps - 1:
                    record.append([step, value])
                if not math.isfinite(value):
                    raise StageError(f"mode_connectivity: the curve's training loss became {value} at step {step} "
                                     f"(lower lr)")
        finally:
            with torch.no_grad():
                model.load_state_dict(snapshot)
            for m, mode in modes.items():
                m.training = mode
        tail = recent[-max(1, len(recent) // 10):]
        return {"steps": p.steps, "loss": record, "final_loss": sum(tail) / len(tail)}

    def plot(self, results: dict[str, Any], out_dir: Path) -> list[Path]:
        from ._plot import finite_pairs, new_figure, save

        ts = results.get("t") or []
        curve, line = results.get("curve") or {}, results.get("line") or {}
        cx, cy = finite_pairs(ts, curve.get("values") or [])
        lx, ly = finite_pairs(ts, line.get("values") or [])
        if not (cy or ly):
            return []
        fig, ax = new_figure(6.4, 4.0)
        ax.plot(lx, ly, marker="o", markersize=3, label=f"straight line (barrier {_fmt(results.get('line_barrier'))})")
        ax.plot(cx, cy, marker="s", markersize=3,
                label=f"trained {results.get('curve_kind')} (barrier {_fmt(results.get('curve_barrier'))})")
        ax.set_xlabel(f"t   (0: {results.get('a')},  1: {results.get('b')})")
        ax.set_ylabel(f"{results.get('split')} {results.get('metric')}")
        ax.set_title(f"mode connectivity (bn: {results.get('bn')})", fontsize=9)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
        return [save(fig, Path(out_dir) / "mode_connectivity.png")]


def _dist(x: dict[str, "torch.Tensor"], y: dict[str, "torch.Tensor"]) -> float:
    return float(sum(float((x[k].double() - y[k].double()).pow(2).sum()) for k in x) ** 0.5)


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, (int, float)) else "n/a"
