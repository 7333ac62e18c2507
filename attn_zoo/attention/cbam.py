"""Convolutional Block Attention Module (Woo, Park, Lee, Kweon: "CBAM: Convolutional Block
Attention Module", ECCV 2018).

    M_c(x) = sigmoid(MLP(avgpool_hw x) + MLP(maxpool_hw x))      channel, (N, C, 1, 1); Eq. 2
    M_s(x) = sigmoid(BN(conv_k×k([mean_c x; max_c x])))         spatial, (N, 1, H, W); Eq. 3
    channel_spatial (default):  x' = x ⊙ M_c(x),  y = x' ⊙ M_s(x')
    spatial_channel:            x' = x ⊙ M_s(x),  y = x' ⊙ M_c(x')
    parallel:                   y = x ⊙ M_c(x) + x ⊙ M_s(x)

The MLP is C→d→C with ReLU, shared by both descriptors, d = C/r (r = 16, rounded, at least 1).
``cbam_channel`` is the channel half alone (a preset of the SE space in se.py, with ``squeeze``
selectable for the paper's Table 1: avg, max, avgmax); ``cbam_spatial`` is the spatial half alone.

Parameters: channel 2Cd + (d + C with ``mlp_bias``); spatial 2k² + 2 (conv without bias + BN's
affine pair) or 2k² + 1 (conv with bias, no BN).

Choices and departures:
- Defaults follow the paper's released code: MLP with biases, BN after the spatial conv (the
  paper's equations omit this BN; its code has it). ResNet-50 + CBAM then has 28,089,624 parameters,
  the paper's 28.09M (Table 4). ``mlp_bias=False`` gives timm's CbamModule (28,073,576).
  ``spatial_bn=False`` gives Eq. 3 as printed, with a bias on the conv in place of BN's shift.
  BN uses PyTorch's default momentum (the released code used 0.01).
- The spatial BN's weight starts at 1, as PyTorch and timm start it. The released code starts it at
  0, so each M_s begins as the constant sigmoid(0) = 0.5 and learns its map from there:
  ``zero_init_spatial=True`` (needs ``spatial_bn``). Runs made before the option read as false
  (``attn_zoo.later_options``). The same initialisation loop gives every conv whose name contains
  "conv" Kaiming-normal (fan-out) weights, the spatial 7×7 conv included; here it keeps PyTorch's
  default (not offered as an option).
- The spatial input concatenates [mean; max] in Eq. 3's order (the released code puts max first;
  only the order of the conv's two input channels differs).
- ``parallel``: the paper (§4.1, Table 3) compares a parallel arrangement without giving its
  formula; here both branches refine the same input and their outputs are summed, the reading in
  which each branch's output is a refined feature map, as in the sequential orders.
- No residual inside the module: the host block adds its own (a module that adds one inside a
  residual block counts it twice).
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from attn_zoo.attention._batchnorm import TolerantBatchNorm2d
from attn_zoo.attention._choice import check_choice
from attn_zoo.attention.se import SqueezeExcite
from attn_zoo.registry import register_attention

ORDERS = ("channel_spatial", "spatial_channel", "parallel")


@register_attention("cbam_channel", "CBAM channel attention alone: avg & max pool, shared MLP, summed, sigmoid")
class CBAMChannelAttention(SqueezeExcite):
    def __init__(self, channels: int, *, reduction: float = 16, squeeze: str = "avgmax", mlp_bias: bool = True):
        super().__init__(
            channels, squeeze=squeeze, excitation="mlp", act="relu", gate="sigmoid",
            reduction=reduction, divisor=1, min_width=1, mlp_bias=mlp_bias,
        )


@register_attention("cbam_spatial", "CBAM spatial attention alone: channel mean & max maps, k×k conv, sigmoid")
class CBAMSpatialAttention(nn.Module):
    def __init__(self, channels: int, *, kernel_size: int = 7, spatial_bn: bool = True,
                 zero_init_spatial: bool = False):
        super().__init__()
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be a positive odd number (keeps H×W), got {kernel_size}")
        if zero_init_spatial and not spatial_bn:
            raise ValueError("zero_init_spatial starts the spatial BN's weight at 0: it needs spatial_bn=true")
        self.conv = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2, bias=not spatial_bn)
        self.bn = TolerantBatchNorm2d(1) if spatial_bn else nn.Identity()
        if zero_init_spatial:
            nn.init.zeros_(self.bn.weight)
        self.gate = nn.Sigmoid()

    def forward(self, x: Tensor) -> Tensor:
        pooled = torch.cat([x.mean(1, keepdim=True), x.amax(1, keepdim=True)], dim=1)
        return x * self.gate(self.bn(self.conv(pooled)))


@register_attention("cbam", "CBAM: channel attention (avg & max, shared MLP) then spatial attention (k×k conv)")
class CBAM(nn.Module):
    def __init__(
        self,
        channels: int,
        *,
        reduction: float = 16,
        kernel_size: int = 7,
        order: str = "channel_spatial",
        mlp_bias: bool = True,
        spatial_bn: bool = True,
        zero_init_spatial: bool = False,
    ):
        super().__init__()
        check_choice("order", order, ORDERS)
        self.order = order
        self.channel = CBAMChannelAttention(channels, reduction=reduction, mlp_bias=mlp_bias)
        self.spatial = CBAMSpatialAttention(channels, kernel_size=kernel_size, spatial_bn=spatial_bn,
                                            zero_init_spatial=zero_init_spatial)

    def forward(self, x: Tensor) -> Tensor:
        if self.order == "channel_spatial":
            return self.spatial(self.channel(x))
        if self.order == "spatial_channel":
            return self.channel(self.spatial(x))
        return self.channel(x) + self.spatial(x)
