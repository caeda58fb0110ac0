"""Singular values of the input–output Jacobian: dynamical isometry (survey §4.2)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Literal

from pydantic import Field

from nnopt.core.component import Params
from nnopt.core.errors import StageError
from nnopt.core.kinds import AnalysisContext, Analyzer

from .signal_propagation import sample_inputs
from nnopt.core import figure_style as fs

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from torch import nn

QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)


class JacobianSpectrumParams(Params):
    samples: int = Field(8, ge=1, le=256, description="inputs at which the Jacobian is taken (a seeded subset, or Gaussian)")
    source: Literal["train", "test"] = Field("train", description="split the inputs are drawn from (inputs: data)")
    inputs: Literal["data", "gaussian"] = Field(
        "data", description="`data`: examples of `source`; `gaussian`: x ~ N(0, input_std² I) of the data's input shape"
    )
    input_std: float = Field(1.0, gt=0.0, description="standard deviation of the Gaussian inputs (inputs: gaussian)")
    layer: str | None = Field(
        None,
        description="qualified name of the module (as in `model.named_modules()`, e.g. `act4` or `linear4` of an "
        "mlp) whose output is z^L; None: the model's output (the logits)",
    )
    bins: int = Field(30, ge=1, le=1000, description="bins of the histogram of singular values")
    max_entries: int = Field(
        2**24, ge=1,
        description="most Jacobian entries (examples × output size × input size) computed at once; examples are "
        "taken in chunks under it, and a single Jacobian larger than it is refused",
    )


class _Reached(Exception):
    """Raised by the hook on ``layer`` to stop the forward pass there, carrying its output."""

    def __init__(self, output: "torch.Tensor"):
        super().__init__()
        self.output = output


class JacobianSpectrum(Analyzer):
    """Singular values of J(x) = ∂z^L/∂x, the Jacobian of the network's output (or of the
    output of module ``layer``) with respect to its input, at ``samples`` inputs x.

    Dynamical isometry (Saxe et al. 2014; Pennington, Schoenholz & Ganguli 2017,
    "Resurrecting the sigmoid in deep learning through dynamical isometry"; survey §4.2): for
    J = D^L W^L ⋯ D^1 W^1 with D^l = diag(φ'(h^l)), a network trains fast at depth when all
    singular values of J are close to 1, not only their mean square (the mean-field χ = 1
    condition). Orthogonal weights with tanh near the edge of chaos (σ_w² ≈ 1, q* → 0)
    achieve it; Gaussian weights, or ReLU with any weights, do not: the spread of the squared
    singular values grows linearly with depth.

    The default z^L is the model's output (the logits); for dynamical isometry one usually
    takes the last hidden layer (``layer: act{L}`` of an ``mlp``, its post-activation, or
    ``linear{L}``, its pre-activation) of a network of equal widths, so that J is square and
    the readout to the classes does not truncate the spectrum.

    J is computed per example with ``torch.func.vmap(torch.func.jacrev(f))`` (f maps one input
    to the flattened z^L; a forward hook on ``layer`` stops the pass there), falling back to
    ``torch.autograd.functional.jacobian`` example by example for models the functional
    transforms do not support; the model must not mix examples (batch statistics: it is in
    eval mode in analyze and track). Singular values by ``torch.linalg.svdvals`` in float64.
    At most ``max_entries`` Jacobian entries are held at once: examples are processed in
    chunks below it, and an input–output pair whose one Jacobian exceeds it is refused.

    Results over all singular values σ of all examples (min(in, out) each): ``mean_sq`` =
    mean σ², ``std_sq`` = std of σ², ``max``, ``min``, ``mean``, ``std`` of σ, ``max_min_ratio``
    = max/min (inf when min = 0), ``quantiles`` {level: σ quantile}, ``histogram`` {counts,
    edges} of σ (``bins`` bins), ``shape`` [out, in] of one J, ``samples`` used, ``layer``.
    """

    Params: ClassVar[type[JacobianSpectrumParams]] = JacobianSpectrumParams
    cache_version: ClassVar[int] = 1

    params: JacobianSpectrumParams

    def analyze(self, ctx: AnalysisContext) -> dict[str, Any]:
        import torch

        p = self.params
        model = ctx.model
        x = sample_inputs(ctx, p.samples, p.source, p.inputs)
        if p.inputs == "gaussian":
            x = x * p.input_std
        target = _module(model, p.layer)
        f = _single_input_map(model, target)

        with torch.no_grad():
            out_size = int(f(x[0]).numel())
        in_size = int(x[0].numel())
        per_example = in_size * out_size
        if per_example > p.max_entries:
            raise StageError(
                f"jacobian_spectrum: one Jacobian has {out_size} × {in_size} = {per_example:,} entries, above "
                f"max_entries = {p.max_entries:,}; take a smaller `layer`, or raise max_entries if memory allows"
            )
        chunk = max(1, p.max_entries // per_example)
        values = []
        for start in range(0, int(x.shape[0]), chunk):
            jac = _jacobians(f, x[start : start + chunk]).reshape(-1, out_size, in_size)
            values.append(torch.linalg.svdvals(jac.detach().double()).flatten().cpu())
        sv = torch.cat(values)
        return {"samples": int(x.shape[0]), "layer": p.layer, "shape": [out_size, in_size], **_summary(sv, p.bins)}

    def plot(self, results: dict[str, Any], out_dir: Path) -> list[Path]:
        from ._plot import new_figure, save

        hist = results.get("histogram") or {}
        counts, edges = hist.get("counts") or [], hist.get("edges") or []
        if not counts or len(edges) != len(counts) + 1:
            return []
        fig, ax = new_figure()
        widths = [b - a for a, b in zip(edges, edges[1:])]
        ax.bar(edges[:-1], counts, width=widths, align="edge", color=fs.BLUE, edgecolor="white", linewidth=0.4)
        ax.axvline(1.0, color=fs.BLACK, linestyle="--", linewidth=1.0, label=r"$\sigma = 1$ (isometry)")
        ax.set_xlabel(r"singular value $\sigma$ of $\partial z^L/\partial x$")
        ax.set_ylabel("count")
        where = results.get("layer") or "output"
        ax.set_title(f"Jacobian spectrum to {where} ({results.get('samples', '?')} inputs): "
                     f"mean σ² {_fmt(results.get('mean_sq'))}, max/min {_fmt(results.get('max_min_ratio'))}")
        ax.legend(fontsize=8)
        ax.grid(True, axis="y", alpha=0.3)
        return [save(fig, Path(out_dir) / "jacobian_spectrum.png")]

    def plot_series(self, series: list[tuple[int, dict[str, Any]]], out_dir: Path) -> list[Path]:
        from ._plot import positive_series_figure

        if not series:
            return []
        return positive_series_figure(series, (("max", r"max $\sigma$", fs.VERMILLION), ("mean", r"mean $\sigma$", fs.BLACK),
                                               ("min", r"min $\sigma$", fs.BLUE)),
                                      "singular value of the input–output Jacobian", "Jacobian spectrum over training",
                                      Path(out_dir) / "jacobian_spectrum_track.png")


def _module(model: "nn.Module", name: str | None) -> "nn.Module | None":
    if name is None:
        return None
    modules = dict(model.named_modules())
    if name not in modules:
        from nnopt.core.errors import did_you_mean

        hint = did_you_mean(name, [n for n in modules if n])
        raise StageError(f"jacobian_spectrum: the model has no module '{name}'"
                         + (f" (did you mean '{hint}'?)" if hint else "")
                         + f"; its modules: {', '.join(n for n in modules if n)}")
    return modules[name]


def _single_input_map(model: "nn.Module", target: "nn.Module | None") -> Callable[["torch.Tensor"], "torch.Tensor"]:
    """x ↦ z^L(x) flattened, for one input x (no batch dimension)."""

    def f(x: "torch.Tensor") -> "torch.Tensor":
        if target is None:
            return model(x.unsqueeze(0)).reshape(-1)

        def stop(module: Any, inputs: Any, output: Any) -> None:
            raise _Reached(output)

        handle = target.register_forward_hook(stop)
        try:
            model(x.unsqueeze(0))
        except _Reached as reached:
            return reached.output.reshape(-1)
        finally:
            handle.remove()
        raise StageError("jacobian_spectrum: the forward pass never called the module named by `layer`")

    return f


def _jacobians(f: Callable[["torch.Tensor"], "torch.Tensor"], x: "torch.Tensor") -> "torch.Tensor":
    """J(x_i) for every row x_i, shape (n, out, *input_shape)."""
    import torch

    try:
        from torch.func import jacrev, vmap

        with torch.enable_grad():
            return vmap(jacrev(f))(x)
    except StageError:
        raise
    except Exception:  # noqa: BLE001 - modules the functional transforms cannot trace: plain autograd
        from torch.autograd.functional import jacobian

        with torch.enable_grad():
            return torch.stack([jacobian(f, xi) for xi in x])


def _summary(sv: "torch.Tensor", bins: int) -> dict[str, Any]:
    import torch

    sq = sv.square()
    top, bottom = float(sv.max()), float(sv.min())
    lo, hi = bottom, top
    if hi <= lo:  # all equal (an exact isometry): a bin of width 2·1e-6 around it
        lo, hi = lo - 1e-6 * max(1.0, abs(lo)), hi + 1e-6 * max(1.0, abs(hi))
    counts = torch.histc(sv, bins=bins, min=lo, max=hi)
    edges = torch.linspace(lo, hi, bins + 1, dtype=torch.float64)
    levels = torch.tensor(QUANTILES, dtype=sv.dtype)
    return {
        "count": int(sv.numel()),
        "mean_sq": float(sq.mean()),
        "std_sq": float(sq.std(unbiased=False)),
        "mean": float(sv.mean()),
        "std": float(sv.std(unbiased=False)),
        "max": top,
        "min": bottom,
        "max_min_ratio": top / bottom if bottom > 0 else math.inf,
        "quantiles": {f"{q:g}": float(v) for q, v in zip(QUANTILES, torch.quantile(sv, levels))},
        "histogram": {"counts": [int(c) for c in counts.tolist()], "edges": edges.tolist()},
    }


def _fmt(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, (int, float)) else str(value)
