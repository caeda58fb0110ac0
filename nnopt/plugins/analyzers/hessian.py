"""The curvature of the loss: extreme Hessian eigenvalues, spectral density, trace, and the
exact Hessian of small models (its reference).

Every analyzer here takes the ``CurvatureParams`` of ``hvp`` (which curvature — Hessian,
Gauss–Newton, empirical Fisher —, over which examples, in which batches, how normalization
layers are treated, in which precision) and works through ``CurvatureOperator.matvec``.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field

from nnopt.core.errors import StageError
from nnopt.core.kinds import AnalysisContext, Analyzer

from .hvp import CurvatureParams, curvature_operator
from .lanczos import broadened_density, hutchinson, lanczos, power_iteration, slq, slq_trace
from nnopt.core import figure_style as fs


def _common(ctx: AnalysisContext, p: CurvatureParams, op: Any, started: float) -> dict[str, Any]:
    return {"curvature": p.curvature, "split": p.split, "samples": op.n, "dim": op.dim, "bn": p.bn,
            "precision": p.precision, "seconds": time.perf_counter() - started, "step": ctx.step}


# ============================================================================ hessian_eigs
class HessianEigsParams(CurvatureParams):
    k: int = Field(5, ge=1, le=1000, description="how many eigenvalues (per end, for which: both)")
    which: Literal["top", "bottom", "both"] = Field(
        "top", description="`top`: the k largest; `bottom`: the k smallest (most negative); `both`"
    )
    method: Literal["lanczos", "power"] = Field(
        "lanczos", description="`lanczos` (full reorthogonalization) or `power` (power iteration with deflation, "
        "PyHessian's method: the eigenvalues of largest magnitude, which: top only)"
    )
    tol: float = Field(1e-3, gt=0.0, lt=1.0, description="relative tolerance: stop when every wanted value's "
                       "residual bound is at most tol·|λ|")
    max_hvps: int = Field(200, ge=1, description="budget of curvature–vector products")


class HessianEigs(Analyzer):
    """The k extreme eigenvalues of the curvature C (default the Hessian H = ∇²L(θ)).

    ``lanczos``: the Lanczos process with full reorthogonalization on v ↦ Cv (Golub & Van
    Loan §10.1; as used for neural networks by Ghorbani, Krishnan & Xiao 2019), started from
    a seeded Gaussian vector. After m products the Ritz values θ_i of the tridiagonal T_m
    estimate the eigenvalues, and |β_m s_{m,i}| (s_i the eigenvector of T_m) is the residual
    ‖C y_i − θ_i y_i‖ of the Ritz pair, a bound on the distance from θ_i to an eigenvalue of C.
    The process stops when every wanted value meets |β_m s_{m,i}| ≤ tol·|θ_i| — a bound on
    the relative error, not a step-to-step change — or when ``max_hvps`` products are spent.
    ``power``: power iteration with deflation (PyHessian, Yao, Gholami, Keutzer & Mahoney
    2020), each value stopped on its own residual ‖Cv − λv‖ ≤ tol·|λ|; it finds the values of
    largest magnitude and converges geometrically in the eigenvalue ratio.

    Reported per eigenvalue: ``eigenvalues``, ``residuals``, ``converged`` (and ``which``:
    top/bottom); ``n_hvps``, ``seconds``. While tracking in a train stage the learning rate η
    at the step is kept (``lr``, ``two_over_lr``): full-batch gradient descent on a quadratic
    is stable only while λ_max < 2/η, and training at the edge of stability (Cohen, Kaur, Li,
    Kolter & Talwalkar 2021) keeps λ_max hovering at 2/η — ``plot_series`` draws λ_max against
    2/η over the steps.
    """

    Params: ClassVar[type[HessianEigsParams]] = HessianEigsParams
    cache_version: ClassVar[int] = 1
    params: HessianEigsParams

    def analyze(self, ctx: AnalysisContext) -> dict[str, Any]:
        p = self.params
        if p.method == "power" and p.which != "top":
            raise StageError(f"hessian_eigs: method 'power' finds the eigenvalues of largest magnitude only "
                             f"(which: top); for which: {p.which} use method: lanczos")
        started = time.perf_counter()
        with curvature_operator(ctx, p, "hessian_eigs") as op:
            solve = lanczos if p.method == "lanczos" else power_iteration
            kwargs = {"which": p.which} if p.method == "lanczos" else {}
            found = solve(op.matvec, op.dim, k=p.k, tol=p.tol, max_matvecs=p.max_hvps, generator=ctx.generator,
                          dtype=op.dtype, device=op.device, **kwargs)
            out = _common(ctx, p, op, started)
        lr = ctx.lr
        out.update({
            "method": p.method, "which": found.which, "eigenvalues": found.values, "residuals": found.residuals,
            "converged": found.converged, "all_converged": bool(found.converged) and all(found.converged),
            "n_hvps": found.n_matvecs, "tol": p.tol,
            "top": max(found.values) if found.values else None,
            "lr": lr, "two_over_lr": (2.0 / lr) if lr else None,
        })
        return out

    def plot(self, results: dict[str, Any], out_dir: Path) -> list[Path]:
        from ._plot import new_figure, save

        values = results.get("eigenvalues") or []
        if not values:
            return []
        conv = results.get("converged") or [True] * len(values)
        fig, ax = new_figure(6.4, 4.0)
        idx = list(range(1, len(values) + 1))
        ax.stem(idx, values, basefmt="grey")
        bad = [(i, v) for i, v, c in zip(idx, values, conv) if not c]
        if bad:
            ax.plot(*zip(*bad), "x", color=fs.VERMILLION, label="not converged")
        if results.get("two_over_lr"):
            ax.axhline(results["two_over_lr"], linestyle="--", color=fs.ORANGE, label=r"$2/\eta$")
        ax.set_xlabel("index (top ones first)")
        ax.set_ylabel(f"eigenvalue of {results.get('curvature', 'hessian')}")
        ax.set_title(f"{results.get('method')}: {len(values)} eigenvalues in {results.get('n_hvps')} products",
                     fontsize=9)
        ax.grid(True, alpha=0.3)
        if bad or results.get("two_over_lr"):
            ax.legend(fontsize=7)
        return [save(fig, Path(out_dir) / "hessian_eigs.png")]

    def plot_series(self, series: list[tuple[int, dict[str, Any]]], out_dir: Path) -> list[Path]:
        from ._plot import finite_pairs, new_figure, save

        steps, tops = finite_pairs([s for s, _ in series], [r.get("top") for _, r in series])
        if not tops:
            return []
        fig, ax = new_figure(6.4, 4.0)
        ax.plot(steps, tops, marker="o", markersize=3, label=r"$\lambda_{\max}$")
        lr_steps, bound = finite_pairs([s for s, _ in series], [r.get("two_over_lr") for _, r in series])
        if bound:
            ax.plot(lr_steps, bound, linestyle="--", color=fs.ORANGE, label=r"$2/\eta$")
        ax.set_xlabel("step")
        ax.set_ylabel("top eigenvalue")
        ax.set_title(r"sharpness during training (edge of stability: $\lambda_{\max} \approx 2/\eta$)", fontsize=9)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
        return [save(fig, Path(out_dir) / "hessian_eigs_track.png")]


# ============================================================================ hessian_density
def outlier_split(values: list[float], floor: float, max_count: int, min_gap: float) -> tuple[int, float | None, float]:
    """How many of the largest ``values`` stand apart from the bulk below them.

    With λ_1 ≥ λ_2 ≥ … (the top of the spectrum), the split is the largest ratio gap
    λ_j / λ_{j+1} over j ≤ ``max_count`` among values above ``floor`` (the scale of the bulk:
    the magnitude of the most negative eigenvalue, since a neural network's bulk sits around
    0 with both signs; ratios of values smaller than that are noise). The first j values are
    outliers when that ratio is at least ``min_gap``; else there are none. Returns (count, the
    bulk edge λ_{j+1} (None when there are no outliers), the ratio)."""
    vals = sorted(values, reverse=True)
    best, best_ratio = 0, 1.0
    for j in range(1, min(max_count, len(vals) - 1) + 1):
        hi, lo = vals[j - 1], vals[j]
        if lo <= 0 or lo < floor:
            break
        if hi / lo > best_ratio:
            best, best_ratio = j, hi / lo
    if best == 0 or best_ratio < min_gap:
        return 0, None, best_ratio
    return best, vals[best], best_ratio


class HessianDensityParams(CurvatureParams):
    probes: int = Field(5, ge=1, le=1000, description="random probe vectors (Rademacher)")
    steps: int = Field(80, ge=2, le=5000, description="Lanczos steps per probe (quadrature nodes)")
    sigma: float = Field(0.01, gt=0.0, description="Gaussian broadening σ as a fraction of the spectrum's range "
                         "(max node − min node)")
    grid: int = Field(1000, ge=10, le=100000, description="points of the density's grid")
    max_outliers: int = Field(50, ge=1, description="most eigenvalues reported as outliers")
    min_gap: float = Field(2.0, ge=1.0, description="outliers need a ratio gap λ_j/λ_{j+1} at least this above the bulk")


class HessianDensity(Analyzer):
    """The spectral density of C by stochastic Lanczos quadrature (SLQ).

    φ(t) = (1/d) Σ_i δ(t − λ_i) is estimated, following Ghorbani, Krishnan & Xiao 2019 ("An
    investigation into neural net optimization via Hessian eigenvalue density") and Ubaru,
    Chen & Saad 2017, as

        φ̂(t) = (1/P) Σ_{p=1..P} Σ_{j=1..m} τ_pj · N(t; θ_pj, σ²),

    where for each Rademacher probe v_p (normalized) m Lanczos steps give the Gauss
    quadrature nodes θ_pj (Ritz values) and weights τ_pj = (first entry of T's j-th
    eigenvector)², Σ_j τ_pj = 1; the Gaussian broadening σ is ``sigma`` times the range of the
    nodes. φ̂ integrates to 1 over R (``mass`` is its trapezoid integral over the grid, which
    extends 5σ beyond the extreme nodes). Also the trace estimate d·mean_p Σ_j τ_pj θ_pj
    (Hutchinson's, by the same products) with its standard error.

    Outliers: the extreme nodes converge to the extreme eigenvalues, so an isolated eigenvalue
    appears in every probe. The top nodes are taken as the median over probes of each
    probe's j-th largest node, and the outliers are those above the largest ratio gap
    (``outlier_split``, at least ``min_gap``): ``outliers``, ``bulk_edge``, ``gap``. Sagun,
    Bottou & LeCun 2016/2017 and Papyan 2019 find about as many outliers as classes for a
    trained classifier.
    """

    Params: ClassVar[type[HessianDensityParams]] = HessianDensityParams
    cache_version: ClassVar[int] = 1
    params: HessianDensityParams

    def analyze(self, ctx: AnalysisContext) -> dict[str, Any]:
        import torch

        p = self.params
        started = time.perf_counter()
        with curvature_operator(ctx, p, "hessian_density") as op:
            quads = slq(op.matvec, op.dim, probes=p.probes, steps=p.steps, generator=ctx.generator,
                        dtype=op.dtype, device=op.device)
            out = _common(ctx, p, op, started)
            dim = op.dim
        nodes = [t for q in quads for t in q.nodes]
        lo, hi = min(nodes), max(nodes)
        sigma = p.sigma * max(hi - lo, abs(hi), 1e-12)
        a, b = lo - 5 * sigma, hi + 5 * sigma
        grid = [a + (b - a) * i / (p.grid - 1) for i in range(p.grid)]
        density = broadened_density(quads, grid, sigma)
        mass = float(torch.trapezoid(torch.tensor(density, dtype=torch.float64), torch.tensor(grid, dtype=torch.float64)))
        trace, trace_se = slq_trace(quads, dim)
        depth = min(len(q.nodes) for q in quads)
        top = [float(torch.tensor([sorted(q.nodes, reverse=True)[j] for q in quads]).median()) for j in range(depth)]
        floor = max(0.0, -min(nodes))
        count, edge, gap = outlier_split(top, floor, p.max_outliers, p.min_gap)
        out.update({
            "probes": p.probes, "steps": p.steps, "sigma": sigma, "grid": grid, "density": density, "mass": mass,
            "nodes": [q.nodes for q in quads], "weights": [q.weights for q in quads],
            "n_hvps": sum(q.matvecs for q in quads), "trace": trace, "trace_se": trace_se,
            "lambda_min": lo, "lambda_max": hi, "top_nodes": top[: p.max_outliers + 1],
            "outliers": top[:count], "n_outliers": count, "bulk_edge": edge, "gap": gap,
        })
        return out

    def plot(self, results: dict[str, Any], out_dir: Path) -> list[Path]:
        from ._plot import new_figure, save, set_log_y

        grid, density = results.get("grid") or [], results.get("density") or []
        if not density:
            return []
        floor = max(max(density) * 1e-12, 1e-300)
        shown = [max(v, floor) for v in density]
        fig, ax = new_figure(6.4, 4.0)
        ax.plot(grid, shown, linewidth=1.2)
        set_log_y(ax, shown)
        for v in results.get("outliers") or []:
            ax.axvline(v, color=fs.VERMILLION, linewidth=0.6, alpha=0.5)
        if results.get("bulk_edge") is not None:
            ax.axvline(results["bulk_edge"], color=fs.GREY, linestyle="--", linewidth=0.8, label="bulk edge")
            ax.legend(fontsize=7)
        ax.set_xlabel("eigenvalue")
        ax.set_ylabel("density (log)")
        ax.set_title(f"SLQ spectral density ({results.get('probes')} probes × {results.get('steps')} steps; "
                     f"{results.get('n_outliers', 0)} outliers)", fontsize=9)
        ax.grid(True, alpha=0.3)
        return [save(fig, Path(out_dir) / "hessian_density.png")]


# ============================================================================ hessian_trace
class HessianTraceParams(CurvatureParams):
    probes: int = Field(100, ge=1, le=100000, description="Rademacher probe vectors")


class HessianTrace(Analyzer):
    """tr C by Hutchinson's estimator (Hutchinson 1989; as in PyHessian, Yao et al. 2020):

        tr C = E_z[zᵀ C z],  z_i ∈ {−1, +1} independent and uniform (E zzᵀ = I),

    averaged over ``probes`` seeded draws; ``trace_se`` is the standard error s/√P of the mean
    (s the sample standard deviation of zᵀCz), so tr C lies within ±2 SE with about 95%
    probability. Also ``n_probes``, ``n_hvps`` (one per probe), ``seconds``.
    """

    Params: ClassVar[type[HessianTraceParams]] = HessianTraceParams
    cache_version: ClassVar[int] = 1
    params: HessianTraceParams

    def analyze(self, ctx: AnalysisContext) -> dict[str, Any]:
        p = self.params
        started = time.perf_counter()
        with curvature_operator(ctx, p, "hessian_trace") as op:
            trace, se, samples = hutchinson(op.matvec, op.dim, probes=p.probes, generator=ctx.generator,
                                            dtype=op.dtype, device=op.device)
            out = _common(ctx, p, op, started)
        out.update({"trace": trace, "trace_se": se, "n_probes": p.probes, "n_hvps": p.probes,
                    "probe_values": samples})
        return out

    def plot(self, results: dict[str, Any], out_dir: Path) -> list[Path]:
        from ._plot import new_figure, save

        samples = results.get("probe_values") or []
        if not samples:
            return []
        fig, ax = new_figure(6.4, 4.0)
        running, total = [], 0.0
        for i, s in enumerate(samples, 1):
            total += s
            running.append(total / i)
        ax.plot(range(1, len(samples) + 1), running, label="running mean of zᵀCz")
        se = results.get("trace_se")
        if isinstance(se, float) and math.isfinite(se):
            t = results["trace"]
            ax.axhspan(t - 2 * se, t + 2 * se, color=fs.BLUE, alpha=0.15, label="±2 SE")
        ax.set_xlabel("probes")
        ax.set_ylabel("trace estimate")
        ax.set_title(f"Hutchinson trace {results.get('trace', float('nan')):.4g} ± {se if se is not None else float('nan'):.2g}",
                     fontsize=9)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
        return [save(fig, Path(out_dir) / "hessian_trace.png")]


# ============================================================================ hessian_exact
class HessianExactParams(CurvatureParams):
    precision: Literal["float32", "float64"] = Field("float64", description="arithmetic (float64 by default: this is the reference)")
    max_params: int = Field(3000, ge=1, le=50000, description="refuse models with more trainable parameters than this "
                            "(the matrix has d² entries)")


class HessianExact(Analyzer):
    """The full d × d curvature matrix and all its eigenvalues, for small models: the reference
    the iterative estimates are tested against.

    ``hessian``: H = Σ_b (n_b/N) ∇²L_b(θ), each batch's Hessian by ``torch.func.hessian``
    (forward-over-reverse differentiation of the batch loss as a function of the flattened
    parameters) — a computation independent of the Hessian–vector products. ``gauss_newton``
    and ``fisher``: the columns C e_j of the operator's products. The matrix is symmetrized
    ((C + Cᵀ)/2; ``asymmetry`` reports max|C − Cᵀ| before) and diagonalized by
    ``torch.linalg.eigvalsh`` in ``precision`` (float64 by default). Reported: ``eigenvalues``
    (ascending, all d), ``top`` (the 10 largest, descending), ``bottom``, ``trace``,
    ``frobenius``, ``n_negative`` and ``n_zero`` (|λ| within d·ε·max|λ| of 0 counts as zero). Models above ``max_params`` parameters are refused.
    """

    Params: ClassVar[type[HessianExactParams]] = HessianExactParams
    cache_version: ClassVar[int] = 1
    params: HessianExactParams

    def analyze(self, ctx: AnalysisContext) -> dict[str, Any]:
        import torch

        p = self.params
        d = sum(q.numel() for q in ctx.model.parameters() if q.requires_grad)
        if d > p.max_params:
            raise StageError(f"hessian_exact: the model has {d} trainable parameters, above max_params = {p.max_params} "
                             f"(the matrix would have {d * d:,} entries); raise max_params, or use hessian_eigs / "
                             "hessian_density for large models")
        started = time.perf_counter()
        with curvature_operator(ctx, p, "hessian_exact") as op:
            matrix = exact_matrix(op)
            out = _common(ctx, p, op, started)
        asym = float((matrix - matrix.T).abs().max())
        matrix = 0.5 * (matrix + matrix.T)
        eig = torch.linalg.eigvalsh(matrix)
        values = [float(v) for v in eig.cpu()]
        # the numerical-rank threshold d·ε·max|λ|: values within it of 0 are zero to rounding
        zero = len(values) * torch.finfo(eig.dtype).eps * max(abs(values[0]), abs(values[-1]))
        out.update({
            "eigenvalues": values, "top": values[::-1][:10], "bottom": values[:10], "trace": float(matrix.trace()),
            "frobenius": float(torch.linalg.matrix_norm(matrix)), "n_negative": sum(v < -zero for v in values),
            "n_zero": sum(abs(v) <= zero for v in values),
            "asymmetry": asym, "seconds": time.perf_counter() - started,
        })
        return out

    def plot(self, results: dict[str, Any], out_dir: Path) -> list[Path]:
        from ._plot import new_figure, save

        values = results.get("eigenvalues") or []
        if not values:
            return []
        fig, ax = new_figure(6.4, 4.0)
        ax.hist(values, bins=min(100, max(10, len(values) // 5)), log=True, color=fs.BLUE)
        ax.set_xlabel("eigenvalue")
        ax.set_ylabel("count (log)")
        ax.set_title(f"exact spectrum of the {results.get('curvature', 'hessian')} (d = {len(values)})", fontsize=9)
        ax.grid(True, alpha=0.3)
        return [save(fig, Path(out_dir) / "hessian_exact.png")]


def exact_matrix(op: Any) -> "torch.Tensor":
    """The operator's d × d matrix: the Hessian by ``torch.func.hessian`` per batch (size-weighted),
    other curvatures column by column from their products."""
    import torch

    if op.curvature == "hessian":
        from torch.func import hessian

        total = torch.zeros(op.dim, op.dim, dtype=op.dtype, device=op.device)
        for w, (xb, yb) in zip(op.weights, op.batches):
            total += w * hessian(lambda flat: op._batch_loss(flat, xb, yb))(op.theta.detach())
        return total
    eye = torch.eye(op.dim, dtype=op.dtype, device=op.device)
    return torch.stack([op.matvec(eye[j]) for j in range(op.dim)], dim=1)
