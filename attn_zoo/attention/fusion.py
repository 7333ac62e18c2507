"""Selective-kernel fusion of N feature maps, after the select step of Li, Wang, Hu, Yang:
"Selective Kernel Networks", CVPR 2019.

``SKFusion`` weighs N tensors of one shape (N, C, H, W) against each other:

    s = mean_{h,w} Σ_i x_i                     sum, then global average pool, (N, C)
    z = relu(BN(W_z · s))                      FC C→d, d = max(C/r, L), no bias (BN follows)
    l = W_s · z                                FC d→N·C: one d→C FC per input, stacked
    l = W_t · l + b_t                          only with ``interaction``: FC N·C→N·C
    a_i = softmax_i(l_i) or sigmoid(l_i)       ``gate``: across inputs (SKNet) or per input
    y = Σ_i a_i ⊙ x_i

BN on z is kept as in SKNet: the pooled sum's scale grows with N and differs from layer to layer,
and BN puts the logits on a common scale; it also makes ``gate="softmax"`` without interaction
exactly SKNet's attention (tested against timm). ``interaction`` lets the inputs' logits mix
before they are weighed; it starts as the identity (W_t = I, b_t = 0), so it begins equal to the
plain fusion and learns any mixing from there. It costs (N·C)² + N·C parameters.

A softmax over one input is identically 1, so ``inputs=1`` with ``gate="softmax"`` raises a
ValueError (use ``gate="sigmoid"``) rather than silently switching gates. ``SKFusion`` takes a
list of tensors, so it is not a registered one-tensor module; import it from here.

``fusion`` (registered, ``FusionConv``) is a ready block that makes its own inputs from one
tensor: parallel convolutions with kernel sizes ``kernels`` (true k×k kernels, default 1, 3, 5),
each with BN and ReLU, fused by ``SKFusion``. Like ``sk`` it replaces a convolution
(``replaces_conv = True``; options ``out_channels``, ``stride``, ``groups``) and preserves the
shape with its defaults. With kernels (3, 5) it is SKNet's unit with an undilated 5×5 branch.
Its k = 3 branch is built exactly as the conv + BN + ReLU unit it replaces, so ``init=identity``
starts the block as that branch, with the replaced conv's weights loadable into it
(``identity_path``; see ``_start.py``); without a 3 in ``kernels`` there is no such branch and
``init=identity`` is refused.

Parameters (C' = out_channels, g = groups, N = len(kernels)):
SKFusion: C'·d + 2d + N·C'·d (+ (N·C')² + N·C' with interaction);
FusionConv: Σ_k (k²·C·C'/g + 2C') + SKFusion's.

Departures: BN on the pooled descriptor uses running statistics when a training batch has a
single sample (``TolerantBatchNorm2d``), where ``nn.BatchNorm2d`` would raise.
"""
from typing import Sequence

import torch
from torch import Tensor, nn

from attn_zoo.attention._batchnorm import TolerantBatchNorm2d
from attn_zoo.attention._conv import check_conv_options, conv_bn_relu
from attn_zoo.registry import register_attention

GATES = ("softmax", "sigmoid")


class SKFusion(nn.Module):
    """Weigh N same-shaped tensors by an SK-style attention computed from their sum."""

    def __init__(self, channels: int, *, inputs: int = 2, reduction: int = 16, min_width: int = 32,
                 gate: str = "softmax", interaction: bool = False):
        super().__init__()
        if gate not in GATES:
            raise ValueError(f"gate must be one of {', '.join(GATES)}, got {gate!r}")
        if inputs < 1:
            raise ValueError(f"inputs must be >= 1, got {inputs}")
        if inputs == 1 and gate == "softmax":
            raise ValueError("gate='softmax' needs inputs >= 2 (a softmax over one input is identically 1); "
                             "use gate='sigmoid'")
        if reduction < 1 or min_width < 1:
            raise ValueError(f"reduction and min_width must be >= 1, got {reduction}, {min_width}")
        self.channels, self.inputs, self.gate = channels, inputs, gate
        width = max(channels // reduction, min_width)
        self.reduce = nn.Conv2d(channels, width, 1, bias=False)
        self.reduce_norm = TolerantBatchNorm2d(width)
        self.act = nn.ReLU(inplace=True)
        self.select = nn.Conv2d(width, inputs * channels, 1, bias=False)
        self.interaction = nn.Conv2d(inputs * channels, inputs * channels, 1) if interaction else None
        if self.interaction is not None:
            nn.init.eye_(self.interaction.weight.view(inputs * channels, inputs * channels))
            nn.init.zeros_(self.interaction.bias)

    def forward(self, xs: Sequence[Tensor]) -> Tensor:
        self._check_inputs(xs)
        features = torch.stack(list(xs), dim=1)  # (N, inputs, C, H, W)
        squeezed = features.sum(dim=1).mean(dim=(2, 3), keepdim=True)
        logits = self.select(self.act(self.reduce_norm(self.reduce(squeezed))))
        if self.interaction is not None:
            logits = self.interaction(logits)
        logits = logits.view(features.shape[0], self.inputs, self.channels, 1, 1)
        weights = logits.softmax(dim=1) if self.gate == "softmax" else logits.sigmoid()
        return (features * weights).sum(dim=1)

    def _check_inputs(self, xs: Sequence[Tensor]) -> None:
        if not isinstance(xs, (list, tuple)) or len(xs) != self.inputs:
            count = len(xs) if isinstance(xs, (list, tuple)) else type(xs).__name__
            raise ValueError(f"SKFusion expects a list of {self.inputs} tensors, got {count}")
        shapes = [tuple(x.shape) for x in xs]
        if len(set(shapes)) != 1 or len(shapes[0]) != 4 or shapes[0][1] != self.channels:
            raise ValueError(f"SKFusion inputs must all be (N, {self.channels}, H, W) of one shape, got {shapes}")


@register_attention("fusion", "SK fusion of parallel k x k conv+BN+ReLU branches (replaces a conv)")
class FusionConv(nn.Module):
    replaces_conv = True

    def __init__(self, channels: int, *, kernels: Sequence[int] = (1, 3, 5), out_channels: int | None = None,
                 stride: int = 1, groups: int = 1, reduction: int = 16, min_width: int = 32,
                 gate: str = "softmax", interaction: bool = False):
        super().__init__()
        out_channels = out_channels or channels
        check_conv_options(channels, out_channels, stride, groups)
        kernels = tuple(kernels)
        if not kernels or any(not isinstance(k, int) or k < 1 or k % 2 == 0 for k in kernels):
            raise ValueError(f"kernels must be one or more odd sizes >= 1, got {kernels}")
        self.branches = nn.ModuleList(
            conv_bn_relu(channels, out_channels, kernel_size=k, stride=stride, groups=groups) for k in kernels
        )
        # the 3×3 branch has the replaced conv's shape (backbones replace 3×3 units): init=identity starts as it
        self.identity_path = kernels.index(3) if 3 in kernels else None
        self.fuse = SKFusion(out_channels, inputs=len(kernels), reduction=reduction, min_width=min_width,
                             gate=gate, interaction=interaction)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_with_branches(x)[0]

    def forward_with_branches(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        """y and the branch outputs: identity start blends y with one of them, each branch run once
        (a second run would update its BN statistics twice)."""
        outputs = [branch(x) for branch in self.branches]
        return self.fuse(outputs), outputs
