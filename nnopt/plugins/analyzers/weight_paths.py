"""Evaluate one network architecture at many weight vectors: the points of a line, a curve or a
grid in weight space (``interpolate``, ``surface``, ``mode_connectivity``).

Two ways, the same numbers (to rounding):

* ``vmap`` (default): the points are evaluated in chunks by ``torch.func.functional_call``
  vectorized with ``torch.func.vmap`` over stacked weights, so one batched forward pass
  evaluates ``chunk`` networks at once instead of one model copy at a time; the stacked
  weights of one chunk only are ever materialized, so memory stays bounded for any number
  of points (a 51 × 51 surface of an 85k-parameter MLP would need 0.9 GB stacked at once).
* ``loop``: ``load_state_dict`` per point into the one model, then a plain batched
  evaluation — the reference the vmap path is tested against, and the only path when
  BatchNorm statistics are recomputed per point (running statistics are updated in place,
  which vmap cannot batch).

BatchNorm is an explicit choice (``bn``), never a hidden ``model.eval()``:

* ``eval``: normalization layers use the running statistics held at each point (for an
  interpolation, the interpolated running statistics; for a surface, the reference's);
* ``recompute``: before evaluating a point, every BatchNorm layer's running mean and variance
  are re-estimated from training inputs at that point's weights (``recompute_bn``;
  Garipov et al. 2018, Izmailov et al. 2018's ``bn_update``), then used.

Dropout is off while evaluating (an evaluation, not a training step). Per-batch mean losses
are weighted by batch size, so a final short batch counts by its examples, not as a batch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Literal

from nnopt.core.errors import StageError

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from torch import nn

BnMode = Literal["eval", "recompute"]
Method = Literal["auto", "vmap", "loop"]
#: make the stacked weights of ``stop − start`` points (``{name: (stop − start, *shape)}``)
StatesOf = Callable[[int, int], "dict[str, torch.Tensor]"]


def bn_layers(model: "nn.Module") -> list["nn.Module"]:
    """The BatchNorm layers of ``model`` (``_BatchNorm``: 1-d, 2-d, 3-d, sync)."""
    from torch.nn.modules.batchnorm import _BatchNorm

    return [m for m in model.modules() if isinstance(m, _BatchNorm)]


def float_state(model: "nn.Module") -> dict[str, "torch.Tensor"]:
    """Detached copies of the floating-point entries of ``model.state_dict()`` (parameters and
    buffers such as BatchNorm's running statistics; integer counters left out)."""
    return {k: v.detach().clone() for k, v in model.state_dict().items() if v.is_floating_point()}


def param_names(model: "nn.Module") -> list[str]:
    """Names of the trainable parameters, as ``state_dict`` spells them."""
    return [name for name, _ in model.named_parameters()]


def subset(x: "torch.Tensor", y: "torch.Tensor", samples: int | None, generator: "torch.Generator") -> tuple["torch.Tensor", "torch.Tensor"]:
    """A seeded random subset of ``samples`` examples (drawn on the CPU from ``generator``), or
    everything when ``samples`` is None or at least the split's size."""
    import torch

    n = int(x.shape[0])
    if samples is None or samples >= n:
        return x, y
    idx = torch.randperm(n, generator=generator)[:samples].to(x.device)
    return x[idx], y[idx]


def recompute_bn(model: "nn.Module", x: "torch.Tensor", batch_size: int = 1024) -> None:
    """Re-estimate every BatchNorm layer's running mean and variance at the model's current
    weights from the inputs ``x``, in place.

    The statistics are reset, then accumulated over batches in train mode with momentum
    b/(seen + b) for a batch of b after ``seen`` examples, so the result is the size-weighted
    mean of the batch statistics (a short last batch counts by its examples; Izmailov et al.
    2018's ``bn_update``); with one batch it is exactly the mean and unbiased variance over
    ``x``. Only BatchNorm layers are put in train mode (dropout stays off); modes and momenta
    are restored. No gradients are taken.
    """
    import torch

    layers = bn_layers(model)
    if not layers:
        return
    n = int(x.shape[0])
    if n == 0:
        raise StageError("bn: recompute needs training inputs, and the train split is empty")
    modes = {m: m.training for m in model.modules()}
    momenta = {m: m.momentum for m in layers}
    try:
        model.eval()
        for m in layers:
            m.reset_running_stats()
            m.train()
        seen = 0
        with torch.no_grad():
            for start in range(0, n, batch_size):
                xb = x[start : start + batch_size]
                b = int(xb.shape[0])
                if b < 2 and seen == 0:
                    raise StageError("bn: recompute needs at least 2 training inputs (batch statistics of one "
                                     "example have no variance)")
                if b < 2:
                    break  # a 1-example tail batch has no variance estimate; the rest stand
                for m in layers:
                    m.momentum = b / (seen + b)
                model(xb)
                seen += b
    finally:
        for m, momentum in momenta.items():
            m.momentum = momentum
        for m, mode in modes.items():
            m.training = mode


class PointEvaluator:
    """Loss (and accuracy) of ``model``'s architecture at stacked weight vectors, on one or
    more named splits.

    ``evaluate(n_points, states_of)`` evaluates points 0..n_points−1, asking ``states_of(i, j)``
    for the stacked tensors of points i..j−1 (``{name: (j − i, *shape)}``: the entries that vary
    between points; the others are the model's own). Returns ``{split: {"loss": [...],
    "accuracy": [...] | None}}``. The model's weights and modes are restored afterwards.
    """

    def __init__(
        self,
        model: "nn.Module",
        loss_fn: Callable[["torch.Tensor", "torch.Tensor"], "torch.Tensor"],
        splits: dict[str, tuple["torch.Tensor", "torch.Tensor"]],
        classification: bool,
        bn: BnMode = "eval",
        bn_inputs: "torch.Tensor | None" = None,
        method: Method = "auto",
        chunk: int = 16,
        batch_size: int = 1024,
    ):
        self.model, self.loss_fn, self.splits = model, loss_fn, splits
        self.classification, self.bn, self.bn_inputs = classification, bn, bn_inputs
        self.chunk, self.batch_size = max(1, int(chunk)), max(1, int(batch_size))
        self.has_bn = bool(bn_layers(model))
        if bn == "recompute" and self.has_bn and bn_inputs is None:
            raise ValueError("bn='recompute' needs bn_inputs")
        if method == "auto":
            # on a CPU one point at a time is faster (its activations stay in cache; vmap's
            # stacked ones do not: 9.9 s vs 13.3 s for benchmarks/surface.py on one core); on a
            # GPU batching the points is what fills the device
            device = next((t.device for t in model.parameters()), None)
            method = "vmap" if device is not None and device.type == "cuda" else "loop"
        # recomputing running statistics is an in-place update per point: not batchable
        self.method: str = "loop" if (bn == "recompute" and self.has_bn) else method

    def evaluate(self, n_points: int, states_of: StatesOf) -> dict[str, dict[str, Any]]:
        import torch

        snapshot = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        modes = {m: m.training for m in self.model.modules()}
        sums = {s: (torch.zeros(n_points, dtype=torch.float64), torch.zeros(n_points, dtype=torch.float64))
                for s in self.splits}
        try:
            for start in range(0, n_points, self.chunk):
                stop = min(n_points, start + self.chunk)
                stacked = states_of(start, stop)
                if self.method == "vmap":
                    for split, (x, y) in self.splits.items():
                        loss, correct = self._vmap_chunk(stacked, x, y)
                        sums[split][0][start:stop] = loss
                        sums[split][1][start:stop] = correct
                else:
                    for i in range(stop - start):
                        self._load_point({k: v[i] for k, v in stacked.items()}, snapshot)
                        for split, (x, y) in self.splits.items():
                            loss, correct = self._loop_point(x, y)
                            sums[split][0][start + i] = loss
                            sums[split][1][start + i] = correct
        finally:
            with torch.no_grad():
                self.model.load_state_dict(snapshot)
            for m, mode in modes.items():
                m.training = mode
        out: dict[str, dict[str, Any]] = {}
        for split, (x, _) in self.splits.items():
            n = max(int(x.shape[0]), 1)
            loss_sum, correct = sums[split]
            out[split] = {"loss": (loss_sum / n).tolist(),
                          "accuracy": (correct / n).tolist() if self.classification else None}
        return out

    # ------------------------------------------------------------------ one point at a time
    def _load_point(self, point: dict[str, "torch.Tensor"], snapshot: dict[str, "torch.Tensor"]) -> None:
        import torch

        with torch.no_grad():
            self.model.load_state_dict({**snapshot, **point})
        if self.bn == "recompute" and self.has_bn:
            recompute_bn(self.model, self.bn_inputs, self.batch_size)

    def _loop_point(self, x: "torch.Tensor", y: "torch.Tensor") -> tuple[float, float]:
        import torch

        from nnopt.plugins.stages._common import labels_of, predictions_of

        self.model.eval()  # BatchNorm: the running statistics just loaded or recomputed (`bn`)
        loss_sum = torch.zeros((), dtype=torch.float64, device=x.device)
        correct = torch.zeros((), dtype=torch.float64, device=x.device)
        with torch.no_grad():
            for s in range(0, int(x.shape[0]), self.batch_size):
                xb, yb = x[s : s + self.batch_size], y[s : s + self.batch_size]
                out = self.model(xb)
                loss_sum += self.loss_fn(out, yb).double() * xb.shape[0]
                if self.classification:
                    correct += (predictions_of(out) == labels_of(yb)).sum()
        return float(loss_sum), float(correct)

    # ------------------------------------------------------------------ a chunk at once
    def _vmap_chunk(self, stacked: dict[str, "torch.Tensor"], x: "torch.Tensor", y: "torch.Tensor"):
        import torch
        from torch.func import functional_call, vmap

        from nnopt.plugins.stages._common import labels_of, predictions_of

        model, loss_fn, classification = self.model, self.loss_fn, self.classification
        model.eval()  # BatchNorm: the running statistics held at each point (`bn: eval`)
        fixed = {k: v for k, v in model.state_dict().items() if k not in stacked}

        def one(state: dict[str, "torch.Tensor"], xb: "torch.Tensor", yb: "torch.Tensor"):
            out = functional_call(model, (state, fixed), (xb,))
            loss = loss_fn(out, yb)
            if classification:
                correct = (predictions_of(out) == labels_of(yb)).sum().to(loss.dtype)
            else:
                correct = torch.zeros((), dtype=loss.dtype, device=loss.device)
            return loss, correct

        batched = vmap(one, in_dims=(0, None, None))
        p = next(iter(stacked.values())).shape[0]
        loss_sum = torch.zeros(p, dtype=torch.float64, device=x.device)
        correct_sum = torch.zeros(p, dtype=torch.float64, device=x.device)
        with torch.no_grad():
            for s in range(0, int(x.shape[0]), self.batch_size):
                xb, yb = x[s : s + self.batch_size], y[s : s + self.batch_size]
                loss, correct = batched(stacked, xb, yb)
                loss_sum += loss.double() * xb.shape[0]
                correct_sum += correct.double()
        return loss_sum.cpu(), correct_sum.cpu()


def stack_lerp(a: dict[str, "torch.Tensor"], b: dict[str, "torch.Tensor"], alphas: "torch.Tensor") -> dict[str, "torch.Tensor"]:
    """θ(α) = (1 − α)·a + α·b for each α, stacked: ``{name: (len(alphas), *shape)}``.
    Computed as a + α(b − a) but with α = 0 and α = 1 exactly a and b (``torch.lerp``'s own
    rule: its weight ≥ 0.5 branch is b − (b − a)(1 − α))."""
    import torch

    out = {}
    for name, ta in a.items():
        w = alphas.to(ta.dtype).reshape(-1, *([1] * ta.ndim)).to(ta.device)
        out[name] = torch.lerp(ta.unsqueeze(0).expand(len(alphas), *ta.shape), b[name].to(ta.dtype).unsqueeze(0)
                               .expand(len(alphas), *ta.shape), w)
    return out



def check_same_tensors(a: dict[str, "torch.Tensor"], b: dict[str, "torch.Tensor"], name_a: str, name_b: str,
                       who: str) -> None:
    """A StageError (prefixed ``who:``) unless both state dicts hold the same names and shapes
    (``linear_mode_connectivity.check_compatible``, reworded for the calling analyzer)."""
    from .linear_mode_connectivity import check_compatible

    try:
        check_compatible(a, b, name_a, name_b)
    except StageError as err:
        raise StageError(str(err).replace("linear_mode_connectivity:", f"{who}:", 1)) from None
