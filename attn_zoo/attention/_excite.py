"""Excitations: map channel descriptors ``(N, C, a, b)`` to gate logits of the same shape.

- ``mlp``: FC C→d, activation, FC d→C (SE). d = ``reduced_width(C, reduction, divisor, min_width)``.
  Parameters 2Cd + (d + C if bias).
- ``conv1d``: ECA's 1-D convolution across the channel axis, one input and output channel, no bias,
  zero padding. Parameters k.
- ``linear``: one FC C→C, no reduction (CenterMask's eSE). Parameters C² + (C if bias).
- ``none``: the descriptor itself is the logit. No parameters.

FC layers are 1×1 convolutions, which act on the channel axis of any ``(N, C, a, b)`` descriptor
(global or per row/column) and keep a channels_last input channels_last.
"""
from __future__ import annotations

import math

from torch import Tensor, nn

from attn_zoo.attention._choice import check_choice
from attn_zoo.attention._width import reduced_width

EXCITATIONS = ("mlp", "conv1d", "linear", "none")
ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU}


def eca_kernel_size(channels: int, gamma: float = 2, b: float = 1) -> int:
    """ECA's adaptive k = |log2(C)/γ + b/γ|_odd, computed as the paper's own code does.

    The paper's listing (ECA-Net, CVPR 2020, Fig. 3) truncates t = (log2 C + b)/γ to an integer and
    adds one if it is even: C = 64 → 3, 128 → 5, 256 → 5, 512 → 5, 1024 → 5, 2048 → 7, and 1 for
    C ≤ 7. (timm also floors k at 3; the released ECA-ResNet-50 used a fixed 3, 5, 5, 7 per stage.)
    """
    t = int(abs((math.log2(channels) + b) / gamma))
    return t if t % 2 else t + 1


class MLPExcitation(nn.Module):
    def __init__(self, channels: int, hidden: int, act: str = "relu", bias: bool = True):
        super().__init__()
        check_choice("act", act, ACTIVATIONS)
        self.reduce = nn.Conv2d(channels, hidden, kernel_size=1, bias=bias)
        self.act = ACTIVATIONS[act]()
        self.expand = nn.Conv2d(hidden, channels, kernel_size=1, bias=bias)

    def forward(self, descriptor: Tensor) -> Tensor:
        return self.expand(self.act(self.reduce(descriptor)))


class ChannelConvExcitation(nn.Module):
    def __init__(self, kernel_size: int):
        super().__init__()
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"the channel conv kernel must be a positive odd size, got {kernel_size}")
        self.kernel_size = kernel_size
        self.conv = nn.Conv1d(1, 1, kernel_size, padding=kernel_size // 2, bias=False)

    def forward(self, descriptor: Tensor) -> Tensor:
        n, c, a, b = descriptor.shape
        # every (a, b) position is one length-C sequence for the 1-D conv
        sequences = descriptor.permute(0, 2, 3, 1).reshape(n * a * b, 1, c)
        return self.conv(sequences).reshape(n, a, b, c).permute(0, 3, 1, 2)


def make_excitation(
    kind: str,
    channels: int,
    *,
    reduction: float = 16,
    divisor: int = 8,
    min_width: int = 8,
    act: str = "relu",
    mlp_bias: bool = True,
    kernel_size: int | None = None,
) -> nn.Module:
    check_choice("excitation", kind, EXCITATIONS)
    if kind == "mlp":
        hidden = reduced_width(channels, reduction, divisor=divisor, min_width=min_width)
        return MLPExcitation(channels, hidden, act=act, bias=mlp_bias)
    if kind == "conv1d":
        return ChannelConvExcitation(kernel_size if kernel_size is not None else eca_kernel_size(channels))
    if kind == "linear":
        return nn.Conv2d(channels, channels, kernel_size=1, bias=mlp_bias)
    return nn.Identity()
