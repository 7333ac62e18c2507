"""Pre-activation CIFAR networks: ResNet-110, ResNet-164 and Wide ResNets.

- ``preresnet110``: He, Zhang, Ren, Sun, "Identity Mappings in Deep Residual Networks", ECCV 2016
  (6.37 % CIFAR-10 error), the baseline of the SE paper's SE-ResNet-110 (5.21 %). 3 stages of 18
  pre-activation basic units (BN-ReLU-conv3×3-BN-ReLU-conv3×3, x + F(x)), 16/32/64 channels. The
  first unit after the stem activates its input "before splitting into two paths" (the paper), so the
  stem is a bare conv; the first units of stages 2 and 3 do the same, as fb.resnet.torch's
  ``both_preact`` (the paper does not say); a final BN + ReLU before the pool. Shortcuts where the
  shape changes: option A (zero-padding, ``shortcut: pad``, fb.resnet.torch's CIFAR default) or a 1×1
  conv without BN (``projection``). 1,727,962 parameters with option A and 10 classes, as He et al.'s
  ResNet-110 with option A.
- ``resnet164``: He, Zhang, Ren, Sun, "Identity Mappings in Deep Residual Networks", ECCV 2016.
  Pre-activation bottlenecks (BN-ReLU-conv), 3 stages of 18 blocks, bottleneck widths 16/32/64,
  outputs 64/128/256 (depth 9n+2, n = 18); 1x1-conv projection shortcuts (no BN) where the shape
  changes; a final BN + ReLU before the pool. 1.70M parameters with 10 classes (the paper's 1.7M).
- ``wrn16_8``, ``wrn28_10``: Zagoruyko and Komodakis, "Wide Residual Networks", BMVC 2016.
  WRN-d-k: 3 stages of (d-4)/6 pre-activation basic blocks with 16k/32k/64k channels, dropout
  (``dropout``, the paper's 0.3 when on; default 0) between the two convs, 1×1-conv projection
  shortcuts. 10,961,370 and 36,479,194 parameters with 10 classes (the paper's 11.0M and 36.5M).

Stages are numbered 1..3. Attention placement as in ``placement.py``; in these pre-activation
blocks ``standard`` is after the branch's last conv (there is no BN at its end), before the addition.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from attn_zoo.backbones.blocks import PreActBasicBlock, PreActBottleneck, conv1x1, init_weights
from attn_zoo.backbones.placement import AttentionFactory, PLACEMENTS, check_placement, selected_stages
from attn_zoo.backbones.resnet_cifar import PadShortcut
from attn_zoo.registry import register_backbone


class PreActCifarNet(nn.Module):
    """Stem conv, three stages of pre-activation blocks, BN + ReLU, pool, FC."""

    def __init__(self, stages_of_blocks: list[list[nn.Module]], out_channels: int, num_classes: int):
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.stem = nn.Conv2d(3, 16, 3, padding=1, bias=False)
        self.stages = nn.Sequential(*(nn.Sequential(*blocks) for blocks in stages_of_blocks))
        self.final_norm = nn.BatchNorm2d(out_channels)
        self.head = nn.Linear(out_channels, num_classes)
        init_weights(self)

    def forward(self, x: Tensor) -> Tensor:
        features = F.relu(self.final_norm(self.stages(self.stem(x))))
        return self.head(torch.flatten(F.adaptive_avg_pool2d(features, 1), 1))


PREACT_SHORTCUTS = {"pad": PadShortcut, "projection": conv1x1}
BASIC_PLACEMENTS = ("standard", "pre", "post", "identity", "after_3x3_conv")
MakeBlock = Callable[[int, int, int, "str | None", bool], tuple[nn.Module, int]]


def _stages(count: int, widths: Sequence[int], placement: str, stages: Sequence[int] | None,
            make_block: MakeBlock) -> tuple[list[list[nn.Module]], int]:
    """Three stages of ``count`` blocks from the 16-channel stem, stride 2 at the start of stages 2 and 3
    (attention only in the ``stages`` chosen); ``make_block(in_channels, width, stride, placement,
    first_of_stage)`` returns a block and its output channels. Returns the blocks and the last width."""
    chosen = selected_stages(stages, len(widths))
    in_channels, all_blocks = 16, []
    for index, width in enumerate(widths):
        stage_placement = placement if index + 1 in chosen else None
        blocks = []
        for block_index in range(count):
            stride = 2 if index > 0 and block_index == 0 else 1
            block, in_channels = make_block(in_channels, width, stride, stage_placement, block_index == 0)
            blocks.append(block)
        all_blocks.append(blocks)
    return all_blocks, in_channels


def preact_resnet(depth: int, attention: AttentionFactory, num_classes: int = 10, *,
                  placement: str = "standard", stages: Sequence[int] | None = None) -> PreActCifarNet:
    if (depth - 2) % 9 != 0 or depth < 11:
        raise ValueError(f"pre-activation bottleneck ResNet depth must be 9n+2 with n >= 1, got {depth}")
    check_placement(placement, attention, f"resnet{depth} (pre-activation bottlenecks)", PLACEMENTS)

    def bottleneck(in_channels, planes, stride, block_placement, _first):
        out = planes * PreActBottleneck.expansion
        return PreActBottleneck(in_channels, planes, stride, attention, block_placement), out

    return PreActCifarNet(*_stages((depth - 2) // 9, (16, 32, 64), placement, stages, bottleneck), num_classes)


def preact_basic_resnet(depth: int, attention: AttentionFactory, num_classes: int = 10, *, shortcut: str = "pad",
                        placement: str = "standard", stages: Sequence[int] | None = None) -> PreActCifarNet:
    """He et al.'s pre-activation CIFAR ResNet of basic units, depth 6n+2 (the module docstring)."""
    if (depth - 2) % 6 != 0 or depth < 8:
        raise ValueError(f"pre-activation basic ResNet depth must be 6n+2 with n >= 1, got {depth}")
    if shortcut not in PREACT_SHORTCUTS:
        raise ValueError(f"unknown shortcut '{shortcut}'; valid: {', '.join(PREACT_SHORTCUTS)}")
    check_placement(placement, attention, f"preresnet{depth} (pre-activation BasicBlocks)", BASIC_PLACEMENTS)

    def unit(in_channels, width, stride, block_placement, first):
        changes_shape = stride != 1 or in_channels != width
        path = PREACT_SHORTCUTS[shortcut](in_channels, width, stride) if changes_shape else nn.Identity()
        return PreActBasicBlock(in_channels, width, stride, attention, block_placement, shortcut=path,
                                shares_activation=first), width

    return PreActCifarNet(*_stages((depth - 2) // 6, (16, 32, 64), placement, stages, unit), num_classes)


def wide_resnet(depth: int, widen: int, attention: AttentionFactory, num_classes: int = 10, *,
                dropout: float = 0.0, placement: str = "standard",
                stages: Sequence[int] | None = None) -> PreActCifarNet:
    if (depth - 4) % 6 != 0 or depth < 10:
        raise ValueError(f"WRN depth must be 6n+4 with n >= 1, got {depth}")
    if not 0 <= dropout < 1:
        raise ValueError(f"dropout must be in [0, 1), got {dropout}")
    check_placement(placement, attention, f"wrn{depth}_{widen} (pre-activation BasicBlocks)", BASIC_PLACEMENTS)

    def block(in_channels, width, stride, block_placement, _first):
        return PreActBasicBlock(in_channels, width, stride, attention, block_placement, dropout), width

    widths = tuple(base * widen for base in (16, 32, 64))
    return PreActCifarNet(*_stages((depth - 4) // 6, widths, placement, stages, block), num_classes)


@register_backbone("preresnet110", "CIFAR pre-activation ResNet-110 (He et al. 2016b), SE paper's baseline, 1.7M params")
def preresnet110(attention: AttentionFactory, *, num_classes: int = 10, shortcut: str = "pad",
                 placement: str = "standard", stages: Sequence[int] | None = None) -> PreActCifarNet:
    return preact_basic_resnet(110, attention, num_classes, shortcut=shortcut, placement=placement, stages=stages)


@register_backbone("resnet164", "CIFAR pre-activation ResNet-164 (He et al. 2016b), bottlenecks, 1.7M params")
def resnet164(attention: AttentionFactory, *, num_classes: int = 10, placement: str = "standard",
              stages: Sequence[int] | None = None) -> PreActCifarNet:
    return preact_resnet(164, attention, num_classes, placement=placement, stages=stages)


def _register_wide(depth: int, widen: int) -> None:
    @register_backbone(f"wrn{depth}_{widen}", f"Wide ResNet-{depth}-{widen} (Zagoruyko & Komodakis 2016), pre-act")
    def build(attention: AttentionFactory, *, num_classes: int = 10, dropout: float = 0.0,
              placement: str = "standard", stages: Sequence[int] | None = None) -> PreActCifarNet:
        return wide_resnet(depth, widen, attention, num_classes, dropout=dropout, placement=placement, stages=stages)


for _depth, _widen in ((16, 8), (28, 10)):
    _register_wide(_depth, _widen)
