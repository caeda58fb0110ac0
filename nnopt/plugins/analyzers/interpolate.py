"""Loss and accuracy along the straight line between two weight vectors, extrapolation
included (Goodfellow, Vinyals & Saxe 2015)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field

from nnopt.core.component import Params, WeightRef
from nnopt.core.errors import StageError
from nnopt.core.kinds import AnalysisContext, Analyzer

from .grid_axis import Axis
from nnopt.core import figure_style as fs

Metric = Literal["train_loss", "test_loss", "train_error", "test_error"]


class InterpolateParams(Params):
    between: list[WeightRef] = Field(
        ..., min_length=2, max_length=2, description="the two endpoints [θ_a, θ_b] (α = 0 and α = 1): STAGE, "
        "STAGE@N or STAGE@init, e.g. [train@0, train]")
    alphas: Axis = Field(
        default_factory=lambda: Axis(start=-0.5, stop=1.5, points=41),
        description="the α grid {start, stop, points}; values outside [0, 1] extrapolate beyond the endpoints "
        "(α = 0 and 1 are evaluated exactly when on the grid)")
    samples: int | None = Field(None, ge=1, description="at most this many examples of each split (a seeded subset, "
                                "the same for every α); None: all")
    bn: Literal["eval", "recompute"] = Field(
        "eval", description="BatchNorm at each α: `eval` uses the interpolated running statistics; `recompute` "
        "re-estimates them from training inputs at θ(α)")
    bn_samples: int | None = Field(None, ge=2, description="training inputs used by bn: recompute; None: all")
    metric: Metric = Field("train_loss", description="the curve the monotonicity summary is about")
    tolerance: float = Field(1e-4, ge=0.0, description="`is_monotone` when the largest bump on α ∈ [0, 1] is at "
                             "most this (absolute, in the metric's units)")
    method: Literal["auto", "vmap", "loop"] = Field("auto", description="`vmap`: α values evaluated in chunks by "
                                                    "vmap over stacked weights; `loop`: load_state_dict per α; "
                                                    "`auto`: vmap on a GPU, loop on a CPU (see surface)")
    chunk: int = Field(16, ge=1, le=4096, description="α values per vmap call")
    batch_size: int = Field(1024, ge=1, description="examples per forward pass")


class Interpolate(Analyzer):
    """The loss and accuracy (train and test) of θ(α) = (1 − α)·θ_a + α·θ_b.

    Goodfellow, Vinyals & Saxe 2015 ("Qualitatively characterizing neural network
    optimization problems", ICLR): along the line from the initialization θ_a to the trained
    θ_b the training loss of many networks decreases monotonically, with no bump to climb —
    the obstacles a local optimizer meets are not visible on this slice. The grid ``alphas``
    may extend beyond [0, 1] (extrapolation: how the loss rises past either endpoint).

    Interpolated: every floating tensor of the state dict (as ``linear_mode_connectivity``;
    ``torch.lerp``, exact at α = 0 and 1), BatchNorm running statistics included; with
    ``bn: recompute`` those are instead re-estimated at each θ(α) from training inputs.

    Monotonicity on α ∈ [0, 1] (the segment itself), for the curve ``metric`` v:
    ``max_bump`` = max_i [v(α_i) − min_{j ≤ i} v(α_j)] — the most the curve ever rises above
    its running minimum walking from θ_a to θ_b, 0 for a non-increasing curve — attained at
    ``bump_alpha``; ``is_monotone`` = max_bump ≤ ``tolerance``. Also the chord barrier
    max_α [v(α) − ((1 − α)v(0) + αv(1))] on the segment (0 for convex v). The α values are
    evaluated in vmap'd chunks (``weight_paths.PointEvaluator``).
    """

    Params: ClassVar[type[InterpolateParams]] = InterpolateParams
    cache_version: ClassVar[int] = 1

    params: InterpolateParams

    def analyze(self, ctx: AnalysisContext) -> dict[str, Any]:
        import torch

        from .linear_mode_connectivity import chord_barrier, state_distance
        from .weight_paths import PointEvaluator, check_same_tensors, float_state, stack_lerp, subset

        p = self.params
        if ctx.load_model is None:
            raise StageError("interpolate: this context cannot load the weights of `between` (use the analyzer in an "
                             "analyze stage)")
        ref_a, ref_b = p.between
        classification = ctx.data.task == "classification"
        if p.metric.endswith("error") and not classification:
            raise StageError(f"interpolate: metric '{p.metric}' needs classification data; this dataset is "
                             f"{ctx.data.task} data (use train_loss or test_loss)")
        model = ctx.load_model(ref_a)
        state_a = float_state(model)
        state_b = float_state(ctx.load_model(ref_b))
        check_same_tensors(state_a, state_b, str(ref_a), str(ref_b), "interpolate")

        splits = {}
        for name, (x, y) in {"train": (ctx.data.x_train, ctx.data.y_train),
                             "test": (ctx.data.x_test, ctx.data.y_test)}.items():
            if int(x.shape[0]) > 0:
                splits[name] = subset(x, y, p.samples, ctx.generator)
        if p.metric.split("_")[0] not in splits:
            raise StageError(f"interpolate: the {p.metric.split('_')[0]} split is empty (choose another metric)")
        bn_inputs = None
        if p.bn == "recompute":
            bn_inputs, _ = subset(ctx.data.x_train, ctx.data.y_train, p.bn_samples, ctx.generator)

        alphas = p.alphas.values()
        grid = torch.tensor(alphas, dtype=torch.float64)
        evaluator = PointEvaluator(model, ctx.loss_fn, splits, classification, bn=p.bn, bn_inputs=bn_inputs,
                                   method=p.method, chunk=p.chunk, batch_size=p.batch_size)
        values = evaluator.evaluate(len(alphas), lambda i, j: stack_lerp(state_a, state_b, grid[i:j]))

        curves: dict[str, Any] = {}
        for split in ("train", "test"):
            got = values.get(split)
            curves[f"{split}_loss"] = got["loss"] if got else None
            acc = got["accuracy"] if got else None
            curves[f"{split}_accuracy"] = acc
            curves[f"{split}_error"] = [1.0 - a for a in acc] if acc is not None else None
        curve = curves[p.metric]
        inside = [(a, v) for a, v in zip(alphas, curve) if 0.0 <= a <= 1.0]
        seg_a, seg_v = [a for a, _ in inside], [v for _, v in inside]
        bump, bump_alpha = max_bump(seg_a, seg_v)
        endpoints = {}
        for label, alpha in (("a", 0.0), ("b", 1.0)):
            if alpha in alphas:
                i = alphas.index(alpha)
                endpoints[label] = {k: (v[i] if v is not None else None) for k, v in curves.items()
                                    if not k.endswith("error")}
        barrier = (chord_barrier(seg_a, seg_v)[0] if seg_a and seg_a[0] == 0.0 and seg_a[-1] == 1.0 else None)
        return {
            "a": str(ref_a),
            "b": str(ref_b),
            "alphas": alphas,
            "train_loss": curves["train_loss"],
            "train_accuracy": curves["train_accuracy"],
            "test_loss": curves["test_loss"],
            "test_accuracy": curves["test_accuracy"],
            "endpoints": endpoints,
            "bn": p.bn,
            "samples": {k: int(x.shape[0]) for k, (x, _) in splits.items()},
            "monotone": {
                "metric": p.metric,
                "max_bump": bump,
                "bump_alpha": bump_alpha,
                "is_monotone": bool(bump <= p.tolerance),  # False for NaN
                "tolerance": p.tolerance,
                "decrease": (seg_v[0] - seg_v[-1]) if seg_v else None,
            },
            "barrier": barrier,
            "distance": state_distance(state_a, state_b),
            "method": evaluator.method,
        }

    def plot(self, results: dict[str, Any], out_dir: Path) -> list[Path]:
        from ._plot import finite_pairs, new_figure, save

        alphas = results.get("alphas") or []
        fig, ax = new_figure(6.4, 4.0)
        drawn = False
        for split, style in (("train", "-"), ("test", "--")):
            xs, ys = finite_pairs(alphas, results.get(f"{split}_loss") or [])
            if ys:
                ax.plot(xs, ys, linestyle=style, color=fs.BLUE, label=f"{split} loss")
                drawn = True
        if not drawn:
            return []
        ax.set_xlabel(f"α   (0: {results.get('a', 'a')},  1: {results.get('b', 'b')})")
        ax.set_ylabel("loss")
        for edge in (0.0, 1.0):
            ax.axvline(edge, color=fs.GREY, linewidth=0.8, linestyle=":")
        acc_ax = None
        for split, style in (("train", "-"), ("test", "--")):
            xs, ys = finite_pairs(alphas, results.get(f"{split}_accuracy") or [])
            if ys:
                acc_ax = acc_ax or ax.twinx()
                acc_ax.plot(xs, ys, linestyle=style, color=fs.ORANGE, label=f"{split} accuracy")
        if acc_ax is not None:
            acc_ax.set_ylabel("accuracy")
            acc_ax.legend(fontsize=7, loc="center right")
        mono = results.get("monotone") or {}
        bump = mono.get("max_bump")
        ax.set_title(rf"$\theta(\alpha) = (1-\alpha)\theta_a + \alpha\theta_b$: max bump {bump:.3g} on [0, 1] of {mono.get('metric')}"
                     if isinstance(bump, (int, float)) and math.isfinite(bump) else r"$\theta(\alpha) = (1-\alpha)\theta_a + \alpha\theta_b$",
                     fontsize=9)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7, loc="upper center")
        return [save(fig, Path(out_dir) / "interpolate.png")]


def max_bump(alphas: list[float], values: list[float]) -> tuple[float, float | None]:
    """max_i [v_i − min_{j ≤ i} v_j] over the points in α order, and the α attaining it (the
    first, on ties); 0 for a non-increasing curve, NaN when a value is NaN or none given."""
    if not values or any(isinstance(v, float) and math.isnan(v) for v in values):
        return math.nan, None
    order = sorted(range(len(alphas)), key=lambda i: alphas[i])
    running, best, best_alpha = math.inf, 0.0, alphas[order[0]]
    for i in order:
        running = min(running, values[i])
        if values[i] - running > best:
            best, best_alpha = values[i] - running, alphas[i]
    return best, best_alpha
