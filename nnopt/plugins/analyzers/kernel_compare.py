"""Two kernels on the same inputs, side by side: how far apart they are (e.g. a finite network's
empirical NTK and the analytic infinite-width NTK of its architecture)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field

from nnopt.core.component import KernelRef, Params
from nnopt.core.errors import StageError
from nnopt.core.kinds import AnalysisContext, Analyzer, KernelSource
from nnopt.core import figure_style as fs

#: at most this many kernel entries are kept in the results for the scatter plot
SCATTER_POINTS = 2000


class KernelCompareParams(Params):
    a: KernelRef = Field(..., description="the kernel compared (a component of kind `kernels`, e.g. empirical_ntk)")  # type: ignore[valid-type]
    b: KernelRef = Field(..., description="the reference kernel (e.g. ntk_analytic); errors are relative to it")  # type: ignore[valid-type]
    which: Literal["ntk", "nngp"] = Field("ntk", description="the matrix compared: the key both kernels return")
    split: Literal["train", "test"] = Field("train", description="split the inputs are drawn from")
    samples: int = Field(64, ge=2, le=20000, description="a seeded random subset of this many inputs of `split` "
                         "(all of them when it has fewer)")
    dtype: Literal["float64", "float32"] = Field("float64", description="arithmetic of both kernels")


class KernelCompare(Analyzer):
    """The relative Frobenius distance between two kernels on the same inputs,

        error = ‖K_a − K_b‖_F / ‖K_b‖_F,

    with both traces tr K_a, tr K_b, their alignment ⟨K_a, K_b⟩_F/(‖K_a‖_F‖K_b‖_F) (Cristianini
    et al. 2002), and a scatter plot of the entries of K_a against K_b. The inputs are a seeded
    subset (``samples``, drawn from the analyzer's generator) of ``split``; both kernels get
    the same ``KernelSource`` (the model under analysis, the stage's ``model`` spec, the device
    and ``dtype``), so ``a: empirical_ntk`` and ``b: ntk_analytic`` compare the finite network
    with the infinite-width limit of its own architecture (Jacot et al. 2018: the error falls
    like 1/√width in the NTK parameterization; Arora et al. 2019 measured it for CNNs).
    Both must return an (n, n) matrix under ``which`` (the empirical NTK's default ``output:
    trace`` with ``trace_reduction: mean`` is the per-output scale of the analytic kernels).
    """

    Params: ClassVar[type[KernelCompareParams]] = KernelCompareParams
    cache_version: ClassVar[int] = 1
    params: KernelCompareParams

    def analyze(self, ctx: AnalysisContext) -> dict[str, Any]:
        import torch

        p = self.params
        x = ctx.data.x_train if p.split == "train" else ctx.data.x_test
        n = int(x.shape[0])
        if n < 2:
            raise StageError(f"kernel_compare: the {p.split} split has {n} examples (need at least 2)")
        if p.samples < n:
            idx = torch.randperm(n, generator=ctx.generator)[: p.samples].to(x.device)
            x = x[idx]
        dtype = torch.float64 if p.dtype == "float64" else torch.float32
        source = KernelSource(model=ctx.model, model_spec=ctx.model_spec, device=ctx.device, dtype=dtype)
        ka = self._matrix(p.a, x, source, "a")
        kb = self._matrix(p.b, x, source, "b")
        norm_b = float(torch.linalg.matrix_norm(kb))
        norm_a = float(torch.linalg.matrix_norm(ka))
        diff = float(torch.linalg.matrix_norm(ka - kb))
        inner = float((ka * kb).sum())
        rows, cols = torch.triu_indices(ka.shape[0], ka.shape[1])
        stride = max(1, math.ceil(rows.numel() / SCATTER_POINTS))
        rows, cols = rows[::stride], cols[::stride]
        return {
            "a": p.a.name,
            "b": p.b.name,
            "which": p.which,
            "samples": int(ka.shape[0]),
            "relative_error": diff / norm_b if norm_b > 0 else math.inf,
            "frobenius_a": norm_a,
            "frobenius_b": norm_b,
            "trace_a": float(torch.trace(ka)),
            "trace_b": float(torch.trace(kb)),
            "alignment": inner / (norm_a * norm_b) if norm_a > 0 and norm_b > 0 else math.nan,
            "entries": {"a": ka[rows, cols].cpu().tolist(), "b": kb[rows, cols].cpu().tolist()},
        }

    def _matrix(self, ref: Any, x: Any, source: KernelSource, side: str) -> Any:
        out = ref.instantiate().compute(x, None, source)
        if self.params.which not in out:
            raise StageError(f"kernel_compare: kernel `{side}` ({ref.name}) returns {', '.join(sorted(out))}, not "
                             f"'{self.params.which}' (set `which`)")
        k = out[self.params.which]
        if k.ndim != 2:
            raise StageError(f"kernel_compare: kernel `{side}` ({ref.name}) returned a {tuple(k.shape)} array; an "
                             "(n, n) matrix is compared (empirical_ntk: output: trace)")
        return k.to(source.dtype)

    def plot(self, results: dict[str, Any], out_dir: Path) -> list[Path]:
        from ._plot import new_figure, save

        entries = results.get("entries") or {}
        xs, ys = entries.get("b") or [], entries.get("a") or []
        if not xs:
            return []
        fig, ax = new_figure(5.0, 4.6)
        ax.scatter(xs, ys, s=6, alpha=0.5, linewidths=0)
        lo, hi = min(min(xs), min(ys)), max(max(xs), max(ys))
        ax.plot([lo, hi], [lo, hi], linestyle="--", color=fs.GREY, linewidth=1.0, label=r"$K_a = K_b$")
        ax.set_xlabel(f"{results.get('b')} {results.get('which')}")
        ax.set_ylabel(f"{results.get('a')} {results.get('which')}")
        err = results.get("relative_error")
        ax.set_title(rf"$\|K_a - K_b\|_F/\|K_b\|_F$ = {err:.3g}  ({results.get('samples')} inputs)"
                     if isinstance(err, (int, float)) else "kernel entries", fontsize=9)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
        return [save(fig, Path(out_dir) / "kernel_compare.png")]
