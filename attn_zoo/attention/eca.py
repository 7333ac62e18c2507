"""Efficient Channel Attention (Wang, Wu, Zhu, Li, Zuo, Hu: "ECA-Net: Efficient Channel Attention
for Deep Convolutional Neural Networks", CVPR 2020).

    s = mean_{h,w} x                      (N, C)
    e = sigmoid(conv1d_k(s))              1-D conv across channels, no bias, zero padding
    y = x ⊙ e

k is the ``kernel_size`` option if given, else adaptive: k = |log2(C)/γ + b/γ|_odd with γ = 2,
b = 1, computed as the paper's code listing does (truncate, then add one if even; see
``_excite.eca_kernel_size``).
The k used is the module's ``kernel_size`` attribute. Parameters: k.

Departure from timm's EcaModule: timm floors the adaptive k at 3, the paper's code does not
(C ≤ 7 gives k = 1 here). They agree for C ≥ 8.
"""
from __future__ import annotations

from attn_zoo.attention.se import SqueezeExcite
from attn_zoo.registry import register_attention


@register_attention("eca", "Efficient Channel Attention: avg pool, 1-D conv over channels (adaptive k), sigmoid")
class EfficientChannelAttention(SqueezeExcite):
    def __init__(self, channels: int, *, kernel_size: int | None = None):
        super().__init__(channels, squeeze="avg", excitation="conv1d", gate="sigmoid", kernel_size=kernel_size)
