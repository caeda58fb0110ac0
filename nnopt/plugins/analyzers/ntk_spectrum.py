"""Eigenvalues of the neural tangent kernel on a subset of the data (λ_min sets the rate of
convergence of over-parameterized networks; Du et al. 2019, Arora et al. 2019)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import Field

from nnopt.core.component import KernelRef, Params
from nnopt.core.errors import StageError
from nnopt.core.kinds import AnalysisContext, Analyzer

from .signal_propagation import sample_inputs

if TYPE_CHECKING:  # pragma: no cover
    import torch


class NTKSpectrumParams(Params):
    samples: int = Field(128, ge=2, le=4096, description="examples the kernel matrix is computed on (a seeded subset)")
    source: Literal["train", "test"] = Field("train", description="split the examples are drawn from")
    kernel: KernelRef = Field(  # type: ignore[valid-type]
        "empirical_ntk", validate_default=True,
        description="the kernel (kind `kernels`): the model's empirical NTK by default (its `output: trace`, the "
        "mean over outputs, gives an (n, n) matrix; `output: full` an (n·O, n·O) one), or an analytic one",
    )
    dtype: Literal["float64", "float32"] = Field(
        "float64", description="arithmetic of the kernel and its eigenvalues (kernel matrices are ill-conditioned)"
    )


class NTKSpectrum(Analyzer):
    """The eigenvalues λ_1 ≥ … ≥ λ_n of the kernel matrix Θ(X, X) on ``samples`` inputs.

    Θ is the empirical NTK of the model (Jacot, Gabriel & Hongler 2018) unless ``kernel``
    names another kernel. Under gradient flow on the squared loss ½‖f(X) − y‖² with a fixed
    kernel, the residual decays as exp(−η Θ t): along eigenvector i at rate ηλ_i, so λ_min
    bounds the convergence of the over-parameterized analyses (Du, Zhai, Poczós & Singh
    2019, "Gradient descent provably optimizes over-parameterized neural networks"; Arora,
    Du, Hu, Li & Wang 2019, "Fine-grained analysis of optimization and generalization") and
    λ_max the largest stable step (η < 2/λ_max, with the loss's 1/n folded into Θ).

    The examples are a random subset of ``source`` drawn from a generator seeded with the
    analyzer's seed (the same subset at every call of a tracked analyzer). A kernel with
    outputs (``output: full``, (n, n, O, O)) is flattened to the (n·O × n·O) matrix of
    pairs (example, output). Eigenvalues by ``torch.linalg.eigvalsh`` of the symmetrized
    matrix in ``dtype``; rounding can make the smallest ones slightly negative, and they are
    reported as computed.

    Results: ``eigenvalues`` (descending), ``lambda_max``, ``lambda_min``,
    ``condition_number`` λ_max/λ_min (inf when λ_min ≤ 0), ``trace`` Σλ, ``effective_rank``
    (Σλ)²/Σλ², ``samples``, ``size`` (the matrix side), ``method`` (the empirical NTK's
    implementation, where the kernel says it). The plot draws the spectrum on a log scale.
    """

    Params: ClassVar[type[NTKSpectrumParams]] = NTKSpectrumParams
    cache_version: ClassVar[int] = 1

    params: NTKSpectrumParams

    def analyze(self, ctx: AnalysisContext) -> dict[str, Any]:
        import torch

        p = self.params
        x = sample_inputs(ctx, p.samples, p.source, "data")
        theta, method = kernel_matrix(ctx, p.kernel, x, getattr(torch, p.dtype), "ntk_spectrum")
        eig = torch.linalg.eigvalsh(theta).flip(0).double().cpu()
        return {**spectrum_summary(eig), "eigenvalues": eig.tolist(), "samples": int(x.shape[0]),
                "size": int(theta.shape[0]), "method": method}

    def plot(self, results: dict[str, Any], out_dir: Path) -> list[Path]:
        from ._plot import finite_pairs, new_figure, save, set_log_y

        eig = results.get("eigenvalues") or []
        xs, ys = finite_pairs(range(1, len(eig) + 1), eig)
        pts = [(i, v) for i, v in zip(xs, ys) if v > 0]
        if not pts:
            return []
        fig, ax = new_figure()
        ax.plot(*zip(*pts), marker="o", markersize=2.5, linewidth=1.0)
        set_log_y(ax, [v for _, v in pts])
        ax.set_xlabel("index i (descending)")
        ax.set_ylabel(r"eigenvalue $\lambda_i$ of $\Theta$")
        ax.set_title(f"NTK spectrum on {results.get('samples', '?')} examples: $\\lambda_{{\\max}}$ {_fmt(results.get('lambda_max'))}, "
                     f"λ_min {_fmt(results.get('lambda_min'))}, condition {_fmt(results.get('condition_number'))}",
                     fontsize=9)
        ax.grid(True, which="both", alpha=0.3)
        return [save(fig, Path(out_dir) / "ntk_spectrum.png")]


def kernel_matrix(ctx: AnalysisContext, ref: Any, x: "torch.Tensor", dtype: "torch.dtype",
                  who: str) -> tuple["torch.Tensor", str | None]:
    """The kernel ``ref`` on ``x`` × ``x`` as a symmetric square matrix (an (n, n, O, O) kernel
    flattened to (n·O, n·O)), in ``dtype``, and the empirical NTK method that computed it."""
    from nnopt.core.kinds import KernelSource

    kernel = ref.instantiate()
    out = kernel.compute(x, None, KernelSource(ctx.model, ctx.model_spec, ctx.device, dtype))
    if "ntk" not in out:
        raise StageError(f"{who}: kernel '{ref.name}' returned no 'ntk' matrix (it returned {', '.join(out) or 'none'})")
    theta = out["ntk"].to(dtype)
    n = int(x.shape[0])
    if theta.dim() == 4 and theta.shape[:2] == (n, n):
        o = int(theta.shape[2])
        theta = theta.permute(0, 2, 1, 3).reshape(n * o, n * o)
    elif theta.dim() != 2 or tuple(theta.shape) != (n, n):
        raise StageError(f"{who}: kernel '{ref.name}' gave a matrix of shape {tuple(theta.shape)}; a kernel matrix "
                         f"(n, n) or (n, n, O, O) is needed (use output: trace or full)")
    return 0.5 * (theta + theta.T), getattr(kernel, "method_used", None)


def spectrum_summary(eig: "torch.Tensor") -> dict[str, float]:
    """λ_max, λ_min, condition number, trace and effective rank of descending eigenvalues."""
    lmax, lmin = float(eig[0]), float(eig[-1])
    total, squares = float(eig.sum()), float(eig.pow(2).sum())
    return {
        "lambda_max": lmax,
        "lambda_min": lmin,
        "condition_number": lmax / lmin if lmin > 0 else math.inf,
        "trace": total,
        "effective_rank": total**2 / squares if squares > 0 else 0.0,
    }


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, (int, float)) else "n/a"
