"""The Triton kernels of ``spatial_sums``: per-(sample, channel) reductions over H×W.

Imported only when a kernel first runs, so triton is needed only then. Each program covers one
sample, BLOCK_C channels and one slice of H×W, and writes its partial result at [slice, sample, c].
"""
import triton
import triton.language as tl


@triton.jit
def _program_slice(hw_size, channels, hw_per_split, BLOCK_C: tl.constexpr):
    """(sample, channels c, their mask, first and end position of this program's H×W slice, output offsets)."""
    sample, channel_block, split = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    sample = sample.to(tl.int64)  # sample × its stride can pass 2**31 in a large batch
    c = channel_block * BLOCK_C + tl.arange(0, BLOCK_C)
    start = split * hw_per_split
    stop = tl.minimum(start + hw_per_split, hw_size)
    at = split * tl.num_programs(0) * channels + sample * channels + c
    return sample, c, c < channels, start, stop, at


@triton.jit
def moments(y, means, squares, hw_size, channels, hw_per_split, s_n, s_c, s_hw,
            BLOCK_HW: tl.constexpr, BLOCK_C: tl.constexpr):
    """Each slice's mean and sum of squared deviations, tiles combined by Chan et al.'s rule."""
    sample, c, c_ok, start, stop, at = _program_slice(hw_size, channels, hw_per_split, BLOCK_C)
    count = tl.zeros((BLOCK_C,), tl.float32)
    mean = tl.zeros((BLOCK_C,), tl.float32)
    m2 = tl.zeros((BLOCK_C,), tl.float32)
    for first in range(start, stop, BLOCK_HW):
        hw = first + tl.arange(0, BLOCK_HW)
        hw_ok = hw < stop
        ok = hw_ok[:, None] & c_ok[None, :]
        tile = tl.load(y + sample * s_n + hw[:, None] * s_hw + c[None, :] * s_c, mask=ok, other=0.0).to(tl.float32)
        tile_count = tl.sum(hw_ok.to(tl.float32), axis=0)
        tile_mean = tl.sum(tile, axis=0) / tile_count
        deviation = tl.where(ok, tile - tile_mean[None, :], 0.0)
        tile_m2 = tl.sum(deviation * deviation, axis=0)
        total = count + tile_count
        delta = tile_mean - mean
        mean = mean + delta * (tile_count / total)
        m2 = m2 + tile_m2 + delta * delta * (count * tile_count / total)
        count = total
    tl.store(means + at, mean, mask=c_ok)
    tl.store(squares + at, m2, mask=c_ok)


@triton.jit
def relu_grad_sums(grad, out, y, dz_sums, dzy_sums, hw_size, channels, hw_per_split,
                   g_n, g_c, g_hw, o_n, o_c, o_hw, y_n, y_c, y_hw,
                   BLOCK_HW: tl.constexpr, BLOCK_C: tl.constexpr):
    """Each slice's Σ dz and Σ dz·y, dz = grad where out > 0."""
    sample, c, c_ok, start, stop, at = _program_slice(hw_size, channels, hw_per_split, BLOCK_C)
    dz_total = tl.zeros((BLOCK_C,), tl.float32)
    dzy_total = tl.zeros((BLOCK_C,), tl.float32)
    for first in range(start, stop, BLOCK_HW):
        hw = first + tl.arange(0, BLOCK_HW)
        ok = (hw < stop)[:, None] & c_ok[None, :]
        g = tl.load(grad + sample * g_n + hw[:, None] * g_hw + c[None, :] * g_c, mask=ok, other=0.0).to(tl.float32)
        o = tl.load(out + sample * o_n + hw[:, None] * o_hw + c[None, :] * o_c, mask=ok, other=0.0)
        v = tl.load(y + sample * y_n + hw[:, None] * y_hw + c[None, :] * y_c, mask=ok, other=0.0).to(tl.float32)
        dz = tl.where(o > 0, g, 0.0)
        dz_total += tl.sum(dz, axis=0)
        dzy_total += tl.sum(dz * v, axis=0)
    tl.store(dz_sums + at, dz_total, mask=c_ok)
    tl.store(dzy_sums + at, dzy_total, mask=c_ok)
