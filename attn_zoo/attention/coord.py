"""Coordinate Attention (Hou, Zhou, Feng: "Coordinate Attention for Efficient Mobile Network
Design", CVPR 2021).

    z_h = mean_w x  (N, C, H),   z_w = mean_h x  (N, C, W)      pool along each axis
    f = hswish(BN(W_1 · [z_h, z_w]))                           shared 1×1 conv C→m over H+W positions
    f_h, f_w = split(f, [H, W])
    a_h = sigmoid(W_h · f_h),  a_w = sigmoid(W_w · f_w)        two 1×1 convs m→C
    y = x ⊙ a_h (broadcast over w) ⊙ a_w (broadcast over h)

m = max(C // r, ``min_width``) with r = 32 and floor 8 as in the authors' code. Convs have biases,
as in the authors' code.

Parameters: (C·m + m) + 2m + 2(m·C + C) = 3Cm + 3m + 2C.

Departures from the authors' released network (MobileNetV2, ``mbv2_ca.py``), none in the module itself:
- There CA sits after the depthwise 3×3 conv unit (conv, BN, ReLU6), on the expanded width
  (``backbone=mobilenet_v2 backbone.placement=3x3``); the default ``standard`` placement gates the
  block's narrow output, which changes C, hence m and the parameter count.
- Their first block (expansion 1, Table 2's first bottleneck row) has no CA; here every block gets
  one, the first on its 32 channels at 112×112 (+856 parameters with ``placement=3x3``): add
  ``backbone.stages=[2,3,4,5,6,7]`` to leave it out.
- Their network re-initialises CA's convs as N(0, 2/(k²·C_out)) with zero biases; here they keep
  PyTorch's default initialisation.
(BN sees N·(H + W) ≥ 2 values per channel, so batch 1 and 1×1 maps are fine.)
"""
import torch
from torch import Tensor, nn

from attn_zoo.registry import register_attention


@register_attention("coord", "Coordinate Attention: pool along H and W, shared conv, two sigmoid gates")
class CoordinateAttention(nn.Module):
    def __init__(self, channels: int, *, reduction: int = 32, min_width: int = 8):
        super().__init__()
        if reduction < 1 or min_width < 1:
            raise ValueError(f"reduction and min_width must be >= 1, got {reduction}, {min_width}")
        hidden = max(channels // reduction, min_width)
        self.reduce = nn.Conv2d(channels, hidden, 1)
        self.reduce_norm = nn.BatchNorm2d(hidden)
        self.act = nn.Hardswish(inplace=True)
        self.expand_h = nn.Conv2d(hidden, channels, 1)
        self.expand_w = nn.Conv2d(hidden, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        height, width = x.shape[-2:]
        pooled_h = x.mean(dim=3, keepdim=True)  # (N, C, H, 1)
        pooled_w = x.mean(dim=2, keepdim=True).transpose(2, 3)  # (N, C, W, 1)
        features = self.act(self.reduce_norm(self.reduce(torch.cat([pooled_h, pooled_w], dim=2))))
        features_h, features_w = features.split([height, width], dim=2)
        gate_h = self.expand_h(features_h).sigmoid()
        gate_w = self.expand_w(features_w.transpose(2, 3)).sigmoid()
        return x * gate_h * gate_w
