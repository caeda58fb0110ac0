"""What a network looks like before its first step: forward signal, gradients, input–output
Jacobian, dead and saturated units, the output scale and the initial loss (survey §4.1–4.2).

``measure_at_init`` returns numbers only (JSON-safe, NaN/inf allowed); the ``diagnose``
stage reads them into findings.
"""

from __future__ import annotations

import copy
import math
import statistics
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from nnopt.core.kinds import AnalysisContext
from nnopt.plugins.analyzers.grad_norms import GradNorms
from nnopt.plugins.analyzers.jacobian_spectrum import JacobianSpectrum
from nnopt.plugins.analyzers.signal_propagation import SignalPropagation, _activation_types

from . import mean_field
from nnopt.core import figure_style as fs

JACOBIAN_SAMPLES = 8
JACOBIAN_MAX_ENTRIES = 2**20  # entries of one input–output Jacobian (out × in) measured at most
SATURATION_LEVEL = 0.05  # a unit is saturated where |φ'(h)| < 5% of max |φ'|
_GRID = torch.linspace(-30.0, 30.0, 6001, dtype=torch.float64)  # where max |φ'| is looked for

_RELU_LIKE = ("ReLU", "ReLU6", "LeakyReLU", "PReLU", "RReLU", "ELU", "CELU", "SELU", "GELU", "SiLU", "Mish")
_SATURATING = ("Tanh", "Sigmoid", "Hardtanh", "Hardsigmoid", "Softsign", "LogSigmoid")
_NORM_TYPES = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm, nn.LocalResponseNorm)


def measure_at_init(ctx: AnalysisContext, samples: int = 256) -> dict[str, Any]:
    """Measurements of ``ctx.model`` as it is (at initialization), on ``samples`` train examples.

    * ``forward`` — ``SignalPropagation``: per weight layer the measured second moment of the
      pre-activations q̂ˡ and the mean-field prediction qˡ = σ_w² E[φ(√qˡ⁻¹ z)²] + σ_b²
      (survey §4.2); ``q_ratio`` = q̂^{K−1}/q̂¹ (the last hidden weight layer, before the
      output layer, over the first) and ``log10_growth_per_layer`` = (log₁₀ q̂^{K−1} −
      log₁₀ q̂¹)/(K − 2); None for K < 3 weight layers.
    * ``phase`` — ``mean_field.phase`` of the hidden activation at the *measured* σ_w², σ_b²
      (medians over the hidden weight layers, those followed by φ) or None with
      ``phase_skipped``: no activation module, mixed activations, or normalization layers
      (the i.i.d. mean-field theory does not describe a normalized network).
    * ``gradients`` — ``GradNorms`` on the same examples: g_l = ‖∂L/∂W_l‖_F per weight layer,
      g_l/‖W_l‖, the per-layer growth (g_1/g_K)^{1/(K−1)}, and ``first_last_ratio`` g_1/g_K
      (survey §4.1: geometric growth or decay of g_l with depth is exploding/vanishing).
    * ``jacobian`` — ``JacobianSpectrum`` of the output at 8 examples (dynamical isometry,
      survey §4.2), or {"skipped": reason} (one Jacobian over 2²⁰ entries, or a failure).
    * ``units`` — per activation module: for ReLU-like φ the fraction of *dead* units (input
      ≤ 0 on every sampled example: no gradient reaches them), for saturating φ (tanh, sigmoid,
      hardtanh, ...) the fraction of (unit, example) pairs with |φ'(h)| < 0.05·max|φ'| (tanh:
      |h| > 2.29, sigmoid: |h| > 4.36); φ' by autograd on a copy of the module itself.
    * ``output`` — std and max |·| of the outputs, the initial loss, a reference loss (a
      uniform prediction for classification: the loss of all-zero logits, ln C for
      cross-entropy; the loss of predicting the mean target for regression, both through
      ``loss_fn`` so they share its convention) and ``loss_ratio`` = initial/reference.
    * ``seconds`` — wall time.

    The examples are the seeded subset ``SignalPropagation`` draws (a generator seeded with
    ``ctx.generator.initial_seed()``), so all parts see the same inputs. The model runs in eval
    mode (restored after) and its parameters are never written.
    """
    start = time.perf_counter()
    model = ctx.model
    was_training = model.training
    model.eval()
    try:
        x, y = _examples(ctx, samples)
        # every analyzer draws from a generator seeded as SignalPropagation's, so GradNorms'
        # random subset is the same examples (and ctx.generator is left as it was)
        sub = replace(ctx, generator=torch.Generator().manual_seed(ctx.generator.initial_seed()), batch=None)
        sp = SignalPropagation(SignalPropagation.Params(samples=max(2, samples))).analyze(sub)
        sub = replace(sub, generator=torch.Generator().manual_seed(ctx.generator.initial_seed()))
        gn = GradNorms(GradNorms.Params(source="train", samples=samples)).analyze(sub)
        out: dict[str, Any] = {
            "samples": int(x.shape[0]),
            "forward": _forward(sp),
            "gradients": _gradients(gn),
        }
        out["phase"], out["phase_skipped"] = _phase(model, sp)
        out["jacobian"] = _jacobian(replace(sub, generator=torch.Generator().manual_seed(ctx.generator.initial_seed())))
        out["units"] = _units(model, x)
        out["output"] = _output(ctx, x, y)
    finally:
        model.train(was_training)
    out["seconds"] = time.perf_counter() - start
    return out


def measure_units(ctx: AnalysisContext, samples: int = 256) -> dict[str, Any]:
    """Only the ``units`` part of ``measure_at_init`` (dead ReLUs, saturated tanh/sigmoid
    units) on the same examples, in eval mode: cheap enough to repeat after training."""
    model = ctx.model
    was_training = model.training
    model.eval()
    try:
        x, _ = _examples(ctx, samples)
        return _units(model, x)
    finally:
        model.train(was_training)


# ---------------------------------------------------------------------- parts
def _examples(ctx: AnalysisContext, samples: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The train examples ``signal_propagation.sample_inputs`` picks, with their targets."""
    gen = torch.Generator(device="cpu").manual_seed(ctx.generator.initial_seed())
    x, y = ctx.data.x_train, ctx.data.y_train
    n = int(x.shape[0])
    if samples < n:
        idx = torch.randperm(n, generator=gen)[:samples]
        x, y = x[idx.to(x.device)], y[idx.to(y.device)]
    return x.to(ctx.device), y.to(ctx.device)


def _forward(sp: dict[str, Any]) -> dict[str, Any]:
    q_hat = list(sp["q_hat"])
    k = len(q_hat)
    ratio = growth = None
    if k >= 3:
        first, last = q_hat[0], q_hat[k - 2]
        ratio = last / first if first > 0 else (math.nan if last == 0 else math.inf)
        if first > 0 and last > 0:
            growth = (math.log10(last) - math.log10(first)) / (k - 2)
        else:
            growth = -math.inf if first > 0 else math.nan
    return {
        "layers": sp["layers"], "widths": sp["widths"], "activations": sp["activations"],
        "sigma_w2": sp["sigma_w2"], "sigma_b2": sp["sigma_b2"],
        "q_hat": q_hat, "q": sp["q"], "q_ratio": ratio, "log10_growth_per_layer": growth,
    }


def _gradients(gn: dict[str, Any]) -> dict[str, Any]:
    w = list(gn["weights"])
    ratio = None
    if len(w) >= 2:
        ratio = w[0] / w[-1] if w[-1] > 0 else (math.nan if w[0] == 0 else math.inf)
    return {"weights": w, "weight_names": gn["weight_names"], "ratios": gn["ratios"],
            "growth_per_layer": gn["growth_per_layer"], "first_last_ratio": ratio, "total": gn["total"]}


def _phase(model: nn.Module, sp: dict[str, Any]) -> tuple[dict[str, Any] | None, str | None]:
    norms = sorted({type(m).__name__ for m in model.modules() if isinstance(m, _NORM_TYPES)})
    if norms:
        return None, (f"normalization layers ({', '.join(norms)}): the i.i.d. mean-field recursion does not "
                      "describe a normalized network")
    hidden = sp["activations"][:-1]
    if not hidden:
        return None, "a single weight layer: no hidden layer"
    names = sorted(set(hidden))
    if "identity" in names:
        return None, ("no activation module after some hidden layer (a linear layer, a functional activation "
                      "or another module first)")
    if len(names) > 1:
        return None, f"mixed hidden activations ({', '.join(names)})"
    module = next((m for m in model.modules() if type(m).__name__ == names[0] and isinstance(m, _activation_types())),
                  None)
    if module is None:  # pragma: no cover - signal_propagation named a module the model holds
        return None, f"activation {names[0]} not found in the model"
    sigma_w2 = statistics.median(sp["sigma_w2"][:-1])
    sigma_b2 = statistics.median(sp["sigma_b2"][:-1])
    return mean_field.phase(module, sigma_w2, sigma_b2), None


def _jacobian(ctx: AnalysisContext) -> dict[str, Any]:
    in_size = math.prod(ctx.data.input_shape)
    out_size = int(ctx.data.output_dim)
    if in_size * out_size > JACOBIAN_MAX_ENTRIES:
        return {"skipped": f"one input–output Jacobian has {out_size} × {in_size} = {in_size * out_size:,} entries, "
                           f"above {JACOBIAN_MAX_ENTRIES:,}"}
    try:
        r = JacobianSpectrum(JacobianSpectrum.Params(samples=JACOBIAN_SAMPLES, max_entries=JACOBIAN_MAX_ENTRIES)).analyze(ctx)
    except Exception as e:  # noqa: BLE001 - the other measurements stand without it
        return {"skipped": f"{type(e).__name__}: {e}"}
    return {k: r[k] for k in ("mean_sq", "std_sq", "max", "min", "max_min_ratio", "shape", "samples")}


def _kind(module: nn.Module) -> str:
    name = type(module).__name__
    if name in _RELU_LIKE:
        return "relu"
    if name in _SATURATING:
        return "saturating"
    return "other"


def _derivative(phi: nn.Module, h: torch.Tensor) -> torch.Tensor:
    """φ'(h) elementwise, by autograd (the module is elementwise, so ∂Σφ/∂h = φ'(h))."""
    h = h.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        (d,) = torch.autograd.grad(phi(h.clone()).sum(), h)
    return d


def _units(model: nn.Module, x: torch.Tensor) -> dict[str, Any]:
    names = {id(m): n for n, m in model.named_modules()}
    types = _activation_types()
    captured: list[tuple[nn.Module, torch.Tensor]] = []
    seen: set[int] = set()

    def hook(module: nn.Module, inputs: tuple) -> None:
        # the input, before an in-place activation overwrites it; first call of each module only
        if id(module) not in seen and inputs and isinstance(inputs[0], torch.Tensor):
            seen.add(id(module))
            captured.append((module, inputs[0].detach().clone()))

    handles = [m.register_forward_pre_hook(hook) for m in model.modules()
               if isinstance(m, types) and not isinstance(m, nn.Identity) and not any(True for _ in m.children())]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for handle in handles:
            handle.remove()

    layers, kinds, dead, saturated = [], [], [], []
    for module, h in captured:
        phi = copy.deepcopy(module)
        for sub in phi.modules():
            sub._forward_hooks.clear()
            sub._forward_pre_hooks.clear()
        kind = _kind(module)
        layers.append(names.get(id(module), type(module).__name__))
        kinds.append(kind)
        h = h.flatten(1)
        if kind == "relu":
            dead.append(float((h <= 0).all(dim=0).double().mean()) if h.shape[1] else math.nan)
            saturated.append(None)
        else:
            top = float(_derivative(phi.to(device="cpu", dtype=torch.float64), _GRID).abs().max())
            d = _derivative(phi.to(device=h.device, dtype=h.dtype), h).abs()
            saturated.append(float((d < SATURATION_LEVEL * top).double().mean()) if top > 0 else math.nan)
            dead.append(None)
    dead_values = [v for v in dead if v is not None and math.isfinite(v)]
    sat_values = [v for v in saturated if v is not None and math.isfinite(v)]
    return {"layers": layers, "kind": kinds, "dead_fraction": dead, "saturated_fraction": saturated,
            "max_dead_fraction": max(dead_values) if dead_values else None,
            "max_saturated_fraction": max(sat_values) if sat_values else None,
            "saturation_level": SATURATION_LEVEL}


def _output(ctx: AnalysisContext, x: torch.Tensor, y: torch.Tensor) -> dict[str, Any]:
    task = ctx.data.task
    with torch.no_grad():
        out = ctx.model(x)
        loss = float(ctx.loss_fn(out, y))
        if task == "classification":
            # a uniform prediction: all-zero logits (ln C under cross-entropy)
            reference = float(ctx.loss_fn(torch.zeros_like(out), y))
        else:
            mean = y.double().mean(dim=0, keepdim=True).to(out.dtype).expand_as(out)
            reference = float(ctx.loss_fn(mean, y))
    classes = ctx.data.num_classes or (int(out.shape[-1]) if out.dim() > 1 else None)
    flat = out.detach().double().flatten()
    ratio = loss / reference if reference > 0 else (math.nan if loss == 0 else math.inf)
    return {
        "logit_std": float(flat.std(unbiased=False)) if flat.numel() else math.nan,
        "logit_abs_max": float(flat.abs().max()) if flat.numel() else math.nan,
        "initial_loss": loss,
        "reference_loss": reference,
        "log_classes": math.log(classes) if task == "classification" and classes else None,
        "loss_ratio": ratio,
        "task": task,
    }


# ---------------------------------------------------------------------- plot
def plot_at_init(evidence: dict[str, Any], out_dir: Path) -> list[Path]:
    """``init_signals.png``: (1) measured q̂ˡ and mean-field qˡ per weight layer (log y), (2) the
    gradient norm ‖∂L/∂W_l‖_F per weight layer (log y), (3) the dead / saturated fraction per
    activation layer. NaN/inf points are left out."""
    from nnopt.plugins.analyzers._plot import finite_pairs, new_figure, save, set_log_y

    fig, (ax1, ax2, ax3) = new_figure(15.0, 4.2, 1, 3)

    fwd = evidence.get("forward") or {}
    depth = list(range(1, len(fwd.get("layers") or []) + 1))
    shown: list[float] = []
    for key, label, style in (("q_hat", r"measured $\hat{q}^l$", dict(marker="o")), ("q", r"mean-field $q^l$", dict(marker="x", linestyle="--"))):
        xs, ys = finite_pairs(depth, fwd.get(key) or [])
        pts = [(a, b) for a, b in zip(xs, ys) if b > 0]
        if pts:
            ax1.plot(*zip(*pts), label=label, **style)
            shown.extend(b for _, b in pts)
    if shown:
        set_log_y(ax1, shown)
        ax1.legend(fontsize=8)
    phase = evidence.get("phase")
    ax1.set_title("pre-activation second moment" + (f" ({phase['phase']}, $\\chi_1$ = {phase['chi1']:.3g})" if phase else ""))
    ax1.set_xlabel("weight layer l (input → output)")
    ax1.set_ylabel(r"$\hat{q}^l = \mathrm{mean}\,(h^l)^2$")
    ax1.grid(True, which="both", alpha=0.3)

    grads = evidence.get("gradients") or {}
    xs, ys = finite_pairs(list(range(1, len(grads.get("weights") or []) + 1)), grads.get("weights") or [])
    pts = [(a, b) for a, b in zip(xs, ys) if b > 0]
    if pts:
        ax2.plot(*zip(*pts), marker="o", color=fs.VERMILLION)
        set_log_y(ax2, [b for _, b in pts])
    ax2.set_title("gradient norm per weight layer")
    ax2.set_xlabel("weight layer l (input → output)")
    ax2.set_ylabel(r"$\|\partial L/\partial W_l\|_F$")
    ax2.grid(True, which="both", alpha=0.3)

    units = evidence.get("units") or {}
    pos = list(range(1, len(units.get("layers") or []) + 1))
    for key, label, color in (("dead_fraction", "dead units (ReLU-like)", fs.BLACK),
                              ("saturated_fraction", "saturated (unit, example) pairs", fs.ORANGE)):
        xs, ys = finite_pairs(pos, units.get(key) or [])
        if xs:
            ax3.bar(xs, ys, color=color, label=label, alpha=0.8)
    ax3.set_ylim(0, 1.05)
    ax3.set_title("dead / saturated fraction per activation layer")
    ax3.set_xlabel("activation layer (input → output)")
    ax3.set_ylabel("fraction")
    if pos:
        ax3.legend(fontsize=8)
    ax3.grid(True, axis="y", alpha=0.3)
    return [save(fig, Path(out_dir) / "init_signals.png")]
