"""The 2-D loss surface around a solution: along two random filter-normalized directions (Li,
Xu, Taylor, Studer & Goldstein 2018) or along the top PCA directions of a training trajectory."""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field, model_validator

from nnopt.core.component import Params, WeightRef
from nnopt.core.errors import StageError
from nnopt.core.kinds import AnalysisContext, Analyzer

from .grid_axis import Axis
from nnopt.core import figure_style as fs

DEFAULT_AXIS = {"start": -1.0, "stop": 1.0, "points": 21}
MAX_GRID = 250_000  # 500 × 500 points


class SurfaceParams(Params):
    at: WeightRef | None = Field(None, description="the centre θ* of the surface: STAGE, STAGE@N or STAGE@init; "
                                 "None: the analyzed model")
    directions: Literal["random", "pca"] = Field(
        "random", description="`random`: two Gaussian directions, filter-normalized (Li et al. 2018); `pca`: the top "
        "two principal directions of `trajectory` around `at`")
    trajectory: list[WeightRef] | WeightRef | None = Field(
        None, description="with directions: pca, the checkpoints of a training run: a list, e.g. [train@0, "
        "train@50, train@100, train] (at least three; every one must be kept by its stage), or a stage, `train`: "
        "every step it keeps and its final weights")
    normalization: Literal["filter", "none"] = Field(
        "filter", description="random directions: `filter` rescales each filter (output row / channel) to the norm "
        "of the weights' filter; `none` keeps the raw Gaussian")
    ignore: Literal["biasbn", "none"] = Field(
        "biasbn", description="`biasbn`: the direction is zero on 1-D tensors (biases, normalization scales and "
        "shifts), so they stay at θ*; `none`: they move too")
    x: Axis | None = Field(None, description="grid along the first direction {start, stop, points}; None: "
                           "[-1, 1] × 21 for random directions, the trajectory's span (+25%) × 21 for pca")
    y: Axis | None = Field(None, description="grid along the second direction; None: as x")
    split: Literal["train", "test"] = Field("train", description="split the loss is evaluated on")
    samples: int | None = Field(None, ge=1, description="at most this many examples of `split` (a seeded subset, "
                                "the same at every grid point); None: all")
    bn: Literal["eval", "recompute"] = Field(
        "eval", description="BatchNorm at each grid point: `eval` uses θ*'s running statistics; `recompute` "
        "re-estimates them from training inputs at that point (slower: one point at a time)")
    bn_samples: int | None = Field(None, ge=2, description="training inputs used by bn: recompute (a seeded "
                                   "subset); None: the whole train split")
    method: Literal["auto", "vmap", "loop"] = Field(
        "auto", description="`vmap`: grid points evaluated in chunks by vmap over stacked weights; `loop`: "
        "load_state_dict per point (the reference); `auto` (default): `vmap` on a GPU, `loop` on a CPU (measured: a 51×51 surface of an MLP 64-256-256-10 on 1,024 samples takes 9.9 s by `loop` and 13.3 s by `vmap` on one core: the per-point activations stay in cache)")
    chunk: int = Field(16, ge=1, le=4096, description="grid points per vmap call (bounds memory: chunk × batch "
                       "activations)")
    batch_size: int = Field(1024, ge=1, description="examples per forward pass")

    @model_validator(mode="after")
    def _trajectory_with_pca(self) -> "SurfaceParams":
        if self.directions == "pca" and self.trajectory is None:
            raise ValueError("directions: pca needs `trajectory`: a list of at least three kept checkpoints, e.g. "
                             "[train@0, train@50, train]")
        if self.directions == "random" and self.trajectory is not None:
            raise ValueError("`trajectory` is only used with directions: pca")
        if isinstance(self.trajectory, list) and len(self.trajectory) < 3:
            raise ValueError(f"`trajectory` lists {len(self.trajectory)} checkpoints; PCA directions need at least three")
        if isinstance(self.trajectory, WeightRef) and self.trajectory.step is not None:
            raise ValueError(f"`trajectory: {self.trajectory}` names one checkpoint; name the stage alone "
                             f"({self.trajectory.stage}: all its kept steps) or list at least three")
        if (self.x.points if self.x else 21) * (self.y.points if self.y else 21) > MAX_GRID:
            raise ValueError(f"the grid has more than {MAX_GRID} points")
        return self


class Surface(Analyzer):
    """The loss on a plane through θ*: L(θ* + α·δ + β·η) on an (α, β) grid.

    Li, Xu, Taylor, Studer & Goldstein 2018 ("Visualizing the loss landscape of neural nets",
    NeurIPS). ``directions: random``: δ and η are Gaussian (``directions.gaussian_direction``)
    and filter-normalized — every filter (output row of a Linear weight, output channel of a
    Conv kernel) rescaled to the norm of θ*'s matching filter,
    δ_{i,j} ← δ_{i,j}/‖δ_{i,j}‖·‖θ*_{i,j}‖ — so that surfaces of networks with different weight
    scales are comparable; 1-D tensors (biases, normalization parameters) get zero direction
    under ``ignore: biasbn`` (the paper's choice). ``directions: pca``: δ, η are the top two
    principal directions of the checkpoints θ_i − θ* of a trajectory (§7 of the paper: random
    directions in high dimension are nearly orthogonal to the optimization path, which a
    PCA plane contains), unit-norm, so α and β are distances in weight space; the
    trajectory's projection onto the plane and each direction's explained variance are
    reported and drawn.

    The grid is evaluated in chunks of stacked weights by ``torch.func.vmap`` over
    ``functional_call`` (``weight_paths.PointEvaluator``), not one model copy per point;
    ``method: loop`` is the load-per-point reference (equal to 1e-6 in the tests). BatchNorm
    is the explicit ``bn`` option: θ*'s running statistics (``eval``), or statistics
    re-estimated at every point (``recompute``; buffers are never moved along a direction).
    Results: ``x``, ``y``, ``loss[j][i]`` (row j = y_j, column i = x_i), ``accuracy`` the same
    (None for regression), the reference's own loss, the grid minimum, timing.
    """

    Params: ClassVar[type[SurfaceParams]] = SurfaceParams
    cache_version: ClassVar[int] = 1

    params: SurfaceParams

    def analyze(self, ctx: AnalysisContext) -> dict[str, Any]:
        import torch

        from .directions import pca_directions, random_directions
        from .weight_paths import PointEvaluator, check_same_tensors, param_names, subset

        p = self.params
        started = time.perf_counter()
        if (p.at is not None or p.trajectory) and ctx.load_model is None:
            raise StageError("surface: this context cannot load weight references (use the analyzer in an analyze "
                             "stage)")
        model = ctx.load_model(p.at) if p.at is not None else ctx.model
        names = param_names(model)
        state = model.state_dict()
        origin = {n: state[n].detach().clone() for n in names}
        classification = ctx.data.task == "classification"
        x_all, y_all = (ctx.data.x_train, ctx.data.y_train) if p.split == "train" else (ctx.data.x_test, ctx.data.y_test)
        if int(x_all.shape[0]) == 0:
            raise StageError(f"surface: the {p.split} split is empty (use split: train)")
        xs, ys = subset(x_all, y_all, p.samples, ctx.generator)

        extra: dict[str, Any] = {}
        if p.directions == "random":
            d1, d2 = random_directions(origin, ctx.generator, p.ignore, normalize=p.normalization == "filter")
            x_axis = p.x or Axis(**DEFAULT_AXIS)
            y_axis = p.y or Axis(**DEFAULT_AXIS)
        else:
            points = []
            trajectory = _checkpoints(p.trajectory, ctx)
            for ref in trajectory:
                other = ctx.load_model(ref).state_dict()
                check_same_tensors(origin, {n: other[n] for n in names if n in other},
                                   str(p.at or "the analyzed model"), str(ref), "surface")
                points.append({n: other[n] for n in names})
            pca = pca_directions(points, origin, p.ignore)
            d1, d2 = pca["directions"]
            coords = pca["coords"]
            x_axis = p.x or _span([c[0] for c in coords])
            y_axis = p.y or _span([c[1] for c in coords])
            extra = {"explained_variance": pca["explained"],
                     "trajectory": [{"ref": str(r), "x": c[0], "y": c[1]} for r, c in zip(trajectory, coords)]}

        gx = torch.tensor(x_axis.values(), dtype=torch.float64)
        gy = torch.tensor(y_axis.values(), dtype=torch.float64)
        nx, ny = len(gx), len(gy)

        def states_of(i: int, j: int) -> dict[str, torch.Tensor]:
            k = torch.arange(i, j)
            a, b = gx[k % nx], gy[k // nx]
            out = {}
            for n, t in origin.items():
                shape = (-1,) + (1,) * t.ndim
                out[n] = (t.unsqueeze(0) + a.to(t.dtype).reshape(shape).to(t.device) * d1[n].unsqueeze(0)
                          + b.to(t.dtype).reshape(shape).to(t.device) * d2[n].unsqueeze(0))
            return out

        bn_inputs = None
        if p.bn == "recompute":
            bn_inputs, _ = subset(ctx.data.x_train, ctx.data.y_train, p.bn_samples, ctx.generator)
        evaluator = PointEvaluator(model, ctx.loss_fn, {p.split: (xs, ys)}, classification, bn=p.bn,
                                   bn_inputs=bn_inputs, method=p.method, chunk=p.chunk, batch_size=p.batch_size)
        grid_started = time.perf_counter()
        values = evaluator.evaluate(nx * ny, states_of)[p.split]
        grid_seconds = time.perf_counter() - grid_started
        reference = PointEvaluator(model, ctx.loss_fn, {p.split: (xs, ys)}, classification, bn=p.bn,
                                   bn_inputs=bn_inputs, method="loop", batch_size=p.batch_size
                                   ).evaluate(1, lambda i, j: {n: t.unsqueeze(0) for n, t in origin.items()})[p.split]

        loss = [values["loss"][r * nx:(r + 1) * nx] for r in range(ny)]
        accuracy = ([values["accuracy"][r * nx:(r + 1) * nx] for r in range(ny)] if classification else None)
        finite = [(v, i % nx, i // nx) for i, v in enumerate(values["loss"]) if math.isfinite(v)]
        best = min(finite) if finite else (math.nan, None, None)
        return {
            "at": str(p.at) if p.at is not None else None,
            "directions": p.directions,
            "normalization": p.normalization if p.directions == "random" else "unit",
            "ignore": p.ignore,
            "bn": p.bn,
            "split": p.split,
            "samples": int(xs.shape[0]),
            "x": gx.tolist(),
            "y": gy.tolist(),
            "loss": loss,
            "accuracy": accuracy,
            "reference_loss": reference["loss"][0],
            "reference_accuracy": reference["accuracy"][0] if classification else None,
            "min_loss": best[0],
            "min_at": [float(gx[best[1]]), float(gy[best[2]])] if best[1] is not None else None,
            "direction_norms": [_norm(d1), _norm(d2)],
            "method": evaluator.method,
            "points": nx * ny,
            "grid_seconds": grid_seconds,
            "seconds": time.perf_counter() - started,
            **extra,
        }

    def plot(self, results: dict[str, Any], out_dir: Path) -> list[Path]:
        import numpy as np

        from ._plot import new_figure, save

        x, y, loss = results.get("x") or [], results.get("y") or [], results.get("loss") or []
        if len(x) < 2 or len(y) < 2:
            return []
        z = np.array([[v if isinstance(v, (int, float)) else np.nan for v in row] for row in loss], dtype=float)
        if not np.isfinite(z).any():
            return []
        xx, yy = np.meshgrid(np.array(x), np.array(y))
        finite = z[np.isfinite(z)]
        lo, hi = float(finite.min()), float(finite.max())
        label = f"{results.get('split', '')} loss".strip()
        files = []

        fig, ax = new_figure(5.6, 4.8)
        if lo > 0 and hi > lo * 1.0001:
            levels = np.geomspace(lo, hi, 25)
        else:
            levels = np.linspace(lo, hi if hi > lo else lo + 1.0, 25)
        filled = ax.contourf(xx, yy, np.where(np.isfinite(z), z, hi), levels=levels, cmap=fs.SEQUENTIAL)
        ax.contour(xx, yy, np.where(np.isfinite(z), z, hi), levels=levels[::3], colors="white", linewidths=0.5)
        fig.colorbar(filled, ax=ax, label=label)
        ax.plot([0.0], [0.0], marker="*", color=fs.VERMILLION, markersize=10, label=results.get("at") or "θ*")
        traj = results.get("trajectory") or []
        if traj:
            ax.plot([t["x"] for t in traj], [t["y"] for t in traj], marker="o", markersize=3, color="white",
                    linewidth=1.0, label="trajectory")
        names = ("PC1", "PC2") if results.get("directions") == "pca" else ("δ", "η")
        ev = results.get("explained_variance")
        ax.set_xlabel(f"{names[0]}" + (f" ({100 * ev[0]:.1f}% of variance)" if ev else ""))
        ax.set_ylabel(f"{names[1]}" + (f" ({100 * ev[1]:.1f}% of variance)" if ev else ""))
        ax.set_title(f"loss surface ({results.get('directions')} directions)", fontsize=9)
        ax.legend(fontsize=7, loc="upper right")
        files.append(save(fig, Path(out_dir) / "surface_contour.png"))

        fig, ax3 = new_figure(6.0, 5.0, projection="3d")
        ax3.plot_surface(xx, yy, np.where(np.isfinite(z), z, np.nan), cmap=fs.SEQUENTIAL, linewidth=0, antialiased=True)
        ax3.set_xlabel(names[0])
        ax3.set_ylabel(names[1])
        ax3.set_zlabel(label)
        files.append(save(fig, Path(out_dir) / "surface_3d.png"))
        return files


def _checkpoints(trajectory: "list[WeightRef] | WeightRef | None", ctx: AnalysisContext) -> list[Any]:
    """The trajectory's weight references in order: a list as given; a stage, every step it
    keeps (``ctx.kept_steps``) and then its final weights."""
    if isinstance(trajectory, list):
        return list(trajectory)
    if trajectory is None:
        return []
    steps = ctx.kept_steps(trajectory.stage) if ctx.kept_steps is not None else []
    refs = [f"{trajectory.stage}@{n}" for n in steps] + [trajectory.stage]
    if len(refs) < 3:
        raise StageError(f"surface: stage '{trajectory.stage}' keeps {len(steps)} step(s) besides its final weights; "
                         "PCA directions need at least three checkpoints (add steps to its `keep`)")
    return refs


def _span(values: list[float]) -> Axis:
    """21 points covering the values and 0 with a 25% margin on each side."""
    lo, hi = min(values + [0.0]), max(values + [0.0])
    pad = 0.25 * (hi - lo) if hi > lo else 1.0
    return Axis(start=lo - pad, stop=hi + pad, points=21)


def _norm(direction: dict[str, Any]) -> float:
    return float(sum(float(t.double().pow(2).sum()) for t in direction.values()) ** 0.5)
