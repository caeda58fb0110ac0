"""Linear mode connectivity: the error (or loss) along the straight line between two trained
networks, and its barrier (Frankle, Dziugaite, Roy & Carbin 2020)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import Field

from nnopt.core.component import Params, WeightRef
from nnopt.core.errors import StageError
from nnopt.core.kinds import AnalysisContext, Analyzer
from nnopt.core import figure_style as fs

if TYPE_CHECKING:  # pragma: no cover
    import torch

MAX_POINTS = 1001


class LinearModeConnectivityParams(Params):
    # WeightRef-typed fields: the planner finds them (``find_refs``), checks that the stage
    # exists and keeps the step, and puts the referenced stages' keys into this stage's key.
    a: WeightRef = Field(..., description="first endpoint θ_a: STAGE, STAGE@N or STAGE@init (α = 0)")
    b: WeightRef = Field(..., description="second endpoint θ_b: STAGE, STAGE@N or STAGE@init (α = 1)")
    points: int = Field(11, ge=2, le=MAX_POINTS, description="evenly spaced α in [0, 1], both ends included")
    split: Literal["test", "train"] = Field("test", description="split the path is evaluated on")
    samples: int | None = Field(
        None, ge=1, description="at most this many examples of `split` (a seeded random subset, the same for "
        "every α); None: all of them"
    )
    metric: Literal["error", "loss"] = Field(
        "error", description="`error`: 1 − accuracy (classification only; Frankle et al.'s measure); `loss`: the "
        "stage's loss"
    )
    threshold: float = Field(
        0.02, ge=0.0, description="the pair is `stable` when the barrier is below this (0.02 = 2 points of error, "
        "Frankle et al.'s criterion)"
    )


class LinearModeConnectivity(Analyzer):
    """The metric along the linear path θ(α) = (1 − α)·θ_a + α·θ_b between two networks.

    Frankle, Dziugaite, Roy & Carbin 2020 ("Linear mode connectivity and the lottery ticket
    hypothesis", ICML): train two copies of a network from the same weights θ_k (init, or the
    weights after k steps) with different SGD noise (data order: a different stage ``seed``)
    and evaluate the error ε(α) of θ(α) at evenly spaced α ∈ [0, 1]. The network is *stable*
    at k when the copies are linearly connected — no error barrier between them. Their
    instability is the error barrier height

        instability = max_α ε(α) − ½ (ε(0) + ε(1)),

    and they call a network stable when it is below 2% (``threshold``). Also reported is the
    barrier measured from the chord between the endpoints (Entezari, Sedghi, Saukh &
    Neyshabur 2022, "The role of permutation invariance in linear mode connectivity"):

        barrier = max_α [ v(α) − ((1 − α) v(0) + α v(1)) ],

    attained at ``barrier_alpha``. Both ends are on the grid, so barrier ≥ 0 and it is 0 when
    the curve never rises above the chord (any convex v: a linear model under a convex loss
    has barrier 0); the two definitions differ by at most |v(0) − v(1)|/2. ``stable`` is
    ``barrier < threshold``; ``stable_paper`` is ``instability < threshold``.

    What is interpolated: every floating-point tensor of the state dict — parameters and
    buffers alike, so BatchNorm's running mean and variance are interpolated with the weights
    (the network is evaluated in eval mode, using those interpolated statistics; they are not
    the statistics of θ(α)'s own activations, which can make the middle of the path look worse
    than it is for normalized networks — Jordan et al. 2023, REPAIR). Integer buffers
    (``num_batches_tracked``) are taken from the nearer endpoint; eval mode does not read
    them. The interpolation is ``torch.lerp``, exact at both ends and exactly θ_a for every α
    when θ_a = θ_b; an entry that is zero in both endpoints is zero all along the path, so
    two networks pruned with the same mask are interpolated within that mask.

    Values are evaluated on ``split`` (a seeded subset of ``samples`` examples, drawn once
    from the analyzer's generator) in eval mode, batched; ``values`` is the chosen metric,
    ``loss`` and ``error`` (None for regression data) are both curves. Also reported:
    ``distance`` ‖θ_a − θ_b‖₂ over the interpolated tensors, and the endpoints' values.
    The model under analysis is not used: θ(α) is evaluated in a copy of a's model, so the
    two references must name models with the same tensors and shapes.
    """

    Params: ClassVar[type[LinearModeConnectivityParams]] = LinearModeConnectivityParams
    cache_version: ClassVar[int] = 1

    params: LinearModeConnectivityParams

    def analyze(self, ctx: AnalysisContext) -> dict[str, Any]:
        import torch

        from nnopt.plugins.stages._common import evaluate

        p = self.params
        if ctx.load_model is None:
            raise StageError("linear_mode_connectivity: this context cannot load the weights of `a` and `b` "
                             "(use the analyzer in an analyze stage)")
        classification = ctx.data.task == "classification"
        if p.metric == "error" and not classification:
            raise StageError("linear_mode_connectivity: metric 'error' needs classification data; this dataset is "
                             f"{ctx.data.task} data (use metric: loss)")
        x, y = (ctx.data.x_test, ctx.data.y_test) if p.split == "test" else (ctx.data.x_train, ctx.data.y_train)
        n = int(x.shape[0])
        if n == 0:
            raise StageError(f"linear_mode_connectivity: the {p.split} split is empty (use split: train)")
        if p.samples is not None and p.samples < n:
            idx = torch.randperm(n, generator=ctx.generator)[: p.samples].to(x.device)
            x, y = x[idx], y[idx]

        model = ctx.load_model(p.a)
        state_a = {k: v.detach().clone() for k, v in model.state_dict().items()}
        state_b = {k: v.detach().clone() for k, v in ctx.load_model(p.b).state_dict().items()}
        check_compatible(state_a, state_b, str(p.a), str(p.b))

        alphas = [i / (p.points - 1) for i in range(p.points)]
        losses: list[float] = []
        errors: list[float] = []
        model.eval()
        for alpha in alphas:
            with torch.no_grad():
                model.load_state_dict(interpolate_states(state_a, state_b, alpha))
            measured = evaluate(model, ctx.loss_fn, x, y, classification)
            losses.append(float(measured["loss"]))
            if classification:
                errors.append(1.0 - float(measured["accuracy"]))
        values = errors if p.metric == "error" else losses
        barrier, barrier_alpha = chord_barrier(alphas, values)
        instability, peak_alpha = paper_instability(alphas, values)
        return {
            "a": str(p.a),
            "b": str(p.b),
            "metric": p.metric,
            "split": p.split,
            "samples": int(x.shape[0]),
            "alphas": alphas,
            "values": values,
            "loss": losses,
            "error": errors if classification else None,
            "endpoints": [values[0], values[-1]],
            "barrier": barrier,
            "barrier_alpha": barrier_alpha,
            "instability": instability,
            "peak_alpha": peak_alpha,
            "threshold": p.threshold,
            "stable": bool(barrier < p.threshold),  # False for a NaN barrier
            "stable_paper": bool(instability < p.threshold),
            "distance": state_distance(state_a, state_b),
        }

    def plot(self, results: dict[str, Any], out_dir: Path) -> list[Path]:
        from ._plot import finite_pairs, new_figure, save

        alphas, values = results.get("alphas") or [], results.get("values") or []
        xs, ys = finite_pairs(alphas, values)
        if not ys:
            return []
        fig, ax = new_figure(6.4, 4.0)
        ax.plot(xs, ys, marker="o", markersize=3.5, linewidth=1.5, label=f"{results.get('metric', 'value')} of θ(α)")
        v0, v1 = values[0], values[-1]
        if all(isinstance(v, (int, float)) and math.isfinite(v) for v in (v0, v1)):
            ax.plot([0.0, 1.0], [v0, v1], linestyle="--", linewidth=1.0, color=fs.GREY, label="chord (1−α)v(0) + αv(1)")
            ax.axhline(0.5 * (v0 + v1), linestyle=":", linewidth=1.0, color=fs.GREY, label="mean of endpoints")
            alpha = results.get("barrier_alpha")
            if isinstance(alpha, (int, float)) and math.isfinite(alpha):
                chord = (1 - alpha) * v0 + alpha * v1
                ax.annotate("", xy=(alpha, chord + results["barrier"]), xytext=(alpha, chord),
                            arrowprops={"arrowstyle": "<->", "color": fs.VERMILLION})
        ax.set_xlabel(f"α   (0: {results.get('a', 'a')},  1: {results.get('b', 'b')})")
        ax.set_ylabel(f"{results.get('split', '')} {results.get('metric', '')}".strip())
        verdict = "stable" if results.get("stable") else "unstable"
        ax.set_title(f"linear path: barrier {_fmt(results.get('barrier'))}, instability "
                     f"{_fmt(results.get('instability'))} ({verdict})", fontsize=9)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
        return [save(fig, Path(out_dir) / "linear_mode_connectivity.png")]


def interpolate_states(a: dict[str, "torch.Tensor"], b: dict[str, "torch.Tensor"], alpha: float) -> dict[str, "torch.Tensor"]:
    """θ(α) = (1 − α)·a + α·b for every floating tensor (``torch.lerp``: exact at α = 0 and 1,
    and a itself when a = b); other tensors (integer buffers) from the nearer endpoint."""
    import torch

    out = {}
    for name, ta in a.items():
        tb = b[name]
        if ta.is_floating_point():
            out[name] = torch.lerp(ta, tb.to(ta.dtype), alpha)
        else:
            out[name] = (ta if alpha < 0.5 else tb).clone()
    return out


def check_compatible(a: dict[str, "torch.Tensor"], b: dict[str, "torch.Tensor"], name_a: str, name_b: str) -> None:
    """A StageError unless both state dicts hold the same tensor names and shapes."""
    if set(a) != set(b):
        only_a, only_b = sorted(set(a) - set(b)), sorted(set(b) - set(a))
        raise StageError(f"linear_mode_connectivity: '{name_a}' and '{name_b}' hold different tensors (only in "
                         f"'{name_a}': {', '.join(only_a[:5]) or 'none'}; only in '{name_b}': {', '.join(only_b[:5]) or 'none'})")
    for name, ta in a.items():
        if tuple(ta.shape) != tuple(b[name].shape):
            raise StageError(f"linear_mode_connectivity: tensor '{name}' is {tuple(ta.shape)} in '{name_a}' and "
                             f"{tuple(b[name].shape)} in '{name_b}': the two networks must share an architecture")


def chord_barrier(alphas: list[float], values: list[float]) -> tuple[float, float | None]:
    """max_α [v(α) − ((1 − α) v(0) + α v(1))] and the α attaining it (the first, on ties).
    Exactly 0 at both ends ((1 − 0)·v(0) + 0·v(1) is v(0) in floating point), so never
    negative; inf for an infinite value inside the path; (NaN, None) when a value is NaN or
    an endpoint is not finite (a diverged endpoint has no chord)."""
    if _undefined(values):
        return math.nan, None
    v0, v1 = values[0], values[-1]
    gaps = [v - ((1 - alpha) * v0 + alpha * v1) for alpha, v in zip(alphas, values)]
    best = max(range(len(gaps)), key=lambda i: gaps[i])
    return gaps[best], alphas[best]


def paper_instability(alphas: list[float], values: list[float]) -> tuple[float, float | None]:
    """Frankle et al.'s barrier height max_α v(α) − ½(v(0) + v(1)) and the α of the maximum
    (the first, on ties); (NaN, None) as for ``chord_barrier``."""
    if _undefined(values):
        return math.nan, None
    best = max(range(len(values)), key=lambda i: values[i])
    return values[best] - 0.5 * (values[0] + values[-1]), alphas[best]


def _undefined(values: list[float]) -> bool:
    return any(math.isnan(v) for v in values) or not (math.isfinite(values[0]) and math.isfinite(values[-1]))


def state_distance(a: dict[str, "torch.Tensor"], b: dict[str, "torch.Tensor"]) -> float:
    """‖a − b‖₂ over the floating tensors (the ones interpolated), in float64."""
    import torch

    total = torch.zeros((), dtype=torch.float64)
    for name, ta in a.items():
        if ta.is_floating_point():
            total += (ta.double() - b[name].double()).pow(2).sum().cpu()
    return float(total.sqrt())


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, (int, float)) else "n/a"
