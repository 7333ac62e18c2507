"""Selective Kernel convolution (Li, Wang, Hu, Yang: "Selective Kernel Networks", CVPR 2019).

M branches see the same input; branch i is a 3×3 convolution with dilation i (the receptive
field of a (2i + 1)×(2i + 1) kernel: 3×3, 5×5, 7×7, ...), each followed by BN and ReLU:

    U_i = relu(BN(conv_i(x)))                    i = 1..M, each (N, C', H', W')
    s   = mean_{h,w} Σ_i U_i                     fuse: sum, global average pool, (N, C')
    z   = relu(BN(W_z · s))                      FC C'→d, d = max(C'/r, L)
    a_i = softmax_i(W_i · z)                     one FC d→C' per branch, softmax across branches
    y   = Σ_i a_i ⊙ U_i                          select: weighted sum, (N, C', H', W')

with C' = ``out_channels`` (default: ``channels``), r = ``reduction``, L = ``min_width`` (32 in
the paper). The FCs have no bias, as in the paper's equations; the M branch FCs W_i are stored
stacked as one 1×1 convolution d → M·C'.

SK replaces a convolution (``replaces_conv = True``): its branches carry their own BN + ReLU, so
a backbone drops the conv + BN + ReLU where SK goes. With the default options it maps
(N, C, H, W) to the same shape and works anywhere a shape-preserving module does. Branch 0 (3×3,
dilation 1, the backbone's stride and groups) is built exactly as the unit it replaces, so
``init=identity`` starts SK as that unit, U_1, with the replaced conv's weights loadable into it
(``identity_path``; see ``_start.py``).

Parameters, with C = ``channels``, C' = ``out_channels``, g = ``groups``:
M·(9·C·C'/g + 2C') (branch convs and BNs) + C'·d + 2d (FC and BN) + M·C'·d (branch FCs).

Departures: none from the paper's SK unit; larger kernels are dilated 3×3 convolutions, as the
paper itself uses for 5×5. timm's ``SelectiveKernel`` splits the input channels across branches by
default (``split_input=True``); this module feeds every branch the whole input, as the paper does.
BN on the pooled descriptor uses running statistics when a training batch has a single sample
(``TolerantBatchNorm2d``), where ``nn.BatchNorm2d`` would raise.
"""
import torch
from torch import Tensor, nn

from attn_zoo.attention._batchnorm import TolerantBatchNorm2d
from attn_zoo.attention._conv import check_conv_options, conv_bn_relu
from attn_zoo.registry import register_attention


@register_attention("sk", "Selective Kernel conv: 3x3 and dilated branches, softmax selection (replaces a conv)")
class SelectiveKernel(nn.Module):
    replaces_conv = True
    identity_path = 0  # branch 0 is conv3x3 + BN + ReLU with the replaced conv's shape: init=identity starts as it

    def __init__(self, channels: int, *, out_channels: int | None = None, stride: int = 1, groups: int = 1,
                 branches: int = 2, reduction: int = 16, min_width: int = 32):
        super().__init__()
        out_channels = out_channels or channels
        check_conv_options(channels, out_channels, stride, groups)
        if branches < 2:
            raise ValueError(f"branches must be >= 2 (a softmax over one branch is identically 1), got {branches}")
        if reduction < 1 or min_width < 1:
            raise ValueError(f"reduction and min_width must be >= 1, got {reduction}, {min_width}")
        width = max(out_channels // reduction, min_width)
        self.branches = nn.ModuleList(
            conv_bn_relu(channels, out_channels, kernel_size=3, dilation=index + 1, stride=stride, groups=groups)
            for index in range(branches)
        )
        self.reduce = nn.Conv2d(out_channels, width, 1, bias=False)
        self.reduce_norm = TolerantBatchNorm2d(width)
        self.act = nn.ReLU(inplace=True)
        self.select = nn.Conv2d(width, branches * out_channels, 1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_with_branches(x)[0]

    def forward_with_branches(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        """y and the branch outputs U_i: identity start blends y with one U_i, each branch run once
        (a second run would update its BN statistics twice)."""
        outputs = [branch(x) for branch in self.branches]
        features = torch.stack(outputs, dim=1)  # (N, M, C', H', W')
        squeezed = features.sum(dim=1).mean(dim=(2, 3), keepdim=True)
        logits = self.select(self.act(self.reduce_norm(self.reduce(squeezed))))
        weights = logits.view(x.shape[0], len(self.branches), -1, 1, 1).softmax(dim=1)
        return (features * weights).sum(dim=1), outputs
