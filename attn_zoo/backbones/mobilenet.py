"""MobileNetV2 (Sandler, Howard, Zhu, Zhmoginov, Chen: "MobileNetV2: Inverted Residuals and Linear
Bottlenecks", CVPR 2018), written here so that attention placement is ours.

Same architecture, parameter count (3,504,872 with 1000 classes) and initialisation as
torchvision's ``mobilenet_v2``: a 3×3 stride-2 stem conv to 32 channels, 17 inverted residual
blocks in 7 stages (the paper's Table 2 rows, numbered 1..7 here), a 1×1 conv to 1280, dropout
0.2, FC. For 32×32 images: ``stem=cifar`` makes the stem conv stride 1 (nothing else changes: total
stride 16, a 2×2 final map); ``stem=cifar_4x4`` also makes stage 2's first block stride 1 (total
stride 8, a 4×4 final map), as the MobileNetV2s most CIFAR papers train do (kuangliu/pytorch-cifar,
RepDistiller). Parameters are the same for all three; only the maps, and so the MACs, differ.

Placement: ``standard`` puts the module after the linear projection's BN, before the addition
where there is one (as ECA-Net's ECA-MobileNetV2 does, in every block); ``3x3`` after the
depthwise 3×3 conv + BN + ReLU6 (where MnasNet and MobileNetV3 put SE). A module with
``replaces_conv`` takes the place of the depthwise conv + BN + ReLU6 (groups = channels); its
branches end in ReLU, so ``init=identity`` cannot start it as that unit and is refused.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn

from attn_zoo.attention._start import ConvIdentityStart
from attn_zoo.backbones.placement import (
    AttentionFactory, AttentionSlot, attention_name, block_attention, build_replacement, check_placement,
    initialise_backbone, replaces_conv, selected_stages,
)
from attn_zoo.backbones.pretrained import load_torchvision_weights
from attn_zoo.registry import register_backbone

# expansion t, output channels c, repeats n, first stride s (the paper's Table 2)
SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))
# stem -> (stem conv stride, stage 2's first stride)
STEMS = {"imagenet": (2, 2), "cifar": (1, 2), "cifar_4x4": (1, 1)}


def make_divisible(value: float, divisor: int = 8) -> int:
    """torchvision's rounding of widths: nearest multiple of ``divisor``, never below 90 % of ``value``."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


def conv_bn_relu6(in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1,
                  groups: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, stride, (kernel_size - 1) // 2, groups=groups, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU6(inplace=True),
    )


class InvertedResidual(AttentionSlot):
    def __init__(self, in_channels: int, out_channels: int, stride: int, expansion: int,
                 attention: AttentionFactory, placement: str | None):
        super().__init__()
        hidden = int(round(in_channels * expansion))
        self.use_residual = stride == 1 and in_channels == out_channels
        self.expand = conv_bn_relu6(in_channels, hidden, 1) if expansion != 1 else nn.Identity()
        self.placement = placement
        if placement is not None and replaces_conv(attention):
            self.placement = "conv"
            self.attention = build_replacement(attention, hidden, hidden, stride, hidden)
            if isinstance(self.attention, ConvIdentityStart):  # its start branch ends in ReLU, this unit in ReLU6
                raise ValueError(
                    f"init=identity cannot start '{attention_name(attention)}' as mobilenet_v2's depthwise unit, "
                    "which ends in ReLU6 (its branches end in ReLU); use a gate (se, eca, ...) or init=default"
                )
        else:
            self.depthwise = conv_bn_relu6(hidden, hidden, 3, stride, groups=hidden)
            gate = block_attention(attention, placement,
                                   {"standard": out_channels, "3x3": hidden, "after_3x3_conv": hidden})
            if gate is not None:
                self.attention = gate
        self.project = nn.Conv2d(hidden, out_channels, 1, bias=False)
        self.project_bn = nn.BatchNorm2d(out_channels)

    def forward(self, x: Tensor) -> Tensor:
        out = self.expand(x)
        if self.placement == "conv":
            out = self.attention(out)
        elif self.placement == "after_3x3_conv":
            conv, norm, act = self.depthwise
            out = act(norm(self.attention(conv(out))))
        else:
            out = self.depthwise(out)
        out = self.attend("3x3", out)
        out = self.attend("standard", self.project_bn(self.project(out)))
        return x + out if self.use_residual else out


class MobileNetV2(nn.Module):
    def __init__(self, attention: AttentionFactory, num_classes: int = 1000, *, stem: str = "imagenet",
                 placement: str = "standard", stages: Sequence[int] | None = None, width_mult: float = 1.0,
                 dropout: float = 0.2):
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if stem not in STEMS:
            raise ValueError(f"unknown stem '{stem}'; valid: {', '.join(STEMS)}")
        check_placement(placement, attention, "mobilenet_v2 (inverted residual blocks)",
                        ("standard", "3x3", "after_3x3_conv"))
        chosen = selected_stages(stages, len(SETTINGS))
        in_channels = make_divisible(32 * width_mult)
        stem_stride, stage2_stride = STEMS[stem]
        self.stem = conv_bn_relu6(3, in_channels, 3, stem_stride)
        stage_list = []
        for index, (expansion, channels, repeats, first_stride) in enumerate(SETTINGS):
            first_stride = stage2_stride if index == 1 else first_stride
            out_channels = make_divisible(channels * width_mult)
            stage_placement = placement if index + 1 in chosen else None
            blocks = []
            for block_index in range(repeats):
                stride = first_stride if block_index == 0 else 1
                blocks.append(InvertedResidual(in_channels, out_channels, stride, expansion, attention, stage_placement))
                in_channels = out_channels
            stage_list.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stage_list)
        last_channels = make_divisible(1280 * max(1.0, width_mult))
        self.last_conv = conv_bn_relu6(in_channels, last_channels, 1)
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(last_channels, num_classes))
        self._init_weights()

    def _init_weights(self) -> None:
        """torchvision's: Kaiming-normal (fan_out) convs, BN 1/0, N(0, 0.01) FC; attention keeps its own,
        but for a conv replacement's branches (``placement.initialise_backbone``)."""
        def initialise(module: nn.Module) -> None:
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, 0, 0.01)
                nn.init.zeros_(module.bias)

        initialise_backbone(self, initialise)

    def forward(self, x: Tensor) -> Tensor:
        features = self.last_conv(self.stages(self.stem(x)))
        return self.head(torch.flatten(nn.functional.adaptive_avg_pool2d(features, 1), 1))


@register_backbone("mobilenet_v2", "MobileNetV2 (Sandler et al. 2018), 7 stages of inverted residuals")
def mobilenet_v2(attention: AttentionFactory, *, num_classes: int = 1000, stem: str = "imagenet",
                 placement: str = "standard", stages: Sequence[int] | None = None, width_mult: float = 1.0,
                 dropout: float = 0.2, weights: str | None = None) -> MobileNetV2:
    """``weights``: a torchvision-format ``mobilenet_v2`` state dict (``pretrained.py``; width_mult 1)."""
    model = MobileNetV2(attention, num_classes, stem=stem, placement=placement, stages=stages,
                        width_mult=width_mult, dropout=dropout)
    return load_torchvision_weights(model, weights, "mobilenet_v2") if weights else model
