"""The interface the three empirical-NTK implementations share (``empirical.EmpiricalNTK``).

An implementation computes, for the network f: R^d → R^O and its trainable parameters θ,

    Θ(x, x')_{o r} = Σ_p ∂f_o(x)/∂θ_p · ∂f_r(x')/∂θ_p = [J(x) J(x')ᵀ]_{o r}

one block of examples at a time. The driver (``EmpiricalNTK``) cuts the inputs into blocks,
asks ``features`` of each block (whatever per-example quantities the method contracts: the
Jacobian, layer inputs and back-propagated gradients, or the inputs themselves), and
``block(f1, f2, outdiag)`` for each pair of blocks; ``diagonal(f)`` gives Θ(x_n, x_n)_{oo}.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from torch import nn


class NTKMethod:
    """One way of computing empirical NTK blocks of ``model`` (O = ``out_dim`` outputs).

    ``cache_features``: the driver keeps every block's features for the whole computation
    (cheap ones: inputs, layer activations) instead of recomputing them per block pair
    (Jacobians, whose memory is what blocking bounds).
    """

    name: ClassVar[str] = ""
    cache_features: ClassVar[bool] = True

    def __init__(self, model: "nn.Module", out_dim: int):
        self.model, self.out_dim = model, int(out_dim)
        self.trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
        self.n_params = sum(p.numel() for p in self.trainable.values())

    def why_not(self) -> str | None:
        """None when this method can compute the NTK of the model, else the reason in words."""
        return None

    def probe(self, x: "torch.Tensor") -> None:
        """Learn from one example what ``block_cost`` needs (layer shapes); may raise StageError
        when the model turns out not to suit the method."""

    def block_cost(self, b1: int, b2: int) -> int:
        """Floating-point entries held while computing one (b1 × b2) block (a memory estimate)."""
        raise NotImplementedError

    def features(self, x: "torch.Tensor") -> Any:
        raise NotImplementedError

    def block(self, f1: Any, f2: Any, outdiag: bool) -> "torch.Tensor":
        """Θ on the pair of blocks: ``(b1, b2, O, O)``, or with ``outdiag`` only the diagonal
        over outputs, ``(b1, b2, O)`` (Θ_oo)."""
        raise NotImplementedError

    def diagonal(self, f: Any) -> "torch.Tensor":
        """Θ(x_n, x_n)_{oo} of the block's examples: ``(b, O)``."""
        raise NotImplementedError


def functional_parts(model: "nn.Module") -> tuple[dict[str, "torch.Tensor"], dict[str, "torch.Tensor"]]:
    """``(trainable, constant)``: the detached trainable parameters (the θ of Θ), and the
    frozen parameters and buffers, which ``torch.func.functional_call`` needs as well."""
    trainable = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
    constant = {n: p.detach() for n, p in model.named_parameters() if not p.requires_grad}
    constant.update(dict(model.named_buffers()))
    return trainable, constant
