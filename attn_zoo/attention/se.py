"""Squeeze-and-Excitation (Hu, Shen, Albanie, Sun, Wu: "Squeeze-and-Excitation Networks",
CVPR 2018 / TPAMI 2020), and the design space around it that the SE paper's ablations
(Tables 10-12 of the TPAMI version, arXiv 1709.01507v4) and its successors explore.

    s = squeeze(x)                        SE: global average pool, (N, C, 1, 1)
    e = gate(excite(s))                   SE: sigmoid(W2 · relu(W1 · s + b1) + b2), FC C→d→C
    y = x ⊙ e                             rescale each channel

Each part is a named choice (the parts live in _squeeze.py, _excite.py, _gate.py):

- ``squeeze``: ``avg`` | ``max`` | ``avgmax`` | ``std`` | ``gem`` | ``dct``; ``axis``: ``hw``
  (global) | ``h`` (pool over H, keep W) | ``w`` (pool over W, keep H).
- ``excitation``: ``mlp`` (``act`` relu | gelu | silu; d from ``reduction``, ``divisor``,
  ``min_width``) | ``conv1d`` (ECA, kernel ``kernel_size``, None = adaptive) | ``linear`` | ``none``;
  ``mlp_bias``: biases on the excitation's FC layers (``mlp`` and ``linear``).
- ``gate``: ``sigmoid`` | ``hardsigmoid`` | ``tanh`` | ``relu`` | ``softmax`` (over channels).

``avgmax`` follows CBAM (Woo et al., ECCV 2018) Eq. 2: the excitation runs on the average and on
the maximum descriptor with shared weights and the two logits are summed before the gate,
gate(excite(avg) + excite(max)), not gate(excite(avg + max)).

The defaults are SE's, so the space is registered once, as ``se``: a second name for the same
defaults would duplicate every listing and run; ``se[squeeze=max]`` names a variant.
ECA, eSE and CBAM's channel half are presets of this class (eca.py, ese.py, cbam.py).

Parameters with the SE defaults: 2·C·d + d + C with d = C/r the reduced width (biases on, as in the
paper's reference implementation); with d = C/r exactly this is 2C²/r + C/r + C. Other choices:
mlp 2Cd (+ d + C with mlp_bias), conv1d k, linear C² (+ C with mlp_bias), none 0; ``gem`` adds
its one p.

Departure: d is rounded to a multiple of ``divisor`` with a floor of ``min_width`` (8 and 8 by
default, as timm's SEModule does; Hu et al.'s released SE-ResNets and senet.pytorch take C/r
exactly), so small C never reaches zero hidden units. Set ``divisor=1, min_width=1`` (the
``se_exact`` preset) for the paper's C/r. On the CIFAR ResNets (16-64 channels) the default gives 8
hidden units everywhere, an effective r of 2, 4 and 8: more parameters than ``cbam``'s channel MLP,
which takes C/r; compare ``se_exact`` with ``cbam`` for like-for-like widths.
"""
from __future__ import annotations

from torch import Tensor, nn

from attn_zoo.attention._excite import make_excitation
from attn_zoo.attention._gate import make_gate
from attn_zoo.attention._squeeze import make_squeeze
from attn_zoo.registry import register_attention


@register_attention("se", "Squeeze-and-Excitation: avg pool, FC-ReLU-FC, sigmoid, rescale (every part a choice)")
class SqueezeExcite(nn.Module):
    def __init__(
        self,
        channels: int,
        *,
        squeeze: str = "avg",
        axis: str = "hw",
        excitation: str = "mlp",
        act: str = "relu",
        gate: str = "sigmoid",
        reduction: float = 16,
        divisor: int = 8,
        min_width: int = 8,
        mlp_bias: bool = True,
        kernel_size: int | None = None,
    ):
        super().__init__()
        self.squeeze = make_squeeze(squeeze, channels, axis)
        self.excite = make_excitation(
            excitation, channels, reduction=reduction, divisor=divisor, min_width=min_width,
            act=act, mlp_bias=mlp_bias, kernel_size=kernel_size,
        )
        self.gate = make_gate(gate)
        # ECA's k depends on C when the option is None (adaptive): keep the one actually used visible
        self.kernel_size = getattr(self.excite, "kernel_size", None)

    def forward(self, x: Tensor) -> Tensor:
        descriptors = self.squeeze(x)
        logits = self.excite(descriptors[0])
        for descriptor in descriptors[1:]:
            logits = logits + self.excite(descriptor)
        return x * self.gate(logits)
