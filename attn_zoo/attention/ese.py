"""Effective Squeeze-Excitation, eSE (Lee, Park: "CenterMask: Real-Time Anchor-Free Instance
Segmentation", CVPR 2020, §2, its VoVNetV2 backbone).

    s = mean_{h,w} x                      (N, C, 1, 1)
    e = hardsigmoid(W · s + b)            one FC C→C, no reduction; hardsigmoid(z) = relu6(z + 3)/6
    y = x ⊙ e

Keeping C channels avoids the information loss of SE's reduction. Parameters: C² + C.
VoVNetV2's identity mapping around the OSA module belongs to the block, not to eSE.
"""
from __future__ import annotations

from attn_zoo.attention.se import SqueezeExcite
from attn_zoo.registry import register_attention


@register_attention("ese", "Effective SE (CenterMask): avg pool, one FC C→C, hard sigmoid")
class EffectiveSqueezeExcite(SqueezeExcite):
    def __init__(self, channels: int):
        super().__init__(channels, squeeze="avg", excitation="linear", gate="hardsigmoid", mlp_bias=True)
