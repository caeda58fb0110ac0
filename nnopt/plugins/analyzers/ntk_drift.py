"""Lazy-training diagnostics: how far the NTK and the weights have moved from their start
(Jacot et al. 2018; Lee et al. 2019; Chizat, Oyallon & Bach 2019)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import Field

from nnopt.core.component import KernelRef, Params, WeightRef
from nnopt.core.errors import StageError
from nnopt.core.kinds import AnalysisContext, Analyzer

from .ntk_spectrum import kernel_matrix
from .signal_propagation import sample_inputs
from nnopt.core import figure_style as fs

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from torch import nn


class NTKDriftParams(Params):
    samples: int = Field(64, ge=2, le=4096, description="examples the kernels are computed on (a fixed seeded subset)")
    source: Literal["train", "test"] = Field("train", description="split the examples are drawn from")
    kernel: KernelRef = Field(  # type: ignore[valid-type]
        "empirical_ntk", validate_default=True,
        description="the kernel (kind `kernels`) of the model: its empirical NTK by default (output: trace)",
    )
    dtype: Literal["float64", "float32"] = Field("float64", description="arithmetic of the kernels")
    reference: WeightRef | None = Field(
        None, description="the weights θ_0 (and kernel Θ_0) drift is measured from, e.g. `train@0`; None: the "
        "model as it was at the analyzer's first call (step 0 in a train stage's `track`)"
    )


class NTKDrift(Analyzer):
    """Relative change of the NTK and of the weights since θ_0:

        ntk_drift = ‖Θ_t − Θ_0‖_F / ‖Θ_0‖_F,     weight_drift = ‖θ_t − θ_0‖₂ / ‖θ_0‖₂,

    with Θ the kernel (the empirical NTK, ``output: trace`` by default) on a fixed seeded
    subset of ``samples`` examples, and λ_min, λ_max of Θ_t. In the lazy / kernel regime
    (Jacot, Gabriel & Hongler 2018; Lee et al. 2019, "Wide neural networks of any depth
    evolve as linear models under gradient descent"; Chizat, Oyallon & Bach 2019, "On lazy
    training in differentiable programming") both drifts vanish as the width n grows under
    the NTK parameterization: each weight moves O(1/√n) and Θ_t − Θ_0 = O(1/√n).

    θ_0 and Θ_0: the weights of ``reference`` when given (``ctx.load_model``; an analyze
    stage ``from: train`` with ``reference: train@0``); otherwise the model as it is at the
    analyzer's first call — in a train stage's ``track``, step 0, so that drift is 0 there.
    The subset is drawn from a generator seeded with the analyzer's seed, the same at every
    call. Also reported: ``alignment`` ⟨Θ_t, Θ_0⟩_F/(‖Θ_t‖‖Θ_0‖), ``ntk_norm`` ‖Θ_t‖_F,
    ``reference_step`` (the step Θ_0 was taken at; None for ``reference``).

    Resuming a tracked train stage from a checkpoint: the analyzer's θ_0/Θ_0 are in its
    ``state_dict()`` (restored by ``load_state_dict``) for the training loop to checkpoint;
    a run resumed without them measures from the first step it sees after the resume, and
    says so in ``reference_step`` (and in the plot's title).
    """

    Params: ClassVar[type[NTKDriftParams]] = NTKDriftParams
    cache_version: ClassVar[int] = 1

    params: NTKDriftParams

    def __init__(self, params: Any = None):
        super().__init__(params)
        self._theta0: "torch.Tensor | None" = None  # Θ_0 on the subset
        self._weights0: "torch.Tensor | None" = None  # θ_0, flattened
        self._step0: int | None = None

    def analyze(self, ctx: AnalysisContext) -> dict[str, Any]:
        import torch

        p = self.params
        dtype = getattr(torch, p.dtype)
        x = sample_inputs(ctx, p.samples, p.source, "data")
        if p.reference is not None and self._theta0 is None:
            if ctx.load_model is None:
                raise StageError("ntk_drift: this context cannot load the weights of `reference`")
            reference = ctx.load_model(p.reference)
            reference.eval()
            self._theta0 = kernel_matrix(_with_model(ctx, reference), p.kernel, x, dtype, "ntk_drift")[0]
            self._weights0 = flat_weights(reference)
            self._step0 = None
        theta, method = kernel_matrix(ctx, p.kernel, x, dtype, "ntk_drift")
        weights = flat_weights(ctx.model)
        if self._theta0 is None:
            self._theta0, self._weights0, self._step0 = theta.clone(), weights.clone(), ctx.step
        theta0, weights0 = self._theta0.to(theta), self._weights0.to(weights)
        if theta0.shape != theta.shape or weights0.shape != weights.shape:
            raise StageError(f"ntk_drift: the model's kernel {tuple(theta.shape)} or weights ({weights.numel()}) differ "
                             f"in shape from the reference's {tuple(theta0.shape)} ({weights0.numel()})")
        eig = torch.linalg.eigvalsh(theta).double()
        norm0, norm = float(theta0.norm()), float(theta.norm())
        wnorm0 = float(weights0.norm())
        return {
            "step": ctx.step,
            "ntk_drift": float((theta - theta0).norm()) / norm0 if norm0 > 0 else float("nan"),
            "weight_drift": float((weights - weights0).norm()) / wnorm0 if wnorm0 > 0 else float("nan"),
            "lambda_min": float(eig[0]),
            "lambda_max": float(eig[-1]),
            "ntk_norm": norm,
            "alignment": float((theta * theta0).sum()) / (norm * norm0) if norm * norm0 > 0 else float("nan"),
            "reference_step": self._step0,
            "samples": int(x.shape[0]),
            "method": method,
        }

    # the reference of a tracked run, for the training loop's checkpoints
    def state_dict(self) -> dict[str, Any]:
        return {"theta0": self._theta0, "weights0": self._weights0, "step0": self._step0}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._theta0, self._weights0, self._step0 = state["theta0"], state["weights0"], state["step0"]

    def plot(self, results: dict[str, Any], out_dir: Path) -> list[Path]:
        return []  # one number pair: nothing to draw (the series is drawn by plot_series)

    def plot_series(self, series: list[tuple[int, dict[str, Any]]], out_dir: Path) -> list[Path]:
        from ._plot import positive_series_figure

        if not series:
            return []
        ref = series[0][1].get("reference_step")
        title = "NTK and weight drift over training" + (f" (from step {ref})" if ref not in (0, None) else "")
        return positive_series_figure(series, (("ntk_drift", r"$\|\Theta_t - \Theta_0\|_F / \|\Theta_0\|_F$", fs.VERMILLION),
                                               ("weight_drift", r"$\|\theta_t - \theta_0\| / \|\theta_0\|$", fs.BLUE)),
                                      "relative drift", title, Path(out_dir) / "ntk_drift.png", markers=True)


def flat_weights(model: "nn.Module") -> "torch.Tensor":
    """The trainable parameters θ as one float64 vector (on the CPU)."""
    import torch

    params = [p.detach().reshape(-1).double().cpu() for p in model.parameters() if p.requires_grad]
    return torch.cat(params) if params else torch.zeros(0, dtype=torch.float64)


def _with_model(ctx: AnalysisContext, model: "nn.Module") -> AnalysisContext:
    from dataclasses import replace

    return replace(ctx, model=model)
