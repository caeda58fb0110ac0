"""Singular values of every weight, and of every convolution as a linear operator (survey §4.2)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Any, ClassVar

from pydantic import Field

from nnopt.core.component import Params
from nnopt.core.kinds import AnalysisContext, Analyzer

PositiveInt = Annotated[int, Field(ge=1)]


class WeightSpectrumParams(Params):
    top: int = Field(10, ge=1, description="how many of the largest singular values to report per layer")
    operator: bool = Field(
        True, description="also compute each stride-1 Conv2d's exact singular values as a linear operator on "
        "H×W maps under circular padding (Sedghi, Gupta & Long 2019)"
    )
    input_size: list[PositiveInt] | None = Field(
        None, min_length=2, max_length=2, description="[H, W]: the map size at which every conv's operator is taken; "
        "None: each conv's own input size, recorded by forward hooks on one training example"
    )
    max_size: list[PositiveInt] = Field(
        [64, 64], min_length=2, max_length=2, description="[H, W]: convs on larger maps are skipped (the FFT holds "
        "c_out·c_in·H·W complex numbers)"
    )


class WeightSpectrum(Analyzer):
    """Singular values σ_1 ≥ σ_2 ≥ … of each layer's weight, and of each convolution as an operator.

    Weight matrices: a Linear layer's W ∈ R^{m×n}, a convolution's kernel reshaped to
    (c_out, c_in·k_h·k_w) (the matrix spectral normalization and orthogonal initialization
    act on; Miyato et al. 2018, Saxe et al. 2014). Reported: the ``top`` largest σ_i
    (``torch.linalg.svdvals``), the spectral norm σ_1 and the condition number σ_1/σ_r,
    r = min(m, n) (inf when σ_r = 0).

    Convolution operators (Sedghi, Gupta & Long 2019, "The singular values of convolutional
    layers", Theorem 6): a stride-1 conv with kernel K ∈ R^{c_out × c_in × k × k} acting on
    c_in × n_h × n_w maps with circular padding is a doubly block-circulant matrix A of size
    c_out·n_h·n_w × c_in·n_h·n_w, diagonalized by the 2-D DFT. With
    P(u, v) = Σ_{a,b} K[:, :, a, b] e^{−2πi(ua/n_h + vb/n_w)} ∈ C^{c_out × c_in} (the FFT of K
    zero-padded to n_h × n_w over its spatial axes), the singular values of A are the union
    over the n_h·n_w frequencies of those of P(u, v). This is exact for the layer when it pads
    circularly (``padding_mode='circular'``), and the standard estimate of a zero-padded
    layer's spectrum otherwise (``circular`` says which). Reported: the ``top`` largest, the
    operator norm ‖A‖₂ = σ_1 (the layer's Lipschitz constant), the smallest σ and the
    condition number. A kernel larger than the map wraps around the torus, so its taps are
    summed modulo (n_h, n_w) first; dilation spreads the taps out before the FFT; groups make
    P block-diagonal. Strided convs (not circulant), transposed or non-2-D convs, and maps
    over ``max_size`` are skipped with the reason in ``operator.skipped``. The map size is
    ``input_size`` when given, else each conv's input recorded by forward hooks on one
    training example (in eval mode, so no running statistic moves).

    Results: ``layers`` = {name: {type, shape, matrix_shape, top, spectral_norm,
    condition_number, operator?}} in model order; ``names`` their names; ``spectral_norms``
    [σ_1]; ``operator_norms`` = {name: ‖A‖₂} for the convs whose operator was computed.
    Everything is computed in float64.
    """

    Params: ClassVar[type[WeightSpectrumParams]] = WeightSpectrumParams
    cache_version: ClassVar[int] = 1

    params: WeightSpectrumParams

    def analyze(self, ctx: AnalysisContext) -> dict[str, Any]:
        import torch
        from torch import nn

        p = self.params
        named = [
            (name or type(m).__name__, m) for name, m in ctx.model.named_modules()  # the model itself is ""
            if isinstance(m, (nn.Linear, nn.modules.conv._ConvNd)) and m.weight.dim() >= 2
        ]
        sizes: dict[str, tuple[int, int]] = {}
        if p.operator:
            if p.input_size is not None:
                sizes = {name: (p.input_size[0], p.input_size[1]) for name, m in named if isinstance(m, nn.Conv2d)}
            elif any(_operator_applies(m) for _, m in named):
                sizes = _recorded_input_sizes(ctx, [(n, m) for n, m in named if _operator_applies(m)])

        layers: dict[str, dict[str, Any]] = {}
        operator_norms: dict[str, float] = {}
        with torch.no_grad():
            for name, module in named:
                weight = module.weight.detach().to(torch.float64)  # through a parametrization: the weight in use
                sv = torch.linalg.svdvals(weight.reshape(weight.shape[0], -1))
                entry: dict[str, Any] = {
                    "type": type(module).__name__,
                    "shape": list(weight.shape),
                    "matrix_shape": [int(weight.shape[0]), int(weight[0].numel())],
                    **_summary(sv, p.top),
                }
                if p.operator and isinstance(module, nn.modules.conv._ConvNd):
                    entry["operator"] = self._operator(module, weight, sizes.get(name))
                    if "norm" in entry["operator"]:
                        operator_norms[name] = entry["operator"]["norm"]
                layers[name] = entry
        names = list(layers)
        return {
            "layers": layers,
            "names": names,
            "spectral_norms": [layers[n]["spectral_norm"] for n in names],
            "operator_norms": operator_norms,
        }

    def _operator(self, module: Any, weight: Any, size: tuple[int, int] | None) -> dict[str, Any]:
        reason = _skip_reason(module)
        if reason is None and size is None:
            reason = ("input map size unknown: no input_size given, and no forward pass on a training example "
                      "reached the layer")
        if reason is None and (size[0] > self.params.max_size[0] or size[1] > self.params.max_size[1]):
            reason = (f"input map {size[0]}×{size[1]} exceeds max_size "
                      f"{self.params.max_size[0]}×{self.params.max_size[1]}")
        if reason is not None:
            return {"skipped": reason}
        sv = circular_conv_singular_values(weight, size, groups=module.groups, dilation=tuple(module.dilation))
        summary = _summary(sv, self.params.top)
        return {
            "input_size": list(size),
            "circular": module.padding_mode == "circular",
            "top": summary["top"],
            "norm": summary["spectral_norm"],
            "smallest": float(sv[-1]),
            "condition_number": summary["condition_number"],
            "count": int(sv.numel()),
        }

    def plot(self, results: dict[str, Any], out_dir: Path) -> list[Path]:
        from nnopt.core.figure_style import ramp

        from ._plot import finite_pairs, new_figure, save, set_log_y

        layers = results.get("layers") or {}
        if not layers:
            return []
        fig, ax = new_figure(7.2, 4.4)
        plotted: list[float] = []
        for i, (name, entry) in enumerate(layers.items()):
            color = ramp(i, len(layers))
            top = entry.get("top") or []
            xs, ys = finite_pairs(range(1, len(top) + 1), top)
            if ys:
                ax.plot(xs, ys, marker="o", markersize=3, linewidth=1.2, color=color, label=name)
                plotted.extend(ys)
            operator = entry.get("operator") or {}
            xs, ys = finite_pairs(range(1, len(operator.get("top") or []) + 1), operator.get("top") or [])
            if ys:  # dashed, same colour: the conv as an operator on its maps
                ax.plot(xs, ys, linestyle="--", linewidth=1.0, color=color, label=f"{name} (operator)")
                plotted.extend(ys)
        if not plotted:
            return []
        set_log_y(ax, plotted)
        ax.set_xlabel("rank i (largest first)")
        ax.set_ylabel(r"singular value $\sigma_i$")
        ax.set_title("top singular values per layer (solid: reshaped weight, dashed: conv operator)", fontsize=9)
        ax.grid(True, which="both", alpha=0.3)
        if len(layers) <= 12:
            ax.legend(fontsize=7, ncol=2)
        return [save(fig, Path(out_dir) / "weight_spectrum.png")]


def circular_conv_singular_values(weight: Any, size: tuple[int, int], groups: int = 1,
                                  dilation: tuple[int, int] = (1, 1)) -> Any:
    """All singular values (descending, float64) of the stride-1 2-D convolution with kernel
    ``weight`` (c_out, c_in/groups, k_h, k_w) on ``size`` = (n_h, n_w) maps with circular
    padding: Sedghi et al. 2019's FFT of the kernel over its spatial axes, one c_out × c_in
    SVD per frequency. The padding amount only shifts the output, which no singular value sees.
    """
    import torch
    import torch.nn.functional as F

    kernel = weight.detach().to(torch.float64)
    c_out, c_in_group, k_h, k_w = kernel.shape
    if groups > 1:
        # group g maps input channels g·c_in/g.. to output channels g·c_out/g..: a block-diagonal P(u, v)
        rows = c_out // groups
        full = kernel.new_zeros((c_out, c_in_group * groups, k_h, k_w))
        for g in range(groups):
            full[g * rows:(g + 1) * rows, g * c_in_group:(g + 1) * c_in_group] = kernel[g * rows:(g + 1) * rows]
        kernel = full
    d_h, d_w = dilation
    if d_h > 1 or d_w > 1:
        # a dilated kernel is the ordinary kernel with d − 1 zeros between taps
        spread = kernel.new_zeros(kernel.shape[:2] + ((k_h - 1) * d_h + 1, (k_w - 1) * d_w + 1))
        spread[:, :, ::d_h, ::d_w] = kernel
        kernel = spread
    n_h, n_w = size
    # fold taps modulo the map size (a kernel larger than the map wraps around the torus); when
    # k <= n this is just the zero padding to n × n. fft2(s=n) would instead crop a larger kernel.
    k_h, k_w = kernel.shape[-2:]
    m_h, m_w = -(-k_h // n_h), -(-k_w // n_w)
    kernel = F.pad(kernel, (0, m_w * n_w - k_w, 0, m_h * n_h - k_h))
    kernel = kernel.reshape(kernel.shape[0], kernel.shape[1], m_h, n_h, m_w, n_w).sum(dim=(2, 4))
    transform = torch.fft.fft2(kernel)  # P(u, v) for every frequency, (c_out, c_in, n_h, n_w)
    per_frequency = transform.permute(2, 3, 0, 1).reshape(n_h * n_w, kernel.shape[0], kernel.shape[1])
    return torch.linalg.svdvals(per_frequency).flatten().sort(descending=True).values


def _summary(sv: Any, top: int) -> dict[str, Any]:
    """``top`` largest of the descending singular values ``sv``, σ_1 and σ_1/σ_min."""
    largest, smallest = float(sv[0]), float(sv[-1])
    return {
        "top": [float(v) for v in sv[:top].tolist()],
        "spectral_norm": largest,
        "condition_number": largest / smallest if smallest > 0 else math.inf,
    }


def _skip_reason(module: Any) -> str | None:
    """Why the FFT operator spectrum does not apply to ``module``, or None when it does."""
    from torch import nn

    if getattr(module, "transposed", False):
        return "transposed convolution: the operator spectrum is computed for convolutions, not their adjoints"
    if not isinstance(module, nn.Conv2d):
        return f"{type(module).__name__}: the operator spectrum is computed for 2-D convolutions only"
    if tuple(module.stride) != (1, 1):
        return (f"strided convolution (stride {tuple(module.stride)}): not a circulant operator, which "
                f"Sedghi et al.'s FFT method needs")
    return None


def _operator_applies(module: Any) -> bool:
    return _skip_reason(module) is None


def _recorded_input_sizes(ctx: AnalysisContext, convs: list[tuple[str, Any]]) -> dict[str, tuple[int, int]]:
    """Each conv's input map size (H, W), recorded by forward pre-hooks on one training example."""
    import torch

    x = ctx.data.x_train
    if int(x.shape[0]) == 0:
        return {}
    sizes: dict[str, tuple[int, int]] = {}

    def record(name: str) -> Any:
        def hook(_module: Any, inputs: tuple[Any, ...]) -> None:
            # the first call's size (a conv reused later keeps it); returning None leaves the input as is
            sizes.setdefault(name, (int(inputs[0].shape[-2]), int(inputs[0].shape[-1])))
        return hook

    handles = [module.register_forward_pre_hook(record(name)) for name, module in convs]
    # eval mode for the probe, so BatchNorm's running statistics and dropout stay untouched while
    # tracking a model in training; every module's own mode is restored afterwards
    modes = [(m, m.training) for m in ctx.model.modules()]
    weight = convs[0][1].weight
    # only the shapes matter: the example goes in the model's device and (float) dtype
    probe = x[:1].to(device=weight.device, dtype=weight.dtype if x.is_floating_point() else x.dtype)
    try:
        ctx.model.eval()
        with torch.no_grad():
            ctx.model(probe)
    finally:
        for handle in handles:
            handle.remove()
        for m, training in modes:
            m.training = training
    return sizes
