"""ε-sharpness (Keskar et al. 2017) beside the top curvature eigenvalue and the trace."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field

from nnopt.core.kinds import AnalysisContext, Analyzer

from .hvp import CurvatureParams, curvature_operator
from .lanczos import hutchinson, lanczos
from nnopt.core import figure_style as fs


class SharpnessParams(CurvatureParams):
    epsilon: float = Field(1e-3, gt=0.0, description="box size ε: |δ_i| ≤ ε(|θ_i| + 1) (Keskar et al. use 1e-3 and 5e-4)")
    ascent_steps: int = Field(20, ge=0, le=10000, description="projected gradient-ascent steps")
    step_fraction: float = Field(
        0.25, gt=0.0, le=1.0, description="each ascent step moves every coordinate by this fraction of its box "
        "half-width, in the direction of the gradient's sign"
    )
    start: Literal["zero", "random"] = Field(
        "random", description="ascent start: δ = 0, or uniform in the box (seeded; escapes coordinates where the "
        "gradient is 0)"
    )
    eig: bool = Field(True, description="also the top eigenvalue of the curvature (Lanczos)")
    eig_tol: float = Field(1e-3, gt=0.0, lt=1.0, description="relative tolerance of the top eigenvalue")
    max_hvps: int = Field(100, ge=1, description="product budget of the top eigenvalue")
    trace_probes: int = Field(20, ge=0, description="Hutchinson probes of the trace (0: no trace)")


class Sharpness(Analyzer):
    """ε-sharpness of L at θ (Keskar, Mudigere, Nocedal, Smelyanskiy & Tang 2017, "On
    large-batch training for deep learning: generalization gap and sharp minima", metric 2.1,
    in the full space, A = I):

        C_ε = {δ : |δ_i| ≤ ε(|θ_i| + 1) for every i},
        φ_ε(θ) = 100 · (max_{δ∈C_ε} L(θ + δ) − L(θ)) / (1 + L(θ)).

    The reported ``sharpness`` is φ_ε, normalized by (1 + L(θ)) and ×100 exactly as Keskar et
    al. do; ``loss_increase`` is the unnormalized max_{δ∈C_ε} L(θ+δ) − L(θ). The maximum is
    found (Keskar et al. use L-BFGS-B) by ``ascent_steps`` steps of projected sign-gradient
    ascent, δ ← Π_C(δ + s·r ⊙ sign ∇L(θ + δ)) with r_i = ε(|θ_i| + 1) the box half-widths,
    s = ``step_fraction`` and Π_C the clamp onto the box, from δ = 0 or a seeded uniform point
    of the box; the best iterate counts and δ = 0 is a candidate, so φ_ε ≥ 0 and every δ
    evaluated lies in C_ε. This is a lower bound on the true maximum (the problem is
    non-concave); for a convex quadratic with diagonal curvature the maximum is at the
    vertex δ_i = sign(θ_i) r_i, which the ascent reaches.

    Beside it, as flatness measures on the same examples: the top eigenvalue of the curvature
    (``top_eigenvalue``, Lanczos, with its residual and ``converged``) and Hutchinson's trace
    (``trace`` ± ``trace_se``). The loss is the mean over the examples ``CurvatureParams``
    select, with normalization layers as ``bn`` says.
    """

    Params: ClassVar[type[SharpnessParams]] = SharpnessParams
    cache_version: ClassVar[int] = 1
    params: SharpnessParams

    def analyze(self, ctx: AnalysisContext) -> dict[str, Any]:
        import torch

        p = self.params
        started = time.perf_counter()
        with curvature_operator(ctx, p, "sharpness") as op:
            base = op.loss()
            radius = p.epsilon * (op.theta.abs() + 1.0)
            if p.start == "random":
                u = torch.rand(op.dim, generator=ctx.generator, dtype=torch.float64).to(op.device, op.dtype)
                delta = (2 * u - 1) * radius
            else:
                delta = torch.zeros_like(op.theta)
            best, best_delta = base, torch.zeros_like(op.theta)
            history = [base]
            for step in range(p.ascent_steps + 1):
                value, grad = op.loss_and_grad(delta)
                history.append(value)
                if value > best:
                    best, best_delta = value, delta.clone()
                if step == p.ascent_steps:
                    break
                delta = torch.maximum(torch.minimum(delta + p.step_fraction * radius * grad.sign(), radius), -radius)
            inside = bool((best_delta.abs() <= radius * (1 + 1e-6)).all())
            out: dict[str, Any] = {
                "epsilon": p.epsilon, "loss": base, "max_loss": best, "loss_increase": best - base,
                "sharpness": 100.0 * (best - base) / (1.0 + base), "normalization": "100·(max L − L)/(1 + L) (Keskar)",
                "ascent_steps": p.ascent_steps, "ascent_losses": history, "in_box": inside,
                "delta_linf_over_radius": float((best_delta.abs() / radius).max()),
                "curvature": p.curvature, "samples": op.n, "dim": op.dim, "bn": p.bn, "step": ctx.step,
            }
            n_hvps = 0
            if p.eig:
                found = lanczos(op.matvec, op.dim, k=1, which="top", tol=p.eig_tol, max_matvecs=p.max_hvps,
                                generator=ctx.generator, dtype=op.dtype, device=op.device)
                out.update({"top_eigenvalue": found.values[0], "top_residual": found.residuals[0],
                            "top_converged": found.converged[0]})
                n_hvps += found.n_matvecs
            if p.trace_probes:
                trace, se, _ = hutchinson(op.matvec, op.dim, probes=p.trace_probes, generator=ctx.generator,
                                          dtype=op.dtype, device=op.device)
                out.update({"trace": trace, "trace_se": se})
                n_hvps += p.trace_probes
            out.update({"n_hvps": n_hvps, "seconds": time.perf_counter() - started})
        return out

    def plot(self, results: dict[str, Any], out_dir: Path) -> list[Path]:
        from ._plot import new_figure, save

        history = results.get("ascent_losses") or []
        if not history:
            return []
        fig, ax = new_figure(6.4, 4.0)
        ax.plot(range(len(history)), history, marker="o", markersize=3, label="L(θ + δ) along the ascent")
        ax.axhline(results["loss"], color=fs.GREY, linestyle="--", linewidth=0.8, label="L(θ)")
        ax.axhline(results["max_loss"], color=fs.VERMILLION, linestyle=":", linewidth=0.8, label="max found")
        ax.set_xlabel("ascent step (0: θ itself)")
        ax.set_ylabel("loss")
        parts = [f"ε-sharpness {results.get('sharpness', float('nan')):.3g} (ε = {results.get('epsilon')})"]
        if "top_eigenvalue" in results:
            parts.append(f"λ_max {results['top_eigenvalue']:.3g}")
        if "trace" in results:
            parts.append(f"tr {results['trace']:.3g}")
        ax.set_title(", ".join(parts), fontsize=9)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
        return [save(fig, Path(out_dir) / "sharpness.png")]
