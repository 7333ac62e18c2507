"""Triplet Attention (Misra, Nalamada, Arasanipalai, Hou: "Rotate to Attend: Convolutional Triplet
Attention Module", WACV 2021).

Three branches, each capturing one pair of the (C, H, W) dimensions. A branch rotates x so that
the dimension it pools over comes first, then

    z = [max_1 x', mean_1 x']            Z-pool over the first dimension: 2 maps
    g = sigmoid(BN(conv_k×k(z)))         conv 2→1, no bias; BN with one channel
    branch(x) = rotate back (x' ⊙ g)

    C–W branch: pool over H;  C–H branch: pool over W;  H–W branch: pool over C (no rotation)
    y = (branch_CW + branch_CH + branch_HW) / 3

k = ``kernel_size`` = 7; BN momentum 0.01 as in the authors' code. ``spatial=False`` drops the
H–W branch and averages the other two (the authors' ``no_spatial``).

Parameters: 3·(2k² + 2) = 300 for k = 7 (2 branches: 200 without the spatial one).

Departures:
- BN uses running statistics when a training batch gives one value per channel
  (``TolerantBatchNorm2d``; e.g. batch 1 with a 1×1 map), where ``nn.BatchNorm2d`` would raise.
- Initialisation: the authors' ResNet (``MODELS/resnet.py``) gives every conv Kaiming-normal
  (fan-out) weights, the 7×7 gate convs included, and starts the H–W branch's BN weight at 0 (its
  gate begins at 0.5 everywhere), as CBAM's released code does; here the gate convs keep PyTorch's
  default initialisation and every BN weight starts at 1. ``zero_init_spatial=True`` gives the
  released H–W start (needs ``spatial``); runs made before it read as false
  (``attn_zoo.later_options``). The Kaiming conv init is not offered.
"""
import torch
from torch import Tensor, nn

from attn_zoo.attention._batchnorm import TolerantBatchNorm2d
from attn_zoo.registry import register_attention


class ZPoolGate(nn.Module):
    """x ⊙ sigmoid(BN(conv([max_1 x, mean_1 x]))) over the first non-batch dimension."""

    def __init__(self, kernel_size: int):
        super().__init__()
        self.conv = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2, bias=False)
        self.norm = TolerantBatchNorm2d(1, momentum=0.01)

    def forward(self, x: Tensor) -> Tensor:
        pooled = torch.cat([x.amax(dim=1, keepdim=True), x.mean(dim=1, keepdim=True)], dim=1)
        return x * self.norm(self.conv(pooled)).sigmoid()


@register_attention("triplet", "Triplet Attention: Z-pool + 7x7 conv gates over (C,W), (C,H), (H,W)")
class TripletAttention(nn.Module):
    def __init__(self, channels: int, *, kernel_size: int = 7, spatial: bool = True,
                 zero_init_spatial: bool = False):
        super().__init__()
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd and >= 1, got {kernel_size}")
        if zero_init_spatial and not spatial:
            raise ValueError("zero_init_spatial starts the H–W branch's BN weight at 0: it needs spatial=true")
        self.channel_width = ZPoolGate(kernel_size)
        self.channel_height = ZPoolGate(kernel_size)
        self.height_width = ZPoolGate(kernel_size) if spatial else None
        if zero_init_spatial:
            nn.init.zeros_(self.height_width.norm.weight)

    def forward(self, x: Tensor) -> Tensor:
        # swapping two axes is its own inverse, so the same permute rotates back
        outputs = [
            self.channel_width(x.permute(0, 2, 1, 3)).permute(0, 2, 1, 3),  # pool over H: (C, W) gate
            self.channel_height(x.permute(0, 3, 2, 1)).permute(0, 3, 2, 1),  # pool over W: (H, C) gate
        ]
        if self.height_width is not None:
            outputs.append(self.height_width(x))
        return sum(outputs) / len(outputs)
