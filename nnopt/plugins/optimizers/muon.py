"""Muon: momentum orthogonalized by Newton–Schulz for the weight matrices (Jordan et al. 2024),
with AdamW for every other parameter."""

from __future__ import annotations

from typing import Annotated, Any, Callable, ClassVar, Iterable, Literal

import torch
from pydantic import Field

from nnopt.core.component import Params
from nnopt.core.kinds import Optimizer

from .fused import build_fused_if_supported

Beta = Annotated[float, Field(ge=0.0, lt=1.0)]


class MuonParams(Params):
    lr: float = Field(0.02, gt=0.0, description="learning rate η of the matrices (scaled by the schedule)")
    momentum: float = Field(0.95, ge=0.0, lt=1.0, description="momentum μ of the buffer B = μB + (1−μ)G")
    nesterov: bool = Field(True, description="orthogonalize the look-ahead (1−μ)G + μB instead of B")
    ns_steps: int = Field(5, ge=1, le=99, description="Newton–Schulz iterations")
    adjust_lr: Literal["original", "match_rms_adamw"] = Field(
        "original",
        description="per-matrix rate for an A×B weight: `original` η·√max(1, A/B) (Jordan's); `match_rms_adamw` "
        "η·0.2·√max(A, B) (Liu et al. 2025: the update's RMS matches AdamW's, so one η serves both)",
    )
    weight_decay: float = Field(0.0, ge=0.0, description="decoupled decay λ of the matrices: W ← W − ηλW")
    adamw_lr: float | None = Field(None, gt=0.0, description="AdamW's rate for the other parameters (None: lr)")
    adamw_betas: list[Beta] = Field([0.9, 0.95], min_length=2, max_length=2, description="AdamW's [β1, β2]")
    adamw_eps: float = Field(1e-8, gt=0.0, description="AdamW's ε")
    adamw_weight_decay: float | None = Field(None, ge=0.0, description="AdamW's decoupled decay (None: weight_decay)")


class MuonWithFallback(torch.optim.Optimizer):
    """One optimizer over two: ``torch.optim.Muon`` for the 2-D parameters and AdamW for the rest.

    Its ``param_groups`` are the very group dicts of the two inner optimizers (Muon's first),
    so a learning-rate scheduler sets both, and the logged ``lr`` is Muon's; ``state_dict``
    holds both optimizers' states, so a resumed run continues bitwise.
    """

    def __init__(self, muon: torch.optim.Optimizer | None, fallback: torch.optim.Optimizer | None):
        self.inner = [o for o in (muon, fallback) if o is not None]
        self.muon, self.fallback = muon, fallback
        groups = [g for o in self.inner for g in o.param_groups]
        super().__init__(groups, {})  # no defaults: they would be written into the other's groups
        self.defaults = {**(fallback.defaults if fallback else {}), **(muon.defaults if muon else {})}
        # the inner optimizers hold the state; this view lets callers read it as torch's
        self.state = _MergedState(self.inner)  # type: ignore[assignment]

    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor] | None = None) -> torch.Tensor | None:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for o in self.inner:
            o.step()
        return loss

    def state_dict(self) -> dict[str, Any]:
        return {"inner": [o.state_dict() for o in self.inner]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        for o, s in zip(self.inner, state_dict["inner"], strict=True):
            o.load_state_dict(s)
        # load_state_dict replaces the inner group dicts: share the new ones again
        self.param_groups = [g for o in self.inner for g in o.param_groups]


class _MergedState(dict):
    def __init__(self, inner: list[torch.optim.Optimizer]):
        super().__init__()
        self._inner = inner

    def __getitem__(self, key: Any) -> Any:
        for o in self._inner:
            if key in o.state:
                return o.state[key]
        raise KeyError(key)

    def get(self, key: Any, default: Any = None) -> Any:
        return self[key] if key in self else default

    def __contains__(self, key: object) -> bool:
        return any(key in o.state for o in self._inner)

    def __iter__(self):
        return (k for o in self._inner for k in o.state)

    def __len__(self) -> int:
        return sum(len(o.state) for o in self._inner)

    def items(self):  # type: ignore[override]
        return [(k, v) for o in self._inner for k, v in o.state.items()]

    def values(self):  # type: ignore[override]
        return [v for o in self._inner for v in o.state.values()]

    def keys(self):  # type: ignore[override]
        return [k for o in self._inner for k in o.state]


class Muon(Optimizer):
    """Muon, "MomentUm Orthogonalized by Newton–Schulz" (Jordan et al. 2024; Bernstein &
    Newhouse 2024), ``torch.optim.Muon``, for the weight matrices.

    For a 2-D weight W (A×B) with gradient G_t: B_t = μ B_{t−1} + (1−μ) G_t (B_0 = 0), the
    direction M_t = (1−μ) G_t + μ B_t with ``nesterov`` (else B_t), its orthogonalization
    O_t ≈ U Vᵀ for M_t = U S Vᵀ by ``ns_steps`` quintic Newton–Schulz iterations
    X ← aX + b(XXᵀ)X + c(XXᵀ)²X from X_0 = M_t/‖M_t‖_F ((a, b, c) = (3.4445, −4.775,
    2.0315), in bfloat16: the singular values land in roughly [0.5, 1.5] rather than exactly
    at 1, which Jordan et al. found not to hurt), then W ← W(1 − ηλ) − η·s·O_t with
    s = √max(1, A/B) (``adjust_lr: original``) or 0.2·√max(A, B) (``match_rms_adamw``). The step is the steepest descent
    direction under the spectral norm: every singular direction of the update moves equally.

    The split: torch's Muon takes only 2-D parameters, so every 2-D parameter (the weights
    of linear layers, the output layer included) goes to Muon, and every other one — biases,
    normalization scales and shifts, 1-D and ≥3-D tensors such as convolution kernels — to
    ``torch.optim.AdamW`` (``adamw_*`` options; its rate is ``adamw_lr`` or ``lr``). Each
    param group (``param_groups`` of the stage) is split the same way, keeping its options;
    a group's ``lr`` override scales AdamW's rate by the same factor.
    """

    cache_version: ClassVar[int] = 1
    Params = MuonParams

    def build(self, params: Iterable[Any], device: torch.device) -> torch.optim.Optimizer:
        p = self.params
        groups = list(params)
        if groups and not isinstance(groups[0], dict):
            groups = [{"params": groups}]
        adamw_lr = p.adamw_lr if p.adamw_lr is not None else p.lr
        adamw_wd = p.adamw_weight_decay if p.adamw_weight_decay is not None else p.weight_decay
        matrix_groups, other_groups = [], []
        for group in groups:
            members = list(group["params"])
            options = {k: v for k, v in group.items() if k != "params"}
            matrices = [t for t in members if t.ndim == 2]
            others = [t for t in members if t.ndim != 2]
            if matrices:
                matrix_groups.append({**options, "params": matrices})
            if others:
                other = {"params": others, "lr": options.get("lr", p.lr) * adamw_lr / p.lr}
                other["weight_decay"] = options.get("weight_decay", adamw_wd)
                other_groups.append(other)
        muon = torch.optim.Muon(matrix_groups, lr=p.lr, weight_decay=p.weight_decay, momentum=p.momentum,
                                nesterov=p.nesterov, ns_steps=p.ns_steps, adjust_lr_fn=p.adjust_lr) if matrix_groups else None
        fallback = build_fused_if_supported(torch.optim.AdamW, other_groups, device, fused_on=("cpu", "cuda"), lr=adamw_lr,
                                            betas=tuple(p.adamw_betas), eps=p.adamw_eps,
                                            weight_decay=adamw_wd) if other_groups else None
        if muon is None and fallback is None:
            raise ValueError("muon was given no parameters")
        return MuonWithFallback(muon, fallback)
