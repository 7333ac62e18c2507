"""Squeeze-and-Excitation (Hu, Shen, Albanie, Sun, Wu: "Squeeze-and-Excitation Networks",
CVPR 2018 / TPAMI 2020).

    s = mean_{h,w} x                      squeeze: global average pool, (N, C)
    e = sigmoid(W2 · relu(W1 · s + b1) + b2)   excitation: FC C→C/r, ReLU, FC C/r→C
    y = x ⊙ e                             rescale each channel

Parameters: 2·C·d + d + C with d = C/r the reduced width (biases on, as in the paper's
reference implementation); with d = C/r exactly this is 2C²/r + C/r + C.

Departure: d is rounded to a multiple of ``divisor`` with a floor of ``min_width`` (8 and 8 by
default, as the reference SE-ResNets do), so small C never reaches zero hidden units. Set
``divisor=1, min_width=1`` for the paper's exact C/r.
"""
from torch import Tensor, nn

from attn_zoo.attention._width import reduced_width
from attn_zoo.registry import register_attention


@register_attention("se", "Squeeze-and-Excitation: avg pool, FC-ReLU-FC, sigmoid, rescale")
class SqueezeExcite(nn.Module):
    def __init__(self, channels: int, *, reduction: float = 16, divisor: int = 8, min_width: int = 8):
        super().__init__()
        hidden = reduced_width(channels, reduction, divisor=divisor, min_width=min_width)
        # 1×1 convs are FC layers on the pooled (N, C, 1, 1) tensor and keep channels_last intact
        self.reduce = nn.Conv2d(channels, hidden, kernel_size=1, bias=True)
        self.act = nn.ReLU(inplace=True)
        self.expand = nn.Conv2d(hidden, channels, kernel_size=1, bias=True)
        self.gate = nn.Sigmoid()

    def forward(self, x: Tensor) -> Tensor:
        squeezed = x.mean(dim=(2, 3), keepdim=True)
        excitation = self.gate(self.expand(self.act(self.reduce(squeezed))))
        return x * excitation
