"""Per-layer gradient norms: where gradients explode or vanish with depth (survey §4.1)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field

from nnopt.core.component import Params
from nnopt.core.kinds import AnalysisContext, Analyzer
from nnopt.core import figure_style as fs


class GradNormsParams(Params):
    source: Literal["batch", "train"] = Field(
        "batch",
        description="`batch`: the current mini-batch while tracking (the train split when there is none, "
        "as in an analyze stage); `train`: the train split",
    )
    samples: int | None = Field(
        1024,
        ge=1,
        description="at most this many train examples (a seeded random subset) when computing over the "
        "train split; None: all of them",
    )
    chunk: int = Field(
        4096, ge=1, description="examples per forward/backward pass over the train split (bounds memory; same result up to rounding)"
    )


class GradNorms(Analyzer):
    """Frobenius norm of the loss gradient for every parameter tensor: g_l = ‖∂L/∂W_l‖_F.

    ``L = (1/m) Σ_i ℓ(f_θ(x_i), y_i)`` over the examples chosen by ``source``. Exploding or
    vanishing gradients (survey §4.1, eqs. (13)–(14): for ``F(w) = ½(w_1⋯w_L − 1)²`` the
    gradient of ``w_i`` is ``(∏_{j≠i} w_j)·e``, so with all ``w_j = 2`` it grows like
    ``2^{L−1}`` and with ``w_j = ½`` it shrinks like ``2^{1−L}``) show as weight-gradient
    norms that grow or shrink geometrically with depth.

    Results: ``total`` = ‖∇_θ L‖ over all parameters; ``layers`` = {name: g_l} for every
    parameter; ``weights`` = [g_l] for the weight matrices/kernels (dim ≥ 2) in model order,
    with their names in ``weight_names``; ``ratios`` = [g_l / ‖W_l‖_F] aligned with ``weights``,
    the relative size of a gradient step on each layer (an SGD step of rate η changes W_l by
    the fraction η·g_l/‖W_l‖; NaN for an all-zero weight); ``growth_per_layer`` = (g_1 / g_K)^{1/(K−1)} over the K
    weight layers, the geometric-mean factor by which the norm grows per layer as the error is
    propagated back from the output to the input (> 1: exploding, < 1: vanishing).

    Gradients are taken with ``torch.autograd.grad``: the parameters' ``.grad`` (an
    optimizer's state during training) is never read or written.

    Plots: ``grad_norms.png``, the weight layers' g_l as bars; over training (``track``),
    ``grad_norms_track.png``, one line per weight layer, and ``grad_norms_heatmap.png``, g_l
    over weight layers × tracked steps on a log color scale (where along depth and when in
    training gradients explode or vanish).
    """

    Params: ClassVar[type[GradNormsParams]] = GradNormsParams
    cache_version: ClassVar[int] = 2

    params: GradNormsParams

    def analyze(self, ctx: AnalysisContext) -> dict[str, Any]:
        import torch

        model = ctx.model
        named = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
        if not named:
            return {"total": 0.0, "layers": {}, "weights": [], "weight_names": [], "ratios": [], "growth_per_layer": None}
        params = [p for _, p in named]

        if self.params.source == "batch" and ctx.batch is not None:
            chunks = [ctx.batch]
        else:
            x, y = ctx.data.x_train, ctx.data.y_train
            n = int(x.shape[0])
            if self.params.samples is not None and self.params.samples < n:
                idx = torch.randperm(n, generator=ctx.generator)[: self.params.samples].to(x.device)
                x, y = x[idx], y[idx]
            step = self.params.chunk
            chunks = [(x[i : i + step], y[i : i + step]) for i in range(0, int(x.shape[0]), step)]
        m = sum(int(xb.shape[0]) for xb, _ in chunks)

        grads: list[torch.Tensor] | None = None
        with torch.enable_grad():
            for xb, yb in chunks:
                # mean over the chunk, weighted to the mean over all m examples
                loss = ctx.loss_fn(model(xb), yb) * (xb.shape[0] / m)
                part = torch.autograd.grad(loss, params, allow_unused=True)
                part = [torch.zeros_like(p) if g is None else g for g, p in zip(part, params)]
                grads = part if grads is None else [a + b for a, b in zip(grads, part)]

        norms = torch.stack([g.detach().float().norm() for g in grads]).tolist()  # type: ignore[union-attr]
        layers = {name: v for (name, _), v in zip(named, norms)}
        weight_names = [name for name, p in named if p.dim() >= 2]
        weights = [layers[name] for name in weight_names]
        by_name = dict(named)
        weight_norms = torch.stack([by_name[name].detach().float().norm() for name in weight_names]).tolist() if weight_names else []
        ratios = [g / w if w > 0 else math.nan for g, w in zip(weights, weight_norms)]
        return {
            "total": math.sqrt(math.fsum(v * v for v in norms)),
            "layers": layers,
            "weights": weights,
            "weight_names": weight_names,
            "ratios": ratios,
            "growth_per_layer": _growth(weights),
        }

    def plot(self, results: dict[str, Any], out_dir: Path) -> list[Path]:
        from ._plot import new_figure, save, set_log_y

        names, values = results.get("weight_names") or [], results.get("weights") or []
        if not values:
            return []
        fig, ax = new_figure(max(6.4, 0.45 * len(values) + 2), 4.0)
        positions = list(range(len(values)))
        ax.bar(positions, [v if v > 0 else float("nan") for v in values], color=fs.BLUE)
        ax.set_xticks(positions, [_short(n) for n in names], rotation=45, ha="right", fontsize=8)
        positive = [v for v in values if v > 0 and math.isfinite(v)]
        set_log_y(ax, positive or [1.0])
        if positive:  # bars on a log axis need a floor below the smallest one: a full decade
            ax.set_ylim(bottom=10 ** math.floor(math.log10(min(positive)) - 1e-9))
        ax.set_xlabel("weight layer (input → output)")
        ax.set_ylabel(r"$\|\partial L/\partial W\|_F$")
        ax.set_title(f"gradient norm per layer (total {results.get('total', float('nan')):.3g})")
        ax.grid(True, axis="y", which="both", alpha=0.3)
        return [save(fig, Path(out_dir) / "grad_norms.png")]

    def plot_series(self, series: list[tuple[int, dict[str, Any]]], out_dir: Path) -> list[Path]:
        from ._plot import finite_pairs, new_figure, save, set_log_y

        if not series:
            return []
        names = list(series[-1][1].get("weight_names") or [])
        if not names:
            return []
        fig, ax = new_figure()
        plotted: list[float] = []
        for layer, name in enumerate(names):
            steps, values = finite_pairs(
                [s for s, _ in series], [r.get("layers", {}).get(name, float("nan")) for _, r in series]
            )
            positive = [(s, v) for s, v in zip(steps, values) if v > 0]
            if positive:
                ax.plot(*zip(*positive), label=_short(name), color=_layer_color(layer, len(names)), linewidth=1.2)
                plotted.extend(v for _, v in positive)
        if not plotted:
            return []
        set_log_y(ax, plotted)
        ax.set_xlabel("step")
        ax.set_ylabel(r"$\|\partial L/\partial W\|_F$")
        ax.set_title("gradient norm per weight layer")
        ax.grid(True, which="both", alpha=0.3)
        if len(names) <= 12:
            ax.legend(fontsize=7)
        files = [save(fig, Path(out_dir) / "grad_norms_track.png")]
        heatmap = _heatmap(series, names, Path(out_dir) / "grad_norms_heatmap.png")
        return files + ([heatmap] if heatmap is not None else [])


def _heatmap(series: list[tuple[int, dict[str, Any]]], names: list[str], path: Path) -> Path | None:
    """g_l over (weight layer, tracked step) as an image, log color scale; None when no g_l > 0."""
    from matplotlib.colors import LogNorm

    from ._plot import log_colorbar, new_figure, save

    grid = [[_positive(r.get("layers", {}).get(name)) for _, r in series] for name in names]
    shown = [v for row in grid for v in row if not math.isnan(v)]
    if not shown:
        return None
    steps = [s for s, _ in series]
    fig, ax = new_figure(max(6.4, min(12.0, 0.08 * len(steps) + 4)), max(3.0, min(10.0, 0.3 * len(names) + 1.5)))
    lo, hi = min(shown), max(shown)
    # a single value (or all equal) still needs a non-empty color range
    norm = LogNorm(vmin=lo, vmax=hi if hi > lo else lo * 10)
    # cell edges halfway between tracked steps, so unevenly spaced steps keep their place in time
    if len(steps) > 1:
        mids = [(a + b) / 2 for a, b in zip(steps, steps[1:])]
        x_edges = [steps[0] - (mids[0] - steps[0])] + mids + [steps[-1] + (steps[-1] - mids[-1])]
    else:
        x_edges = [steps[0] - 0.5, steps[0] + 0.5]
    mesh = ax.pcolormesh(x_edges, list(range(len(names) + 1)), grid, norm=norm, cmap=fs.SEQUENTIAL, shading="flat")
    ax.set_yticks([i + 0.5 for i in range(len(names))], [_short(n) for n in names], fontsize=7)
    ax.invert_yaxis()  # input layer on top, as the network is usually drawn
    ax.set_xlabel("step")
    ax.set_ylabel("weight layer")
    ax.set_title(r"$\|\partial L/\partial W\|_F$ per weight layer over training")
    log_colorbar(fig, mesh, ax, r"$\|\partial L/\partial W\|_F$")
    return save(fig, path)


def _positive(value: Any) -> float:
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) and value > 0 else math.nan


def _growth(weights: list[float]) -> float | None:
    if len(weights) < 2 or weights[0] <= 0 or weights[-1] <= 0:
        return None
    if not (math.isfinite(weights[0]) and math.isfinite(weights[-1])):
        return None
    return (weights[0] / weights[-1]) ** (1.0 / (len(weights) - 1))


def _short(name: str) -> str:
    return name[:-7] if name.endswith(".weight") else name


def _layer_color(i: int, n: int) -> Any:
    return fs.ramp(i, n)
