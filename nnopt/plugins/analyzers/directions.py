"""Directions in weight space for loss-surface plots: random filter-normalized ones (Li, Xu,
Taylor, Studer & Goldstein 2018, "Visualizing the loss landscape of neural nets", NeurIPS)
and the top principal directions of a training trajectory (the same paper, §7).

A direction is a dict ``{name: tensor}`` over the model's trainable parameters, shaped as
they are; buffers (BatchNorm's running statistics) are never moved along a direction.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from nnopt.core.errors import StageError

if TYPE_CHECKING:  # pragma: no cover
    import torch

Ignore = Literal["biasbn", "none"]
Direction = dict  # name -> tensor


def gaussian_direction(weights: dict[str, "torch.Tensor"], generator: "torch.Generator") -> dict[str, "torch.Tensor"]:
    """A direction with i.i.d. N(0, 1) entries (drawn on the CPU from ``generator``, in the
    order of ``weights``), shaped and typed as ``weights``. Gaussian, never uniform on [0, 1):
    a uniform direction has a non-zero mean, i.e. it mostly scales every weight up."""
    import torch

    return {name: torch.randn(w.shape, generator=generator, dtype=torch.float64).to(dtype=w.dtype, device=w.device)
            for name, w in weights.items()}


def filter_normalize(direction: dict[str, "torch.Tensor"], weights: dict[str, "torch.Tensor"],
                     ignore: Ignore = "biasbn") -> dict[str, "torch.Tensor"]:
    """Li et al.'s filter normalization: every filter of the direction rescaled to the norm of
    the matching filter of the weights,

        d_{i,j} ← d_{i,j} / ‖d_{i,j}‖ · ‖θ_{i,j}‖,

    where filter j of a tensor i of two or more dimensions is its j-th slice along dimension 0:
    an output row of a Linear weight (one neuron's incoming weights), an output channel of a
    Conv kernel. So the direction's scale matches the weights' filter by filter, and a step
    of 1 along it moves every filter by its own norm, whatever the scale invariances of
    normalized layers make that norm. One-dimensional tensors (biases, normalization layers'
    scales and shifts) are zeroed with ``ignore: biasbn`` (the paper's setting); with ``ignore:
    none`` each of their entries is treated as a one-weight filter, d_j ← sign(d_j)·|θ_j|. A
    filter of zero weights (pruned) gets a zero direction.
    """
    import torch

    out = {}
    for name, d in direction.items():
        w = weights[name].to(d.dtype)
        if d.ndim <= 1:
            if ignore == "biasbn":
                out[name] = torch.zeros_like(d)
            else:
                out[name] = torch.sign(d) * w.abs()
            continue
        d_rows, w_rows = d.reshape(d.shape[0], -1), w.reshape(w.shape[0], -1)
        d_norm = d_rows.norm(dim=1, keepdim=True)
        scale = torch.where(d_norm > 0, w_rows.norm(dim=1, keepdim=True) / d_norm.clamp_min(torch.finfo(d.dtype).tiny),
                            torch.zeros_like(d_norm))
        out[name] = (d_rows * scale).reshape(d.shape)
    return out


def random_directions(weights: dict[str, "torch.Tensor"], generator: "torch.Generator", ignore: Ignore = "biasbn",
                      normalize: bool = True) -> tuple[dict[str, "torch.Tensor"], dict[str, "torch.Tensor"]]:
    """Two independent Gaussian directions, each filter-normalized to ``weights``
    (``normalize=False``: raw Gaussians, the 1-D tensors still zeroed under ``ignore: biasbn``)."""
    import torch

    pair = []
    for _ in range(2):
        d = gaussian_direction(weights, generator)
        if normalize:
            d = filter_normalize(d, weights, ignore)
        elif ignore == "biasbn":
            d = {k: (torch.zeros_like(v) if v.ndim <= 1 else v) for k, v in d.items()}
        pair.append(d)
    return pair[0], pair[1]


def flatten(tensors: dict[str, "torch.Tensor"], names: list[str]) -> "torch.Tensor":
    """The named tensors concatenated into one float64 vector (in ``names`` order)."""
    import torch

    return torch.cat([tensors[n].detach().reshape(-1).double() for n in names])


def unflatten(vector: "torch.Tensor", like: dict[str, "torch.Tensor"], names: list[str]) -> dict[str, "torch.Tensor"]:
    """The inverse of ``flatten``: ``vector`` split into tensors shaped and typed as ``like``."""
    out, at = {}, 0
    for n in names:
        t = like[n]
        out[n] = vector[at : at + t.numel()].reshape(t.shape).to(dtype=t.dtype, device=t.device)
        at += t.numel()
    return out


def pca_directions(trajectory: list[dict[str, "torch.Tensor"]], origin: dict[str, "torch.Tensor"],
                   ignore: Ignore = "biasbn") -> dict:
    """The top two principal directions of a trajectory around ``origin`` (Li et al. §7).

    With M the matrix whose rows are θ_i − θ_origin (one per trajectory point, flattened over
    the parameters; 1-D tensors left out under ``ignore: biasbn``), centred by column, the
    directions are the top two right singular vectors of M (unit norm, orthogonal), and
    ``explained`` the fraction of the variance of the rows each captures, σ_k² / Σ σ². The
    trajectory's coordinates in the plane are the projections ((θ_i − θ_origin)·d_1,
    (θ_i − θ_origin)·d_2). Computed in float64; ``torch.linalg.svd`` of the k × P matrix.
    """
    import torch

    names = [n for n, t in origin.items() if not (ignore == "biasbn" and t.ndim <= 1)]
    if not names:
        raise StageError("surface: no parameter of two or more dimensions to take directions in (use ignore: none)")
    o = flatten(origin, names)
    rows = torch.stack([flatten(t, names) - o for t in trajectory])
    centred = rows - rows.mean(dim=0, keepdim=True)
    _, s, vh = torch.linalg.svd(centred, full_matrices=False)
    total = float((s ** 2).sum())
    if len(s) < 2 or total == 0.0 or float(s[1]) <= 1e-12 * float(s[0]):
        raise StageError("surface: the trajectory spans fewer than two directions (give at least three distinct "
                         "checkpoints in `trajectory`)")
    d1, d2 = vh[0], vh[1]
    # a deterministic sign: the trajectory's first point has a non-negative coordinate
    coords = rows @ torch.stack([d1, d2], dim=1)
    signs = torch.where(coords[0] < 0, -1.0, 1.0).to(torch.float64)
    d1, d2, coords = d1 * signs[0], d2 * signs[1], coords * signs
    zeros = {n: torch.zeros_like(t) for n, t in origin.items() if n not in names}
    return {
        "directions": ({**unflatten(d1, origin, names), **zeros}, {**unflatten(d2, origin, names), **zeros}),
        "explained": [float(s[0] ** 2) / total, float(s[1] ** 2) / total],
        "coords": coords.tolist(),
    }
