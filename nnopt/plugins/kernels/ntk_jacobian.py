"""Empirical NTK by Jacobian contraction: J = ∂f/∂θ per example, then Θ = J Jᵀ.

The generic method (any model torch.func can differentiate): per block of b examples,
``torch.func.vmap(torch.func.jacrev(f))`` gives J of shape (b, O, P) per parameter tensor,
and Θ(x, x')_{or} = Σ_tensors Σ_p J(x)_{op} J(x')_{rp} is one matrix product per tensor
(neural-tangents' ``NtkImplementation.JACOBIAN_CONTRACTION``; Novak, Sohl-Dickstein &
Schoenholz 2022, "Fast finite width neural tangent kernel", §3.1: cost O(N·O·FP + N²O²P)
time and O(N·O·P) memory, which is why the driver computes it in blocks).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from .ntk_method import NTKMethod, functional_parts

if TYPE_CHECKING:  # pragma: no cover
    import torch


class JacobianNTK(NTKMethod):
    """Θ = J(x) J(x')ᵀ from per-example Jacobians (``vmap(jacrev)``; a per-example loop for
    models vmap cannot batch). Holds 2·b·O·P Jacobian entries per block pair."""

    name: ClassVar[str] = "jacobian"
    cache_features: ClassVar[bool] = False  # a block's Jacobian is O·P per example: recompute, never keep all

    def __init__(self, model: Any, out_dim: int):
        super().__init__(model, out_dim)
        self.params, self.constant = functional_parts(model)

    def block_cost(self, b1: int, b2: int) -> int:
        return (b1 + b2) * self.out_dim * self.n_params + b1 * b2 * self.out_dim**2

    def _f(self, params: dict, x: "torch.Tensor") -> "torch.Tensor":
        from torch.func import functional_call

        return functional_call(self.model, {**params, **self.constant}, (x.unsqueeze(0),)).reshape(-1)

    def features(self, x: "torch.Tensor") -> list["torch.Tensor"]:
        import torch
        from torch.func import jacrev, vmap

        b = int(x.shape[0])
        try:
            jac = vmap(jacrev(self._f), in_dims=(None, 0))(self.params, x)
        except (RuntimeError, NotImplementedError, ValueError):
            # ops vmap has no batching rule for (data-dependent control flow, .item()):
            # the same Jacobians, one example at a time
            rows = [jacrev(self._f)(self.params, x[n]) for n in range(b)]
            jac = {k: torch.stack([r[k] for r in rows]) for k in self.params}
        return [j.reshape(b, self.out_dim, -1) for j in jac.values()]

    def block(self, f1: list, f2: list, outdiag: bool) -> "torch.Tensor":
        b1, b2, o = f1[0].shape[0], f2[0].shape[0], self.out_dim
        out = None
        for j1, j2 in zip(f1, f2):
            if o == 1:
                term = (j1[:, 0] @ j2[:, 0].T)[:, :, None] if outdiag else (j1[:, 0] @ j2[:, 0].T)[:, :, None, None]
            elif outdiag:  # (O, b1, P) @ (O, P, b2): one product per output
                term = (j1.transpose(0, 1) @ j2.permute(1, 2, 0)).permute(1, 2, 0)
            else:  # (b1·O, P) @ (P, b2·O)
                term = (j1.reshape(b1 * o, -1) @ j2.reshape(b2 * o, -1).T).reshape(b1, o, b2, o).permute(0, 2, 1, 3)
            out = term if out is None else out + term
        return out.contiguous()

    def diagonal(self, f: list) -> "torch.Tensor":
        return sum(j.pow(2).sum(-1) for j in f)
