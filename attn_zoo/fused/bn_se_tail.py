"""The tail of a post-activation residual block with channel attention, in two passes each way.

Replaces ``relu(gate(BN(y)) ⊙ BN(y) + identity)`` (the block's last BatchNorm, a squeeze-excite
module at placement ``standard``, the residual addition and the final ReLU) by the same function,
computed in the passes DESIGN.md's "Performance" section counts:

    forward   per-(n, c) mean m_nc and variance v_nc of y          one reduction pass over y
              BN: mean_c = mean_n m_nc, var_c = mean_n v_nc + var_n m_nc (equal counts per n)
              a_c = w_c / sqrt(var_c + eps), b_c = bias_c - a_c·mean_c
              squeeze s_nc = mean_hw(a_c·y + b_c) = a_c·m_nc + b_c    (N, C) math
              g_nc = sigmoid(excite(s_nc))                             (N, C) math
              out = relu(y·(a_c·g_nc) + b_c·g_nc + identity)         one elementwise pass
    backward  dz = dout·[out > 0] (also the identity's gradient)
              per-(n, c) sums of dz·y and dz                          one reduction pass
              (N, C) backward through the excitation and the BN statistics gives dm_nc, dv_nc
              dy = dz·(a_c·g_nc) + y·α_nc + β_nc with α = 2·dv/HW, β = dm/HW − α·m    one pass

The (N, C) part is ordinary autograd on tiny tensors (built inside the forward, differentiated in
the backward with ``torch.autograd.grad``), so any excitation module works unchanged and its
parameters get their gradients. Statistics are float32 whatever y's dtype (bf16 autocast).
Running statistics are updated exactly as ``nn.BatchNorm2d`` does (momentum or cumulative average
when momentum is None, unbiased variance, ``num_batches_tracked``); in eval mode BN is the fixed
affine map of the running statistics and the squeeze is a_c·mean_hw(y) + b_c.

Two routes, the same arithmetic: eagerly, the ``torch.autograd.Function`` above (its backward is
written out, so autograd makes no extra passes); under ``torch.compile`` or without gradients, the
same ops as plain autograd, which dynamo traces whole and inductor fuses (the Function's nested
autograd would break its graph).

``kernels="triton"`` (``backbone.fused_tail=triton``) computes the two spatial reductions, forward
and backward, with the Triton kernels of ``spatial_sums`` and leaves the rest to plain ops, with the
backward of the final scale-shift-add-ReLU written out (``_ScaleShiftAddReLU``); no nested autograd, so
the same code runs eagerly and under torch.compile, whose Inductor fuses the pointwise passes around
the two kernels. In eval mode (running statistics) it is the plain-ops route.

The op reuses the block's own ``nn.BatchNorm2d`` and attention modules, so state_dict keys and
checkpoints are the same with and without it. Supported attention: ``se`` with squeeze=avg,
axis=hw, excitation mlp or conv1d and gate sigmoid (SE's and ECA's defaults; ``eca`` is one).
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from attn_zoo.attention._excite import ChannelConvExcitation, MLPExcitation
from attn_zoo.attention._squeeze import Pool
from attn_zoo.attention.se import SqueezeExcite
from attn_zoo.fused.spatial_sums import relu_grad_sums, spatial_moments, statistics_dtype

KERNELS = ("torch", "triton")
SUPPORTED = "attention se (squeeze=avg, axis=hw, excitation=mlp|conv1d, gate=sigmoid) or eca at placement 'standard'"

# (mean_nc, var_nc or None) -> (scale_nc, shift_nc, mean_c, var_c), all float32
Coefficients = Callable[[Tensor, Tensor | None], tuple[Tensor, Tensor, Tensor, Tensor]]


def fuses(attention: nn.Module) -> bool:
    """Whether ``attention`` is a squeeze-excite this op computes exactly."""
    return (
        isinstance(attention, SqueezeExcite)
        and isinstance(attention.squeeze, Pool) and attention.squeeze.kind == "avg" and attention.squeeze.dims == (2, 3)
        and isinstance(attention.excite, (MLPExcitation, ChannelConvExcitation))
        and isinstance(attention.gate, nn.Sigmoid)
    )


def tail_kernels(fused_tail: bool | str) -> str | None:
    """The ``kernels`` of a ``fused_tail`` option: false → None (plain tail), true → "torch", "triton"."""
    if fused_tail is False or fused_tail is None:
        return None
    if fused_tail is True:
        return "torch"
    if fused_tail in KERNELS:
        return fused_tail
    raise ValueError(f"fused_tail must be false, true or triton; got {fused_tail!r}")


def check_fused_tail(attention: nn.Module, placement: str | None, name: str) -> None:
    """Fail in one line when ``fused_tail=true`` cannot compute this block's tail."""
    if placement != "standard" or not fuses(attention):
        raise ValueError(
            f"fused_tail supports {SUPPORTED}; got attention '{name}' at placement '{placement}' "
            "(set backbone.fused_tail=false for it)"
        )


def _per_sample_moments(y: Tensor, batch_stats: bool) -> tuple[Tensor, Tensor | None]:
    """Per-(n, c) mean and (if BN needs it) population variance over h, w, in float32: one pass."""
    y32 = y.to(statistics_dtype(y))
    if not batch_stats:
        return y32.mean((2, 3)), None
    var_nc, mean_nc = torch.var_mean(y32, dim=(2, 3), correction=0)
    return mean_nc, var_nc


def _coefficients(bn: nn.BatchNorm2d, attention: SqueezeExcite, batch_stats: bool) -> Coefficients:
    def coefficients(mean_nc: Tensor, var_nc: Tensor | None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        if batch_stats:
            mean_c = mean_nc.mean(0)
            var_c = var_nc.mean(0) + (mean_nc - mean_c).square().mean(0)  # law of total variance
        else:
            mean_c, var_c = bn.running_mean.to(mean_nc.dtype), bn.running_var.to(mean_nc.dtype)
        scale_c = torch.rsqrt(var_c + bn.eps)
        if bn.weight is not None:
            scale_c = bn.weight.to(mean_nc.dtype) * scale_c
        shift_c = -mean_c * scale_c
        if bn.bias is not None:
            shift_c = bn.bias.to(mean_nc.dtype) + shift_c
        squeezed = mean_nc * scale_c + shift_c
        logits = attention.excite(squeezed[:, :, None, None])
        gate = attention.gate(logits).flatten(1).to(mean_nc.dtype)
        return scale_c * gate, shift_c * gate, mean_c, var_c

    return coefficients


def _as_map(per_channel: Tensor, dtype: torch.dtype) -> Tensor:
    return per_channel[:, :, None, None].to(dtype)


def _scale_shift_add_relu(y: Tensor, scale: Tensor, shift: Tensor, identity: Tensor) -> Tensor:
    out = torch.addcmul(_as_map(shift, y.dtype), y, _as_map(scale, y.dtype))
    return torch.relu(out + identity)


class _FusedTail(torch.autograd.Function):
    @staticmethod
    def forward(ctx, y: Tensor, identity: Tensor, coefficients: Coefficients, batch_stats: bool, *params: Tensor):
        mean_nc, var_nc = _per_sample_moments(y, batch_stats)
        with torch.enable_grad():
            leaves = [moment.requires_grad_() for moment in (mean_nc, var_nc) if moment is not None]
            scale, shift, mean_c, var_c = coefficients(mean_nc, var_nc)
        out = _scale_shift_add_relu(y, scale.detach(), shift.detach(), identity)
        ctx.save_for_backward(y, out)
        ctx.graph = (scale, shift, leaves, params)
        mean_c, var_c = mean_c.detach(), var_c.detach()
        ctx.mark_non_differentiable(mean_c, var_c)
        return out, mean_c, var_c

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: Tensor, _mean: Tensor, _var: Tensor):
        y, out = ctx.saved_tensors
        scale, shift, leaves, params = ctx.graph
        del ctx.graph
        dz = torch.where(out > 0, grad_out, torch.zeros((), dtype=grad_out.dtype, device=grad_out.device))
        precise = statistics_dtype(y)
        dz32, y32 = dz.to(precise), y.to(precise)
        grad_scale, grad_shift = (dz32 * y32).sum((2, 3)), dz32.sum((2, 3))
        wanted = [*leaves, *params]
        grads = torch.autograd.grad((scale, shift), wanted, (grad_scale, grad_shift), allow_unused=True)
        grad_mean = grads[0]
        grad_var = grads[1] if len(leaves) == 2 else None
        count = y.shape[2] * y.shape[3]
        alpha = 2 * grad_var / count if grad_var is not None else torch.zeros_like(grad_mean)
        # centred on the per-(n, c) mean, as BN's own backward, so no large terms cancel
        centred = y32 - _as_map(leaves[0].detach(), precise)
        grad_y = torch.addcmul(_as_map(grad_mean / count, precise), centred, _as_map(alpha, precise))
        grad_y = grad_y.addcmul_(dz32, _as_map(scale.detach(), precise)).to(y.dtype)
        return (grad_y, dz, None, None, *grads[len(leaves):])


class _ScaleShiftAddReLU(torch.autograd.Function):
    """``relu(y·scale + shift + identity)`` (scale, shift per (n, c)); its backward reduces with one
    ``relu_grad_sums`` kernel and leaves the pointwise gradients to plain ops (fused when compiled)."""

    @staticmethod
    def forward(ctx, y: Tensor, scale: Tensor, shift: Tensor, identity: Tensor) -> Tensor:
        out = _scale_shift_add_relu(y, scale, shift, identity)
        ctx.save_for_backward(y, out, scale)
        return out

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        y, out, scale = ctx.saved_tensors
        grad_shift, grad_scale = relu_grad_sums(grad_out, out, y)
        dz = torch.where(out > 0, grad_out, torch.zeros((), dtype=grad_out.dtype, device=grad_out.device))
        return dz * _as_map(scale, dz.dtype), grad_scale, grad_shift, dz


def _momentum(bn: nn.BatchNorm2d) -> float:
    """nn.BatchNorm2d's exponential average factor; counts the batch as BN's forward does."""
    factor = bn.momentum if bn.momentum is not None else 0.0
    if bn.training and bn.track_running_stats and bn.num_batches_tracked is not None:
        bn.num_batches_tracked.add_(1)
        factor = 1.0 / float(bn.num_batches_tracked) if bn.momentum is None else bn.momentum
    return factor


def _update_running_stats(bn: nn.BatchNorm2d, mean_c: Tensor, var_c: Tensor, count: int) -> None:
    factor = _momentum(bn)
    with torch.no_grad():
        unbiased = var_c * (count / (count - 1))
        bn.running_mean.mul_(1 - factor).add_(mean_c.to(bn.running_mean.dtype), alpha=factor)
        bn.running_var.mul_(1 - factor).add_(unbiased.to(bn.running_var.dtype), alpha=factor)


def bn_se_add_relu(
    y: Tensor, identity: Tensor, bn: nn.BatchNorm2d, attention: SqueezeExcite, kernels: str = "torch"
) -> Tensor:
    """``relu(attention(bn(y)) + identity)``, fused; ``bn`` and ``attention`` are the block's own modules;
    ``kernels``: "torch" (torch ops) or "triton" (the spatial reductions as Triton kernels)."""
    if isinstance(bn, nn.SyncBatchNorm):
        raise ValueError("fused_tail computes per-process BatchNorm statistics; use it without sync_batchnorm")
    batch_stats = bn.training or bn.running_mean is None
    updates = bn.training and bn.track_running_stats and bn.running_mean is not None
    count = y.shape[0] * y.shape[2] * y.shape[3]
    if batch_stats and count <= 1:
        raise ValueError(f"Expected more than 1 value per channel when training, got input size {tuple(y.shape)}")
    coefficients = _coefficients(bn, attention, batch_stats)
    params = [p for p in (bn.weight, bn.bias, *attention.parameters()) if p is not None and p.requires_grad]
    needs_grad = torch.is_grad_enabled() and (y.requires_grad or identity.requires_grad or bool(params))
    if kernels == "triton" and batch_stats:
        scale, shift, mean_c, var_c = coefficients(*spatial_moments(y))
        out = _ScaleShiftAddReLU.apply(y, scale, shift, identity)
    elif needs_grad and not torch.compiler.is_compiling():
        out, mean_c, var_c = _FusedTail.apply(y, identity, coefficients, batch_stats, *params)
    else:
        scale, shift, mean_c, var_c = coefficients(*_per_sample_moments(y, batch_stats))
        out = _scale_shift_add_relu(y, scale, shift, identity)
    if updates:
        _update_running_stats(bn, mean_c.detach(), var_c.detach(), count)
    return out
