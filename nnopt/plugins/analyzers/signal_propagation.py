"""Forward signal propagation at (or after) initialization: the mean-field length map against
the measured pre-activations, Hanin–Rolnick's length fluctuations, LeCun's norm ratio
(survey §4.1–4.2)."""

from __future__ import annotations

import copy
import math
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import Field

from nnopt.core.component import Params
from nnopt.core.errors import StageError
from nnopt.core.kinds import AnalysisContext, Analyzer
from nnopt.core import figure_style as fs

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from torch import nn

MAX_SAMPLES = 65536
M_QUANTILES = (0.1, 0.5, 0.9)


class SignalPropagationParams(Params):
    samples: int = Field(
        256, ge=2, le=MAX_SAMPLES,
        description="examples pushed through the network (a seeded random subset of `source`, or this many "
        "Gaussian inputs); at least 2, for a variance across examples",
    )
    source: Literal["train", "test"] = Field("train", description="split the examples are drawn from (inputs: data)")
    inputs: Literal["data", "gaussian"] = Field(
        "data",
        description="`data`: examples of `source`; `gaussian`: x ~ N(0, I) of the data's input shape "
        "(unit-variance inputs, the setting of the mean-field theory and of LeCun's ratio)",
    )


class SignalPropagation(Analyzer):
    """Per weight layer l (every ``nn.Linear`` / ``nn.Conv*d``, in the order the forward pass
    calls them), with hˡ = Wˡzˡ⁻¹ + bˡ the layer's output and zˡ = φˡ(hˡ) the activation after it:

    * ``q_hat`` — the measured second moment q̂ˡ = mean over units and examples of (hˡ)².
    * ``q`` — the mean-field prediction (Poole et al. 2016, Schoenholz et al. 2017; survey §4.2)
      qˡ = σ_wˡ² · E_{ξ~N(0,1)}[φˡ⁻¹(√qˡ⁻¹ ξ)²] + σ_bˡ², started from
      q¹ = σ_w¹² · mean_x(‖x‖²/d₀) + σ_b¹² with x the first layer's input over the batch.
      σ_wˡ² = fan_in · mean(Wˡ²) and σ_bˡ² = mean((bˡ)²) (0 without bias) are measured from
      the layer's actual weights, so the prediction applies to any initializer (and during
      training, to the current weights). The expectation is the Gauss–Hermite quadrature of
      ``nnopt.plugins.initializers.critical._moments`` (128 nodes, float64) applied to the
      activation module itself, so any activation works. For an identity φ the recursion is
      exactly qˡ = σ_w² qˡ⁻¹ + σ_b², for ReLU qˡ = σ_w² qˡ⁻¹/2 + σ_b². The recursion uses the
      batch's mean input length; for a positively homogeneous φ (identity, ReLU) that is
      exact, for others (tanh) it ignores the spread of ‖x‖²/d₀ across examples (Jensen).
    * ``q_rel_error`` — (q̂ˡ − qˡ)/qˡ. Mean-field theory is exact as the widths → ∞ for
      i.i.d. weights; at finite width the error is O(1/√width) per layer.
    * ``M_mean``, ``M_var``, ``log_M_var``, ``log_M_ratio_mean``, ``log_M_ratio_var``,
      ``M_quantiles`` — Hanin & Rolnick 2018 ("How to start training: the effect of
      initialization and architecture"): Mˡ = ‖zˡ‖²/dˡ per example, its mean, its empirical
      variance V̂ across examples, the variance of log Mˡ, the mean and variance of
      log(Mˡ/M⁰) (M⁰ = ‖x‖²/d₀: the network's part, the inputs' own lengths divided out),
      and its 10/50/90% quantiles. For ReLU with He init E[Mˡ] = M⁰ at every depth but
      Var[Mˡ] grows like exp(5 Σ_l 1/dˡ) (≈ exp(5L/d) at a fixed width). Their variance is over
      the weights for a fixed input; the one here is over inputs for one draw of the weights,
      which saturates with depth as a ReLU net aligns all inputs: to estimate theirs, pool
      ``log_M_ratio_mean`` and ``log_M_ratio_var`` over networks of several seeds (the law of
      total variance). ``M0_mean`` is mean M⁰. A log of M ≤ 0 (a dead layer) is NaN.
    * ``norm_ratio`` — mean over examples of ‖zˡ‖/‖x‖, with x the model's input;
      ``input_output_ratio`` is its last entry ‖z^L‖/‖x‖ (LeCun et al. 1998's check, survey
      §4.2: for a deep linear net ‖W^L⋯W^1 x‖/‖x‖ ≈ 1 when Var Wᵢⱼ = 1/d).

    How φˡ is found: forward hooks record the order in which leaf modules are called; φˡ is
    the first elementwise activation module called after layer l and before the next weight
    layer, skipping normalization, dropout, flatten/unflatten modules. Elementwise
    activations are the modules of ``torch.nn.modules.activation`` (except softmax-like,
    GLU and attention modules), ``nn.Identity``, and the module type every registered
    ``nnopt.activations`` component builds. When another module (pooling, a custom module)
    comes first, or nothing, or the activation is functional (``F.relu`` in ``forward``), φˡ
    is the identity and zˡ = hˡ. zˡ is the activation module's actual output on that call.
    Each weight layer is measured on its first call only (a layer reused in one forward pass
    is counted once). Normalization layers and residual connections between layers are not
    part of the recursion: there ``q`` is not a prediction of ``q_hat``.

    Results are lists aligned with ``layers`` (qualified module names), with ``widths``
    (dˡ, units per example), ``sigma_w2``, ``sigma_b2``, ``activations`` (φˡ's class name,
    ``identity`` when none). ``samples`` is the number of examples used and ``inputs`` where
    they came from. The examples are drawn from a generator seeded with the analyzer's
    generator's initial seed, so a tracked series sees the same examples at every step.
    """

    Params: ClassVar[type[SignalPropagationParams]] = SignalPropagationParams
    cache_version: ClassVar[int] = 1

    params: SignalPropagationParams

    def analyze(self, ctx: AnalysisContext) -> dict[str, Any]:
        import torch

        from nnopt.plugins.initializers.critical import _moments

        p = self.params
        x = sample_inputs(ctx, p.samples, p.source, p.inputs)
        records = _forward_records(ctx.model, x)
        if not records:
            raise StageError("signal_propagation: the model has no Linear/Conv layer that its forward pass calls")
        n = int(x.shape[0])
        x_norm = x.detach().flatten(1).double().norm(dim=1)

        q_pred: list[float] = []
        q_prev: float | None = None
        phi_prev: Any = None
        for i, r in enumerate(records):
            if i == 0:
                q = r["sigma_w2"] * r["input_sq_mean"] + r["sigma_b2"]
            else:
                assert q_prev is not None
                second = q_prev if phi_prev is None else _moments(phi_prev, q_prev)[0]
                q = r["sigma_w2"] * second + r["sigma_b2"]
            q_pred.append(q)
            q_prev, phi_prev = q, r["phi_cpu"]

        out: dict[str, Any] = {
            "samples": n,
            "inputs": p.inputs,
            "layers": [r["name"] for r in records],
            "widths": [r["width"] for r in records],
            "activations": [r["phi_name"] for r in records],
            "sigma_w2": [r["sigma_w2"] for r in records],
            "sigma_b2": [r["sigma_b2"] for r in records],
            "q_hat": [r["q_hat"] for r in records],
            "q": q_pred,
            "q_rel_error": [(r["q_hat"] - q) / q if q > 0 else math.nan for r, q in zip(records, q_pred)],
            "M0_mean": float(records[0]["M0"].mean()),
        }
        m0 = records[0]["M0"]
        M_mean, M_var, log_var, log_ratio_mean, log_ratio_var, quantiles, ratios = [], [], [], [], [], [], []
        for r in records:
            M = r["M"]
            M_mean.append(float(M.mean()))
            M_var.append(float(M.var(unbiased=True)))
            positive = bool((M > 0).all()) and bool((m0 > 0).all())
            log_var.append(float(M.log().var(unbiased=True)) if positive else math.nan)
            log_ratio = (M / m0).log() if positive else None
            log_ratio_mean.append(float(log_ratio.mean()) if log_ratio is not None else math.nan)
            log_ratio_var.append(float(log_ratio.var(unbiased=True)) if log_ratio is not None else math.nan)
            quantiles.append([float(v) for v in torch.quantile(M, torch.tensor(M_QUANTILES, dtype=M.dtype))])
            ratio = r["z_norm"] / x_norm
            ratios.append(float(ratio[torch.isfinite(ratio)].mean()) if bool(torch.isfinite(ratio).any()) else math.nan)
        out.update(M_mean=M_mean, M_var=M_var, log_M_var=log_var, log_M_ratio_mean=log_ratio_mean,
                   log_M_ratio_var=log_ratio_var,
                   M_quantiles=quantiles, M_quantile_levels=list(M_QUANTILES), norm_ratio=ratios,
                   input_output_ratio=ratios[-1])
        return out

    # ------------------------------------------------------------------ plots
    def plot(self, results: dict[str, Any], out_dir: Path) -> list[Path]:
        from ._plot import finite_pairs, new_figure, save, set_log_y

        layers = results.get("layers") or []
        if not layers:
            return []
        files: list[Path] = []
        depth = list(range(1, len(layers) + 1))

        fig, ax = new_figure()
        shown: list[float] = []
        for key, label, style in (("q_hat", "measured q̂ˡ", dict(marker="o", linewidth=1.5)),
                                  ("q", "mean-field qˡ", dict(marker="x", linestyle="--", linewidth=1.2))):
            xs, ys = finite_pairs(depth, results.get(key) or [])
            xs, ys = [a for a, b in zip(xs, ys) if b > 0], [b for b in ys if b > 0]
            if ys:
                ax.plot(xs, ys, label=label, **style)
                shown.extend(ys)
        if shown:
            set_log_y(ax, shown)
        ax.set_xlabel("weight layer l (input → output)")
        ax.set_ylabel("second moment of the pre-activations")
        ax.set_title(f"signal propagation ({results.get('samples', '?')} examples, {results.get('inputs', 'data')})")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
        files.append(save(fig, Path(out_dir) / "signal_propagation.png"))

        fig, ax = new_figure()
        quantiles = results.get("M_quantiles") or []
        lo = [q[0] for q in quantiles]
        mid = [q[len(q) // 2] for q in quantiles]
        hi = [q[-1] for q in quantiles]
        values = [v for v in lo + mid + hi + list(results.get("M_mean") or []) if isinstance(v, (int, float))
                  and math.isfinite(v) and v > 0]
        if values:
            levels = results.get("M_quantile_levels") or list(M_QUANTILES)
            ax.fill_between(depth, [max(v, min(values)) for v in lo], hi, alpha=0.25, color=fs.BLUE,
                            label=f"{levels[0]:.0%}–{levels[-1]:.0%} of examples")
            ax.plot(depth, mid, color=fs.BLUE, label=r"median $M^l$")
            ax.plot(*finite_pairs(depth, results.get("M_mean") or []), color=fs.BLACK, linestyle="--", label=r"mean $M^l$")
            set_log_y(ax, values)
            ax.legend(fontsize=8)
        var = (results.get("log_M_var") or [math.nan])[-1]
        ax.set_xlabel("weight layer l (input → output)")
        ax.set_ylabel(r"$M^l = \|z^l\|^2/d^l$")
        ax.set_title(f"Hanin–Rolnick $M^l$ per example (last layer: Var log M = {var:.3g})")
        ax.grid(True, which="both", alpha=0.3)
        files.append(save(fig, Path(out_dir) / "signal_propagation_M.png"))
        return files

    def plot_series(self, series: list[tuple[int, dict[str, Any]]], out_dir: Path) -> list[Path]:
        from ._plot import finite_pairs, new_figure, save, set_log_y

        if not series:
            return []
        layers = list(series[-1][1].get("layers") or [])
        if not layers:
            return []
        files: list[Path] = []
        steps = [s for s, _ in series]
        for key, ylabel, title, name in (
            ("q_hat", "q̂ˡ = mean (hˡ)²", "pre-activation second moment per layer", "signal_propagation_track.png"),
            ("log_M_var", "Var over examples of log Mˡ", "Hanin–Rolnick length fluctuations per layer",
             "signal_propagation_track_M.png"),
        ):
            fig, ax = new_figure()
            plotted: list[float] = []
            for l, layer in enumerate(layers):
                xs, ys = finite_pairs(steps, [_at(r.get(key), l) for _, r in series])
                pts = [(a, b) for a, b in zip(xs, ys) if b > 0]
                if pts:
                    ax.plot(*zip(*pts), label=layer, color=_layer_color(l, len(layers)), linewidth=1.2)
                    plotted.extend(b for _, b in pts)
            if not plotted:
                continue
            set_log_y(ax, plotted)
            ax.set_xlabel("step")
            ax.set_ylabel(ylabel)
            ax.set_title(title)
            ax.grid(True, which="both", alpha=0.3)
            if len(layers) <= 12:
                ax.legend(fontsize=7)
            files.append(save(fig, Path(out_dir) / name))
        return files


# ---------------------------------------------------------------------- shared helpers
def sample_inputs(ctx: AnalysisContext, samples: int, source: str, inputs: str) -> "torch.Tensor":
    """``samples`` inputs on ``ctx.device``: a random subset of the ``source`` split
    (all of it when smaller), or x ~ N(0, I) of the data's input shape (``inputs: gaussian``),
    in the model's floating dtype. Drawn from a fresh CPU generator seeded with
    ``ctx.generator.initial_seed()``: repeated calls of one tracked analyzer (whose generator
    persists across steps) use the same examples, so a series shows the network changing,
    not the sample."""
    import torch

    gen = torch.Generator(device="cpu").manual_seed(ctx.generator.initial_seed())
    dtype = next((p.dtype for p in ctx.model.parameters() if p.is_floating_point()), torch.float32)
    if inputs == "gaussian":
        shape = tuple(ctx.data.input_shape)
        return torch.randn((samples, *shape), generator=gen, dtype=torch.float64).to(device=ctx.device, dtype=dtype)
    pool = ctx.data.x_train if source == "train" else ctx.data.x_test
    n = int(pool.shape[0])
    if n == 0:
        raise StageError(f"the {source} split is empty: no examples to analyze (use source: train, or inputs: gaussian)")
    if samples < n:
        idx = torch.randperm(n, generator=gen)[:samples].to(pool.device)
        pool = pool[idx]
    return pool.to(ctx.device)


@lru_cache(maxsize=1)
def _activation_types() -> tuple[type, ...]:
    """Module classes that count as elementwise activations (see the class docstring)."""
    from torch import nn
    from torch.nn.modules import activation as torch_activation

    not_elementwise = {"Softmax", "Softmin", "LogSoftmax", "Softmax2d", "MultiheadAttention", "GLU"}
    found: set[type] = {nn.Identity}
    for name in dir(torch_activation):
        obj = getattr(torch_activation, name)
        if isinstance(obj, type) and issubclass(obj, nn.Module) and obj is not nn.Module and name not in not_elementwise:
            found.add(obj)
    try:
        from nnopt.core.registry import Registry

        registry = Registry()
        for entry in registry.entries("activations"):
            try:
                cls, _ = registry.load("activations", entry.name)
                found.add(type(cls(cls.Params()).build()))
            except Exception:  # noqa: BLE001 - a broken third-party activation is that plugin's problem
                continue
    except Exception:  # noqa: BLE001 - without a registry the torch classes still cover the common cases
        pass
    return tuple(found)


def _transparent(module: "nn.Module") -> bool:
    """Modules skipped when looking for the activation after a layer: they sit between the
    layer and its activation in common architectures without being one (normalization is
    skipped so that φ(N(h)) still names φ)."""
    from torch import nn
    from torch.nn.modules.batchnorm import _NormBase
    from torch.nn.modules.dropout import _DropoutNd

    return isinstance(module, (_NormBase, nn.LayerNorm, nn.GroupNorm, nn.LocalResponseNorm, _DropoutNd,
                               nn.Flatten, nn.Unflatten))


def is_weight_layer(module: "nn.Module") -> bool:
    from torch import nn

    return isinstance(module, (nn.Linear, nn.modules.conv._ConvNd)) and module.weight.dim() >= 2


class _Cloning:
    """Calls ``module`` on a copy of its input: an in-place activation (``ReLU(inplace=True)``)
    would otherwise write into the quadrature's leaf tensor that requires grad."""

    def __init__(self, module: "nn.Module"):
        self.module = module

    def __call__(self, x: "torch.Tensor") -> "torch.Tensor":
        return self.module(x.clone())


def _cpu_copy(module: "nn.Module | None") -> "_Cloning | None":
    """φ for the quadrature: a float64 CPU copy of the activation module (the model's may sit
    on an accelerator, and a parametrized one like PReLU carries weights), without hooks."""
    import torch

    if module is None:
        return None
    phi = copy.deepcopy(module)
    for sub in phi.modules():
        sub._forward_hooks.clear()
        sub._forward_pre_hooks.clear()
    return _Cloning(phi.to(device="cpu", dtype=torch.float64))


def _forward_records(model: "nn.Module", x: "torch.Tensor") -> list[dict[str, Any]]:
    """One forward pass of ``x`` with hooks on every leaf module; per weight layer (first call,
    forward order): its statistics and the activation module after it."""
    import torch

    names = {id(m): name for name, m in model.named_modules()}
    activation_types = _activation_types()
    records: list[dict[str, Any]] = []
    seen: set[int] = set()
    # the weight layer whose activation is still being looked for, as an index into records
    pending: list[int | None] = [None]

    def on_weight_layer(module: "nn.Module", inputs: tuple, output: Any) -> None:
        if id(module) in seen or not isinstance(output, torch.Tensor):
            pending[0] = None
            return
        seen.add(id(module))
        h = output.detach().flatten(1).double()
        z_in = inputs[0].detach().flatten(1).double() if inputs and isinstance(inputs[0], torch.Tensor) else None
        w = module.weight.detach().double()
        fan_in = int(w[0].numel())  # in_features, or in_channels/groups × kernel size
        b = getattr(module, "bias", None)
        sq = h.square().sum(1)
        width = int(h.shape[1])
        records.append({
            "name": names.get(id(module), type(module).__name__),
            "width": width,
            "sigma_w2": float(fan_in * w.square().mean()),
            "sigma_b2": float(b.detach().double().square().mean()) if b is not None else 0.0,
            "q_hat": float(sq.sum() / (width * h.shape[0])),
            # until an activation is found, zˡ = hˡ
            "M": sq / width,
            "z_norm": sq.sqrt(),
            "M0": z_in.square().sum(1) / z_in.shape[1] if z_in is not None else None,
            "input_sq_mean": float((z_in.square().sum(1) / z_in.shape[1]).mean()) if z_in is not None else math.nan,
            "phi_module": None,
            "phi_name": "identity",
        })
        pending[0] = len(records) - 1

    def on_other(module: "nn.Module", inputs: tuple, output: Any) -> None:
        i = pending[0]
        if i is None or _transparent(module):
            return
        pending[0] = None  # any other call ends the search, an activation or not
        if not isinstance(module, activation_types) or not isinstance(output, torch.Tensor):
            return
        z = output.detach().flatten(1).double()
        if z.shape[0] != x.shape[0]:
            return
        sq = z.square().sum(1)
        records[i]["M"] = sq / z.shape[1]
        records[i]["z_norm"] = sq.sqrt()
        if not isinstance(module, torch.nn.Identity):
            records[i]["phi_module"] = module
            records[i]["phi_name"] = type(module).__name__

    handles = []
    try:
        for name, module in model.named_modules():
            if ".parametrizations." in f".{name}.":
                continue  # a reparametrized weight's modules run inside the layer's own call
            if is_weight_layer(module):
                handles.append(module.register_forward_hook(on_weight_layer))
            elif not any(True for _ in module.children()):
                handles.append(module.register_forward_hook(on_other))
        with torch.no_grad():
            model(x)
    finally:
        for handle in handles:
            handle.remove()
    for r in records:
        r["phi_cpu"] = _cpu_copy(r.pop("phi_module"))
    if records and records[0]["M0"] is None:
        raise StageError("signal_propagation: the first weight layer was not called with a tensor input")
    return records


def _at(values: Any, i: int) -> Any:
    return values[i] if isinstance(values, list) and i < len(values) else None


def _layer_color(i: int, n: int) -> Any:
    return fs.ramp(i, n)
