"""Empirical NTK by NTK–vector products: Θ v = J(x) (J(x')ᵀ v), a vjp followed by a jvp.

Novak, Sohl-Dickstein & Schoenholz 2022 ("Fast finite width neural tangent kernel", §3.2,
neural-tangents' ``NtkImplementation.NTK_VECTOR_PRODUCTS``): the kernel is never formed
from Jacobians; each column Θ e_{b r} of a block is one reverse-mode product
u = J(x'_b)ᵀ e_r (a parameter-shaped tangent) and one forward-mode product J(x) u. The
b2·O columns of a block are vmapped in chunks, so at most ``chunk`` tangents (P entries
each) are held at once: memory O(chunk·P + b1·b2·O²); time b2·O vjp's and jvp's per
block, i.e. O(N²O²·FP) for the whole kernel against contraction's O(N·O·FP + N²O²P) —
slower when the Jacobian fits in memory, but bounded in memory and free of any structural
assumption on the model.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from .ntk_method import NTKMethod, functional_parts

if TYPE_CHECKING:  # pragma: no cover
    import torch


class NTKVectorProducts(NTKMethod):
    """Θ column by column as jvp(f(x), vjp(f(x'), e)); ``chunk`` columns at a time."""

    name: ClassVar[str] = "ntk_vp"
    cache_features: ClassVar[bool] = True  # the features are the inputs themselves

    def __init__(self, model: Any, out_dim: int, chunk: int = 64):
        super().__init__(model, out_dim)
        self.params, self.constant = functional_parts(model)
        self.chunk = max(1, int(chunk))

    def block_cost(self, b1: int, b2: int) -> int:
        return min(self.chunk, b2 * self.out_dim) * (2 * self.n_params + b1 * self.out_dim) + b1 * b2 * self.out_dim**2

    def _f(self, x: "torch.Tensor"):
        from torch.func import functional_call

        def f(params: dict) -> "torch.Tensor":
            return functional_call(self.model, {**params, **self.constant}, (x,)).reshape(x.shape[0], self.out_dim)

        return f

    def features(self, x: "torch.Tensor") -> "torch.Tensor":
        return x

    def block(self, x1: "torch.Tensor", x2: "torch.Tensor", outdiag: bool) -> "torch.Tensor":
        import torch
        from torch.func import jvp, vjp, vmap

        f1, f2 = self._f(x1), self._f(x2)
        b1, b2, o = int(x1.shape[0]), int(x2.shape[0]), self.out_dim
        _, pullback = vjp(f2, self.params)

        def column(cotangent: "torch.Tensor") -> "torch.Tensor":
            (tangent,) = pullback(cotangent)  # J(x')ᵀ e: parameter-shaped
            return jvp(f1, (self.params,), (tangent,))[1]  # J(x) J(x')ᵀ e: (b1, O)

        dtype = next(iter(self.params.values())).dtype
        basis = torch.eye(b2 * o, dtype=dtype, device=x1.device).reshape(b2 * o, b2, o)
        columns = vmap(column, chunk_size=self.chunk)(basis)  # [(b, r), a, o] = Θ(x_a, x'_b)_{or}
        full = columns.reshape(b2, o, b1, o).permute(2, 0, 3, 1)
        return full.diagonal(dim1=2, dim2=3).contiguous() if outdiag else full.contiguous()

    def diagonal(self, x: "torch.Tensor") -> "torch.Tensor":
        # Θ(x_n, x_n) needs the products of example n with itself only: blocks of one example
        import torch

        return torch.stack([self.block(x[n : n + 1], x[n : n + 1], True)[0, 0] for n in range(int(x.shape[0]))])
