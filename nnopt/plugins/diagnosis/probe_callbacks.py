"""Instruments of the diagnose stage's short training probe, as ``TrainLoop`` callbacks.

- ``UpdateRatio``: ‖θ_{t+1} − θ_t‖/‖θ_t‖ per weight matrix, Karpathy's "update-to-weight
  ratio" (his rule of thumb, a heuristic, not a theorem: about 1e-3; far below, the rate is
  too small for that layer; far above, too large) — a per-layer view of the step size of
  survey §5.1 and of the layer-wise scaling LARS/LAMB make explicit (survey §5.5).
- ``LossWatch``: the training loss of every step, its trend, spikes and a downsampled curve.
- ``NormStats``: the mean and standard deviation of the input of each normalization layer
  (BatchNorm, LayerNorm, GroupNorm; survey §4.3), at sampled steps: how far the signal
  reaching a normalizer is from the unit scale the normalizer restores.

Each keeps its records in plain lists and dicts: ``state_dict`` hands them to the loop's
checkpoint and ``load_state_dict`` restores them, so a resumed probe continues them. Nothing
here syncs the device per step: tensors are turned into numbers once per log window
(``LossWatch``) or only at the sampled steps (the others).
"""

from __future__ import annotations

import math
import statistics
from typing import TYPE_CHECKING, Any

from nnopt.core.loop import LoopCallback

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from torch import nn

    from nnopt.core.loop import TrainLoop


def _median(values: list[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return float(statistics.median(finite)) if finite else float("nan")


class UpdateRatio(LoopCallback):
    """The update-to-weight ratio r = ‖θ_{t+1} − θ_t‖/‖θ_t‖ of each weight tensor (dim ≥ 2:
    matrices and kernels; biases and gains are left out, their norms start near 0) at the
    steps t with t % ``every`` == 0: the weights are copied in ``on_step_start`` at those
    steps only and compared in ``after_step``. For plain SGD r = η‖g‖/‖θ‖. ``records`` lists
    ``{"step": t, "ratios": {name: r}}``. A heuristic scale (Karpathy): r ≈ 1e-3 is healthy.
    """

    def __init__(self, model: "nn.Module", every: int = 10):
        self.every = max(1, int(every))
        self.params = [(n, p) for n, p in model.named_parameters() if p.requires_grad and p.dim() >= 2]
        self.records: list[dict[str, Any]] = []
        self._before: list["torch.Tensor"] | None = None
        self._step = 0

    def on_step_start(self, loop: "TrainLoop") -> None:
        if loop.step % self.every == 0 and self.params:
            self._step = loop.step
            self._before = [p.detach().clone() for _, p in self.params]

    def after_step(self, loop: "TrainLoop") -> None:
        if self._before is None:
            return
        import torch

        with torch.no_grad():
            deltas = torch.stack([torch.linalg.vector_norm(p.detach() - b).double() for (_, p), b in
                                  zip(self.params, self._before)])
            norms = torch.stack([torch.linalg.vector_norm(b).double() for b in self._before])
            ratios = (deltas / norms).tolist()  # one host sync per sampled step
        self._before = None
        self.records.append({"step": self._step, "ratios": {n: float(r) for (n, _), r in zip(self.params, ratios)}})

    def summary(self) -> dict[str, Any]:
        """``{"names", "median_ratio": {name: median over records}, "max_ratio": {name: max},
        "overall_median": median of every ratio, "records": count, "heuristic": 1e-3}``."""
        names = [n for n, _ in self.params]
        per = {n: [r["ratios"][n] for r in self.records if n in r["ratios"]] for n in names}
        every = [v for vs in per.values() for v in vs]
        return {"names": names,
                "median_ratio": {n: _median(vs) for n, vs in per.items()},
                "max_ratio": {n: (max(vs) if vs else float("nan")) for n, vs in per.items()},
                "overall_median": _median(every), "records": len(self.records), "heuristic": 1e-3}

    def state_dict(self) -> Any:
        return {"records": [dict(r, ratios=dict(r["ratios"])) for r in self.records]}

    def load_state_dict(self, state: Any) -> None:
        self.records = [dict(r, ratios=dict(r["ratios"])) for r in state.get("records", [])]


class LossWatch(LoopCallback):
    """The training loss of every step (``loop.loss``, the step's batch loss at the weights
    before its update), kept as device tensors and turned into numbers at each ``on_log``
    (where the loop has synced the window anyway). ``steps[i]`` is the update count after
    the step (metrics.jsonl's ``step``), ``losses[i]`` its loss."""

    def __init__(self) -> None:
        self.steps: list[int] = []
        self.losses: list[float] = []
        self._pending: list[tuple[int, "torch.Tensor"]] = []

    def after_step(self, loop: "TrainLoop") -> None:
        if loop.loss is not None:
            self._pending.append((loop.step, loop.loss))

    def on_log(self, loop: "TrainLoop", record: dict[str, Any]) -> None:
        self._flush()

    def _flush(self) -> None:
        if not self._pending:
            return
        import torch

        values = torch.stack([v.reshape(()).double() for _, v in self._pending]).tolist()
        self.steps.extend(s for s, _ in self._pending)
        self.losses.extend(float(v) for v in values)
        self._pending = []

    def summary(self, total_steps: int | None = None, max_points: int = 200) -> dict[str, Any]:
        """``{"first_loss", "last_loss" (mean of the last 10% of the steps run, at least one),
        "min_loss", "relative_decrease" = 1 − last/first, "spikes" (steps whose loss exceeds
        twice the minimum of the steps before), "non_finite", "steps", "total_steps",
        "completed", "curve": [[step, loss], ...]}`` — the curve has at most ``max_points``
        points, each the mean of a run of consecutive steps (at the run's last step)."""
        self._flush()
        n = len(self.losses)
        finite = [(s, v) for s, v in zip(self.steps, self.losses) if math.isfinite(v)]
        out: dict[str, Any] = {"steps": n, "total_steps": total_steps,
                               "completed": total_steps is not None and n >= total_steps,
                               "non_finite": n - len(finite)}
        if not finite:
            return {**out, "first_loss": None, "last_loss": None, "min_loss": None, "relative_decrease": None,
                    "spikes": 0, "curve": []}
        vals = [v for _, v in finite]
        tail = max(1, math.ceil(0.1 * len(vals)))
        first, last = vals[0], math.fsum(vals[-tail:]) / tail
        spikes, running = 0, math.inf
        for v in vals:
            if v > 2 * running:
                spikes += 1
            running = min(running, v)
        bins = min(max_points, len(finite))
        curve = []
        for b in range(bins):
            lo, hi = b * len(finite) // bins, (b + 1) * len(finite) // bins
            chunk = finite[lo:hi]
            curve.append([int(chunk[-1][0]), math.fsum(v for _, v in chunk) / len(chunk)])
        return {**out, "first_loss": first, "last_loss": last, "min_loss": min(vals),
                "relative_decrease": 1 - last / first if first != 0 else float("nan"),
                "spikes": spikes, "curve": curve}

    def state_dict(self) -> Any:
        self._flush()
        return {"steps": list(self.steps), "losses": list(self.losses)}

    def load_state_dict(self, state: Any) -> None:
        self.steps, self.losses = list(state.get("steps", [])), list(state.get("losses", []))
        self._pending = []


def _norm_layers(model: "nn.Module") -> list[tuple[str, "nn.Module", int]]:
    """(name, module, channel dim) of every BatchNorm/InstanceNorm (dim 1), GroupNorm (dim 1)
    and LayerNorm (the last dim: the features it normalizes)."""
    from torch import nn

    out = []
    for name, m in model.named_modules():
        if isinstance(m, (nn.modules.batchnorm._NormBase, nn.GroupNorm)):
            out.append((name, m, 1))
        elif isinstance(m, nn.LayerNorm):
            out.append((name, m, -1))
    return out


class NormStats(LoopCallback):
    """The input of each normalization layer at the steps t with t % ``every`` == 0: per
    channel c the mean μ_c and standard deviation σ_c over every other axis of the batch
    (the statistics BatchNorm itself normalizes by; for LayerNorm the channels are its
    features), recorded as the medians over channels of σ_c and |μ_c|. The forward
    pre-hooks exist only during those steps (registered in ``on_step_start``, removed in
    ``after_step``) and record the first forward of the step only. ``summary()`` is
    ``{layer: {"input_std_median", "input_mean_abs_median"}}`` (medians over the sampled
    steps); ``{}`` for a model without normalization layers."""

    def __init__(self, model: "nn.Module", every: int = 50):
        self.every = max(1, int(every))
        self.layers = _norm_layers(model)
        self.records: list[dict[str, Any]] = []
        self._handles: list[Any] = []
        self._seen: dict[str, tuple["torch.Tensor", "torch.Tensor"]] = {}
        self._step = 0

    def _hook(self, name: str, dim: int) -> Any:
        import torch

        def hook(module: "nn.Module", args: tuple[Any, ...]) -> None:
            if name in self._seen or not args or not isinstance(args[0], torch.Tensor):
                return
            with torch.no_grad():
                x = args[0].detach()
                d = dim % x.dim()
                per = x.movedim(d, 0).reshape(x.shape[d], -1).double()
                self._seen[name] = (per.std(dim=1, correction=0).median(), per.mean(dim=1).abs().median())
        return hook

    def _remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def on_step_start(self, loop: "TrainLoop") -> None:
        self._remove()  # hooks left by a step that raised
        if loop.step % self.every == 0 and self.layers:
            self._step, self._seen = loop.step, {}
            self._handles = [m.register_forward_pre_hook(self._hook(n, d)) for n, m, d in self.layers]

    def after_step(self, loop: "TrainLoop") -> None:
        if not self._handles:
            return
        self._remove()
        if self._seen:
            import torch

            names = list(self._seen)
            values = torch.stack([torch.stack(self._seen[n]) for n in names]).tolist()
            self.records.append({"step": self._step, "layers": {n: {"std_median": float(s), "mean_abs_median": float(m)}
                                                                for n, (s, m) in zip(names, values)}})
        self._seen = {}

    def on_train_end(self, loop: "TrainLoop") -> None:
        self._remove()

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, _, _ in self.layers:
            rows = [r["layers"][name] for r in self.records if name in r["layers"]]
            if rows:
                out[name] = {"input_std_median": _median([r["std_median"] for r in rows]),
                             "input_mean_abs_median": _median([r["mean_abs_median"] for r in rows]),
                             "samples": len(rows)}
        return out

    def state_dict(self) -> Any:
        return {"records": [{"step": r["step"], "layers": {k: dict(v) for k, v in r["layers"].items()}}
                            for r in self.records]}

    def load_state_dict(self, state: Any) -> None:
        self.records = [{"step": r["step"], "layers": {k: dict(v) for k, v in r["layers"].items()}}
                        for r in state.get("records", [])]
