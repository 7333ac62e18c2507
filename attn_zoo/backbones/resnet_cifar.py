"""CIFAR ResNets (He, Zhang, Ren, Sun: "Deep Residual Learning for Image Recognition", CVPR 2016, §4.2).

A 3×3 conv with 16 filters, then 3 stages of n BasicBlocks with 16/32/64 channels (depth = 6n+2),
global average pool, one FC layer. Where a block changes shape its shortcut is, by ``shortcut``:

- ``projection`` (default; the paper's option B): 1×1 stride-2 conv + BatchNorm. ResNet-20 then
  has 272,474 parameters with 10 classes (ResNet-56: 855,770; ResNet-110: 1,730,714), as the
  PyTorch CIFAR zoos that use projection shortcuts report (others, e.g. akamaster's, use option A).
- ``pad`` (the paper's option A, what §4.2 used): stride-2 subsampling with zero-padded extra
  channels, no parameters: 269,722 for ResNet-20. Both round to the paper's 0.27M; for ResNet-32 and
  -56 only ``pad`` gives the paper's 0.46M and 0.85M. The reproduction tables of He et al. use ``pad``.

Attention sits, by ``placement``, on the residual branch after the block's last BatchNorm and
before the addition (``standard``, the SE paper's SE-ResNet module, its Fig. 3), or ``pre``,
``post``, ``identity`` (its Fig. 5); ``stages`` (1..3) picks the stages that get it. See
``placement.py``. ``3x3`` needs a bottleneck: use ``resnet164``. ``fused_tail=True`` runs each
block's last BN + SE/ECA + addition + ReLU as one fused op (``attn_zoo.fused.bn_se_tail``).
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from attn_zoo.backbones.blocks import BasicBlock
from attn_zoo.backbones.placement import AttentionFactory, check_placement, initialise_backbone, selected_stages
from attn_zoo.registry import register_backbone


class PadShortcut(nn.Module):
    """Option A shortcut: subsample by ``stride`` and zero-pad the new channels on both sides."""

    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        self.stride = stride
        self.extra = out_channels - in_channels

    def forward(self, x: Tensor) -> Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        half = self.extra // 2
        return F.pad(x, (0, 0, 0, 0, half, self.extra - half))


def projection_shortcut(in_channels: int, out_channels: int, stride: int) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 1, stride, bias=False), nn.BatchNorm2d(out_channels)
    )


SHORTCUTS = {"projection": projection_shortcut, "pad": PadShortcut}


class CifarResNet(nn.Module):
    def __init__(
        self,
        depth: int,
        attention: AttentionFactory,
        num_classes: int = 10,
        widths: tuple[int, int, int] = (16, 32, 64),
        shortcut: str = "projection",
        placement: str = "standard",
        stages: Sequence[int] | None = None,
        fused_tail: bool | str = False,
    ):
        super().__init__()
        if (depth - 2) % 6 != 0 or depth < 8:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2 with n >= 1, got {depth}")
        if shortcut not in SHORTCUTS:
            raise ValueError(f"unknown shortcut '{shortcut}'; valid: {', '.join(SHORTCUTS)}")
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        check_placement(placement, attention, f"resnet{depth} (BasicBlocks)",
                        ("standard", "pre", "post", "identity", "after_3x3_conv"))
        chosen = selected_stages(stages, len(widths))
        blocks_per_stage = (depth - 2) // 6
        self.stem = nn.Sequential(
            nn.Conv2d(3, widths[0], 3, padding=1, bias=False),
            nn.BatchNorm2d(widths[0]),
            nn.ReLU(inplace=True),
        )
        stages, in_channels = [], widths[0]
        for index, width in enumerate(widths):
            blocks, stage_placement = [], placement if index + 1 in chosen else None
            for block_index in range(blocks_per_stage):
                stride = 2 if index > 0 and block_index == 0 else 1
                needs_projection = stride != 1 or in_channels != width
                block_shortcut = SHORTCUTS[shortcut](in_channels, width, stride) if needs_projection else nn.Identity()
                blocks.append(BasicBlock(in_channels, width, stride, block_shortcut, attention, stage_placement,
                                         fused_tail=fused_tail))
                in_channels = width
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.head = nn.Linear(in_channels, num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        def initialise(module: nn.Module) -> None:
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

        initialise_backbone(self, initialise)

    def forward(self, x: Tensor) -> Tensor:
        features = self.stages(self.stem(x))
        return self.head(torch.flatten(F.adaptive_avg_pool2d(features, 1), 1))


def _register(depth: int) -> None:
    @register_backbone(f"resnet{depth}", f"CIFAR ResNet-{depth} (He et al. 2016), 16/32/64 channels")
    def build(attention: AttentionFactory, *, num_classes: int = 10, shortcut: str = "projection",
              placement: str = "standard", stages: Sequence[int] | None = None,
              fused_tail: bool | str = False) -> CifarResNet:
        return CifarResNet(depth, attention, num_classes, shortcut=shortcut, placement=placement, stages=stages,
                           fused_tail=fused_tail)


for _depth in (20, 32, 44, 56, 110):
    _register(_depth)
