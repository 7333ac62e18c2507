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

Departures from the authors' released networks, which fix k per network rather than by the
adaptive rule: ECA-ResNet-50 uses k = 3, 5, 5, 7 by stage (adaptive: 5, 5, 5, 7, as stage 1's
C = 256 gives 5); ECA-MobileNetV2 uses k = 1 up to 96 channels and 3 at 160 and 320 (adaptive: 3
up to 96, 5 at 160 and 320), so its small layers have no cross-channel interaction. Set
``attention.kernel_size`` to fix one k for every layer.
"""
from __future__ import annotations

from attn_zoo.attention.se import SqueezeExcite
from attn_zoo.registry import register_attention


@register_attention("eca", "Efficient Channel Attention: avg pool, 1-D conv over channels (adaptive k), sigmoid")
class EfficientChannelAttention(SqueezeExcite):
    def __init__(self, channels: int, *, kernel_size: int | None = None):
        super().__init__(channels, squeeze="avg", excitation="conv1d", gate="sigmoid", kernel_size=kernel_size)
