"""ImageNet ResNets and ResNeXt, written here so that attention placement is ours.

He, Zhang, Ren, Sun: "Deep Residual Learning for Image Recognition", CVPR 2016 (Table 1), with
the stride on the bottleneck's 3×3 conv ("ResNet v1.5", as torchvision); Xie, Girshick, Dollár,
Tu, He: "Aggregated Residual Transformations for Deep Neural Networks" (ResNeXt), CVPR 2017.

Same architecture and parameter counts as torchvision's (ResNet-18: 11,689,512; ResNet-50:
25,557,032; ResNeXt-50 32×4d: 25,028,904 with 1000 classes), built from our blocks. Initialised as
torchvision does: Kaiming-normal (fan_out) convs, BN weight 1 / bias 0, default Linear; the last
BN of each block starts at 1 unless ``zero_init_residual=True`` (torchvision's default is False too).

``stem``: ``imagenet`` (7×7 stride-2 conv + 3×3 stride-2 max-pool) or ``cifar`` (3×3 stride-1
conv, no max-pool) for 32×32 images. Stages are numbered 1..4 (torchvision's layer1..layer4; the
papers' conv2_x..conv5_x).

``stride_in_1x1=True`` (bottleneck nets) puts each downsampling block's stride on its first 1×1 conv,
as He et al.'s and Hu et al.'s released Caffe models do ("v1"; the SE paper's 3.87 GFLOPs for
SE-ResNet-50 are of this network, counted as multiply-adds); the default puts it on the 3×3 (v1.5,
4.09 G multiply-adds). The parameters are the same.

``weights``: a torchvision-format state dict of the same architecture (``pretrained.py``).

``fused_tail=True`` computes each block's last BN + SE/ECA + addition + ReLU in the fused op of
``attn_zoo.fused.bn_se_tail`` (same parameters; see ``blocks.py``).
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn

from attn_zoo.backbones.blocks import BasicBlock, Bottleneck, conv1x1, init_weights
from attn_zoo.backbones.placement import AttentionFactory, PLACEMENTS, check_placement, selected_stages
from attn_zoo.backbones.pretrained import load_torchvision_weights
from attn_zoo.registry import register_backbone

STEMS = ("imagenet", "cifar")
PLANES = (64, 128, 256, 512)


def make_stem(stem: str, out_channels: int = 64) -> nn.Sequential:
    if stem not in STEMS:
        raise ValueError(f"unknown stem '{stem}'; valid: {', '.join(STEMS)}")
    if stem == "imagenet":
        return nn.Sequential(
            nn.Conv2d(3, out_channels, 7, 2, padding=3, bias=False), nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, padding=1),
        )
    return nn.Sequential(
        nn.Conv2d(3, out_channels, 3, 1, padding=1, bias=False), nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True)
    )


class ResNet(nn.Module):
    def __init__(
        self,
        name: str,
        block: type[BasicBlock] | type[Bottleneck],
        layers: Sequence[int],
        attention: AttentionFactory,
        num_classes: int = 1000,
        *,
        stem: str = "imagenet",
        placement: str = "standard",
        stages: Sequence[int] | None = None,
        groups: int = 1,
        width_per_group: int = 64,
        zero_init_residual: bool = False,
        fused_tail: bool | str = False,
        stride_in_1x1: bool = False,
    ):
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if stride_in_1x1 and block is not Bottleneck:
            raise ValueError(f"stride_in_1x1 is for bottleneck blocks; {name}'s {block.__name__}s have no 1×1 conv")
        bottleneck_options = {"stride_in_1x1": stride_in_1x1} if block is Bottleneck else {}
        valid = PLACEMENTS if block is Bottleneck else tuple(p for p in PLACEMENTS if p != "3x3")
        check_placement(placement, attention, f"{name} ({block.__name__} blocks)", valid)
        chosen = selected_stages(stages, len(layers))
        self.stem = make_stem(stem)
        blocks_of_stages, in_channels = [], 64
        for index, (planes, count) in enumerate(zip(PLANES, layers)):
            stage_placement = placement if index + 1 in chosen else None
            blocks = []
            for block_index in range(count):
                stride = 2 if index > 0 and block_index == 0 else 1
                out = planes * block.expansion
                shortcut = (
                    nn.Sequential(conv1x1(in_channels, out, stride), nn.BatchNorm2d(out))
                    if stride != 1 or in_channels != out else nn.Identity()
                )
                blocks.append(block(in_channels, planes, stride, shortcut, attention, stage_placement,
                                    groups=groups, base_width=width_per_group, fused_tail=fused_tail,
                                    **bottleneck_options))
                in_channels = out
            blocks_of_stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*blocks_of_stages)
        self.head = nn.Linear(in_channels, num_classes)
        init_weights(self, zero_init_residual)

    def forward(self, x: Tensor) -> Tensor:
        features = self.stages(self.stem(x))
        return self.head(torch.flatten(nn.functional.adaptive_avg_pool2d(features, 1), 1))


ARCHITECTURES = {
    "resnet18": (BasicBlock, (2, 2, 2, 2), {}),
    "resnet34": (BasicBlock, (3, 4, 6, 3), {}),
    "resnet50": (Bottleneck, (3, 4, 6, 3), {}),
    "resnet101": (Bottleneck, (3, 4, 23, 3), {}),
    "resnet152": (Bottleneck, (3, 8, 36, 3), {}),
    "resnext50_32x4d": (Bottleneck, (3, 4, 6, 3), {"groups": 32, "width_per_group": 4}),
}


def _register(name: str) -> None:
    block, layers, widths = ARCHITECTURES[name]
    title = "ResNeXt-50 (32×4d)" if name.startswith("resnext") else f"ResNet-{name[6:]}"

    @register_backbone(name, f"ImageNet {title} ({block.__name__}s), stem imagenet|cifar")
    def build(attention: AttentionFactory, *, num_classes: int = 1000, stem: str = "imagenet",
              placement: str = "standard", stages: Sequence[int] | None = None,
              zero_init_residual: bool = False, fused_tail: bool | str = False, weights: str | None = None,
              stride_in_1x1: bool = False) -> ResNet:
        model = ResNet(name, block, layers, attention, num_classes, stem=stem, placement=placement, stages=stages,
                       zero_init_residual=zero_init_residual, fused_tail=fused_tail, stride_in_1x1=stride_in_1x1,
                       **widths)
        return load_torchvision_weights(model, weights, name) if weights else model


for _name in ARCHITECTURES:
    _register(_name)
