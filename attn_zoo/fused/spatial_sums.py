"""Per-(sample, channel) sums over H×W of a block's activations, as Triton kernels in custom ops.

The fused tail (``bn_se_tail``) needs two reductions over the spatial axes of a full activation:

    forward   mean_nc = mean_hw y,   var_nc = mean_hw (y − mean_nc)²             (BN statistics + squeeze)
    backward  Σ_hw dz,   Σ_hw dz·y,   dz = grad_out·[out > 0]                     (gate, BN and shift gradients)

In channels_last memory (N, H, W, C) such a reduction runs across the strided axis. On an H200 the
fused tail compiled by Inductor alone was 13 % slower than the plain SE block (BENCHMARKS.md); these
reductions are the suspected cause, and these kernels (``_spatial_kernels``) are the test of it. They
read tiles of BLOCK_HW positions × BLOCK_C channels, contiguous along C, accumulate in float32, and
combine the tiles' means and squared deviations by Chan et al.'s pairwise rule (no E[y²] − E[y]²
cancellation). Each program covers one sample, BLOCK_C channels and a slice of H×W; the slices'
partial results are combined by a few (N, C)-sized torch ops, so results do not depend on the order
of atomics.

``spatial_moments`` and ``relu_grad_sums`` are ``torch.library`` custom ops: torch.compile keeps them
as opaque calls and fuses the pointwise work around them. On a CUDA tensor they launch the Triton
kernels; on a CPU tensor they run the same kernels in Triton's interpreter when ``TRITON_INTERPRET=1``
was set before triton was first imported (``tests/conftest.py`` does so on machines without a GPU),
and otherwise plain torch ops with the same result. float64 tensors always take the torch ops.
"""
from __future__ import annotations

import os

import torch
from torch import Tensor

BLOCK_HW, BLOCK_C = 32, 64
TARGET_PROGRAMS = 1024  # enough programs to fill a GPU's multiprocessors several times over


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def uses_kernels(tensor: Tensor) -> bool:
    """The kernels take float32/bf16/fp16 on a GPU (or in the interpreter); float64 keeps torch ops."""
    return (tensor.is_cuda or _interpreting()) and tensor.dtype != torch.float64


def statistics_dtype(y: Tensor) -> torch.dtype:
    """float32 for bf16/fp16/fp32 activations, float64 for float64 ones."""
    return torch.promote_types(y.dtype, torch.float32)


def _kernels():
    """The Triton kernels' module, imported on first use (triton is needed only then); whether they
    are compiled or interpreted is fixed when triton is first imported."""
    from attn_zoo.fused import _spatial_kernels

    return _spatial_kernels


def _spatial_strides(t: Tensor) -> tuple[int, int, int]:
    """(sample, channel, position) strides of an (N, C, H, W) tensor laid out by ``_layout``."""
    return t.stride(0), t.stride(1), t.stride(3)


def _layout(t: Tensor) -> Tensor:
    """``t`` itself when H and W flatten to one strided axis (contiguous or channels_last), else a copy."""
    if t.shape[2] > 1 and t.stride(2) != t.shape[3] * t.stride(3):
        return t.contiguous(memory_format=torch.channels_last)
    return t


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _grid(samples: int, channels: int, hw_size: int) -> tuple[tuple[int, int, int], int]:
    """Programs (sample, channel block, H×W slice), and the positions per slice (a multiple of BLOCK_HW)."""
    channel_blocks = _cdiv(channels, BLOCK_C)
    splits = max(1, min(_cdiv(hw_size, BLOCK_HW), _cdiv(TARGET_PROGRAMS, samples * channel_blocks)))
    hw_per_split = _cdiv(_cdiv(hw_size, splits), BLOCK_HW) * BLOCK_HW
    return (samples, channel_blocks, _cdiv(hw_size, hw_per_split)), hw_per_split


@torch.library.custom_op("attn_zoo::spatial_moments", mutates_args=())
def spatial_moments(y: Tensor) -> tuple[Tensor, Tensor]:
    """(mean, population variance) over H×W for every (n, c) of ``y`` (N, C, H, W), in float32
    (float64 for float64 ``y``)."""
    if not uses_kernels(y):
        var, mean = torch.var_mean(y.to(statistics_dtype(y)), dim=(2, 3), correction=0)
        return mean, var
    y = _layout(y)
    samples, channels, height, width = y.shape
    hw_size = height * width
    grid, hw_per_split = _grid(samples, channels, hw_size)
    splits = grid[2]
    means = torch.empty(splits, samples, channels, device=y.device, dtype=torch.float32)
    squares = torch.empty_like(means)
    _kernels().moments[grid](
        y, means, squares, hw_size, channels, hw_per_split, *_spatial_strides(y), BLOCK_HW=BLOCK_HW, BLOCK_C=BLOCK_C,
    )
    return _combine(means, squares, hw_per_split, hw_size)


def _combine(means: Tensor, squares: Tensor, hw_per_split: int, hw_size: int) -> tuple[Tensor, Tensor]:
    """Mean and variance over all splits from each split's mean and sum of squared deviations; every
    split holds ``hw_per_split`` positions but the last (counts stay Python numbers: no host-device copy)."""
    last = hw_size - (means.shape[0] - 1) * hw_per_split
    mean = (means[:-1].sum(0) * hw_per_split + means[-1] * last) / hw_size
    spread = (means[:-1] - mean).square().sum(0) * hw_per_split + (means[-1] - mean).square() * last
    return mean, (squares.sum(0) + spread) / hw_size


@spatial_moments.register_fake
def _(y: Tensor) -> tuple[Tensor, Tensor]:
    shape = (y.shape[0], y.shape[1])
    return y.new_empty(shape, dtype=statistics_dtype(y)), y.new_empty(shape, dtype=statistics_dtype(y))


def _moments_setup(ctx, inputs, output) -> None:
    ctx.save_for_backward(inputs[0], output[0])


def _moments_backward(ctx, grad_mean: Tensor | None, grad_var: Tensor | None) -> Tensor:
    y, mean = ctx.saved_tensors
    count = y.shape[2] * y.shape[3]
    grad = torch.zeros((), dtype=mean.dtype, device=y.device)
    if grad_mean is not None:
        grad = grad + grad_mean[:, :, None, None] / count
    if grad_var is not None:
        grad = grad + (y.to(mean.dtype) - mean[:, :, None, None]) * (2 * grad_var[:, :, None, None] / count)
    return grad.to(y.dtype).expand_as(y)


spatial_moments.register_autograd(_moments_backward, setup_context=_moments_setup)


@torch.library.custom_op("attn_zoo::relu_grad_sums", mutates_args=())
def relu_grad_sums(grad: Tensor, out: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """(Σ_hw dz, Σ_hw dz·y) per (n, c) in float32 (float64 for float64 ``y``), dz = grad where out > 0, else 0."""
    if not uses_kernels(y):
        precise = statistics_dtype(y)
        dz = torch.where(out > 0, grad, torch.zeros((), dtype=grad.dtype, device=grad.device)).to(precise)
        return dz.sum((2, 3)), (dz * y.to(precise)).sum((2, 3))
    grad, out, y = _layout(grad), _layout(out), _layout(y)
    samples, channels, height, width = y.shape
    hw_size = height * width
    grid, hw_per_split = _grid(samples, channels, hw_size)
    dz_sums = torch.empty(grid[2], samples, channels, device=y.device, dtype=torch.float32)
    dzy_sums = torch.empty_like(dz_sums)
    _kernels().relu_grad_sums[grid](
        grad, out, y, dz_sums, dzy_sums, hw_size, channels, hw_per_split,
        *_spatial_strides(grad), *_spatial_strides(out), *_spatial_strides(y), BLOCK_HW=BLOCK_HW, BLOCK_C=BLOCK_C,
    )
    return dz_sums.sum(0), dzy_sums.sum(0)


@relu_grad_sums.register_fake
def _(grad: Tensor, out: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    shape = (y.shape[0], y.shape[1])
    return y.new_empty(shape, dtype=statistics_dtype(y)), y.new_empty(shape, dtype=statistics_dtype(y))
