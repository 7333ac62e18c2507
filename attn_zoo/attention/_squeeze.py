"""Squeezes: reduce an ``(N, C, H, W)`` map to channel descriptors over the pooled ``axis``.

``axis`` is ``hw`` (global: descriptors ``(N, C, 1, 1)``), ``h`` (pool over H, keep W:
``(N, C, 1, W)``) or ``w`` (pool over W, keep H: ``(N, C, H, 1)``). Every squeeze returns a tuple of
descriptors; only ``avgmax`` returns two (CBAM Eq. 2 excites each one with shared weights).

- ``avg``: mean. ``max``: maximum. ``avgmax``: (mean, maximum).
- ``std``: sqrt(population variance + 1e-5); the epsilon keeps the gradient finite on 1×1 maps.
- ``gem``: generalised mean (Radenović, Tolias, Chum: "Fine-tuning CNN Image Retrieval with No
  Human Annotation", TPAMI 2018), (mean(max(x, 1e-6)^p))^(1/p) with one learnable p, initial 3;
  p = 1 is the average, p → ∞ the maximum. One parameter.
- ``dct``: FcaNet's fixed 2-D DCT basis (Qin, Zhang, Wu, Li: "FcaNet: Frequency Channel Attention
  Networks", ICCV 2021). The map is average-pooled to 7×7 (FcaNet's frequency grid), channels are
  split into up to 16 contiguous groups and group g takes the inner product with the orthonormal
  DCT-II basis function of the g-th lowest frequency (u, v) of the 7×7 grid, ordered by u + v, then u
  (our own "low16" order; FcaNet's best, "top16", ranks single frequencies by the accuracy each
  gave alone). Frequency (0, 0) is 7 × the average, so the first group sees GAP. Global axis
  (``hw``) only.
"""
from __future__ import annotations


import torch
import torch.nn.functional as F
from torch import Tensor, nn

from attn_zoo.attention._choice import check_choice
from attn_zoo.attention._dct import dct_basis

AXES = {"hw": (2, 3), "h": (2,), "w": (3,)}
SQUEEZES = ("avg", "max", "avgmax", "std", "gem", "dct")
DCT_GRID = 7
DCT_FREQUENCIES = 16


class Pool(nn.Module):
    """avg / max / avgmax / std over the pooled dims, as a tuple of descriptors."""

    def __init__(self, kind: str, dims: tuple[int, ...]):
        super().__init__()
        self.kind = kind
        self.dims = dims

    def forward(self, x: Tensor) -> tuple[Tensor, ...]:
        if self.kind == "avg":
            return (x.mean(self.dims, keepdim=True),)
        if self.kind == "max":
            return (x.amax(self.dims, keepdim=True),)
        if self.kind == "avgmax":
            return x.mean(self.dims, keepdim=True), x.amax(self.dims, keepdim=True)
        variance = x.var(self.dims, correction=0, keepdim=True)
        return ((variance + 1e-5).sqrt(),)


class GeneralisedMean(nn.Module):
    def __init__(self, dims: tuple[int, ...], p: float = 3.0, eps: float = 1e-6):
        super().__init__()
        self.dims = dims
        self.eps = eps
        self.p = nn.Parameter(torch.tensor([p]))

    def forward(self, x: Tensor) -> tuple[Tensor, ...]:
        p = self.p.to(x.dtype)
        return (x.clamp(min=self.eps).pow(p).mean(self.dims, keepdim=True).pow(1.0 / p),)


def low_frequencies(grid: int, count: int) -> list[tuple[int, int]]:
    """The ``count`` lowest (u, v) of a ``grid``×``grid`` DCT, ordered by u + v, then u."""
    every = [(u, v) for u in range(grid) for v in range(grid)]
    return sorted(every, key=lambda uv: (uv[0] + uv[1], uv[0]))[:count]


def dct_filters(channels: int, grid: int = DCT_GRID, count: int = DCT_FREQUENCIES) -> Tensor:
    """``(C, grid, grid)``: channel c's DCT basis, its group's frequency (groups as equal as can be)."""
    frequencies = low_frequencies(grid, min(count, channels))
    u, v = torch.tensor([frequencies[channel * len(frequencies) // channels] for channel in range(channels)]).T
    return torch.einsum("ch,cw->chw", dct_basis(u, grid), dct_basis(v, grid)).float()


class DCTSqueeze(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        # fixed, derived from C: not a parameter and not worth storing in checkpoints
        self.register_buffer("filters", dct_filters(channels), persistent=False)

    def forward(self, x: Tensor) -> tuple[Tensor, ...]:
        pooled = F.adaptive_avg_pool2d(x, DCT_GRID)
        return ((pooled * self.filters.to(x.dtype)).sum((2, 3), keepdim=True),)


def make_squeeze(kind: str, channels: int, axis: str = "hw") -> nn.Module:
    check_choice("squeeze", kind, SQUEEZES)
    check_choice("axis", axis, AXES)
    dims = AXES[axis]
    if kind == "gem":
        return GeneralisedMean(dims)
    if kind == "dct":
        if axis != "hw":
            raise ValueError(f"squeeze 'dct' pools globally; axis must be 'hw', got '{axis}'")
        return DCTSqueeze(channels)
    return Pool(kind, dims)
