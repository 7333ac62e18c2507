"""Model cost: parameter counts and forward FLOPs.

FLOPs come from ``torch.utils.flop_counter.FlopCounterMode``, which counts 2 FLOPs per
multiply-accumulate (so FLOPs = 2 × MACs) and only matrix products and convolutions: pooling,
gates, elementwise rescales and BatchNorm are not counted by it. Other counters differ (fvcore
counts 1 per multiply-add and also BatchNorm and adaptive pooling; ptflops and thop count pooling
and BatchNorm modules): compare FLOPs only from one counter, and speed by measuring it.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from attn_zoo.backbones.placement import attention_modules

FLOP_CONVENTION = (
    "torch.utils.flop_counter: FLOPs = 2 x MACs, forward pass, one image; counts convolutions and "
    "matrix products only (pooling, gates, rescale and BatchNorm are not counted)"
)


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_attention_params(model: nn.Module) -> int:
    """Parameters inside submodules named ``attention`` (where backbones put their modules)."""
    return sum(count_params(module) for module in attention_modules(model).values())


def count_flops(model: nn.Module, image_shape: tuple[int, int, int]) -> int:
    """Forward FLOPs for one image of ``image_shape`` (C, H, W), in eval mode."""
    was_training = model.training
    model.eval()
    try:
        parameter = next(model.parameters())
        image = torch.zeros(1, *image_shape, device=parameter.device, dtype=parameter.dtype)
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(image)
    finally:
        model.train(was_training)
    return counter.get_total_flops()
