"""Gates: the function that turns excitation logits into per-channel weights.

``softmax`` normalises over the channel axis (dim 1), so the weights of one position sum to one;
the others act elementwise. ``hardsigmoid`` is relu6(x + 3) / 6, as in MobileNetV3 and CenterMask.
"""
from __future__ import annotations

from functools import partial

from torch import nn

from attn_zoo.attention._choice import check_choice

GATES = {
    "sigmoid": nn.Sigmoid,
    "hardsigmoid": nn.Hardsigmoid,
    "tanh": nn.Tanh,
    "relu": nn.ReLU,
    "softmax": partial(nn.Softmax, dim=1),
}


def make_gate(name: str) -> nn.Module:
    check_choice("gate", name, GATES)
    return GATES[name]()
