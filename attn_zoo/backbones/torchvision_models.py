"""torchvision's own ResNet-family classes with attention injected: ``backbone=torchvision backbone.arch=resnet50``.

Builds ``torchvision.models.get_model(arch, weights=None)`` (never downloads) and puts the
attention in each residual block of the chosen stages (``layer1``..``layer4`` = stages 1..4) after
the block's last BN and before the addition: after ``bn2`` in a BasicBlock, after ``bn3`` in a
Bottleneck, through ``attn_zoo.inject`` (so state_dict keys stay torchvision's). A module with
``replaces_conv`` (SK, fusion) takes the place of the Bottleneck's ``conv2`` + ``bn2`` (the
BasicBlock's ``conv1`` + ``bn1``): it is held as ``convN.attention`` and ``bnN`` becomes an
identity; the ReLU torchvision applies next is then a no-op on the module's ReLU output, but for
``init=identity``: U + α·(module − U) goes below 0 once α leaves [0, 1], which that ReLU clips and our
own blocks (``backbone=resnet50``) pass on, so the two backbones then differ.
Only ``placement=standard``: other placements need our own blocks (``backbone=resnet50``).

``stem``: ``imagenet`` (torchvision's 7×7 stride-2 conv + max-pool) or ``cifar`` (``conv1`` a 3×3
stride-1 conv, no max-pool), as our ResNets' ``stem``: torchvision's stem downsamples by 4 before
``layer1``, which leaves 32×32 images a 1×1 final map; ``run.py`` stops on that with one ``error:``
line naming ``backbone.stem=cifar`` (``config_check``), as it does for ``backbone=resnet50``.
"""
from __future__ import annotations

import itertools
from typing import Sequence

from torch import Tensor, nn

from attn_zoo.backbones.inject import inject
from attn_zoo.backbones.placement import (
    AttentionFactory, check_placement, initialise_branches, replaces_conv, selected_stages,
)
from attn_zoo.backbones.pretrained import load_torchvision_weights
from attn_zoo.backbones.resnet import STEMS
from attn_zoo.registry import register_backbone

ARCHS = (
    "resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "resnext50_32x4d", "resnext101_32x8d",
    "resnext101_64x4d", "wide_resnet50_2", "wide_resnet101_2",
)


class ConvReplacement(nn.Module):
    """Holds a conv-replacing module under the name ``attention`` where torchvision calls a conv."""

    def __init__(self, attention: nn.Module):
        super().__init__()
        self.attention = attention

    def forward(self, x: Tensor) -> Tensor:
        return self.attention(x)


def _replace_convs(model: nn.Module, attention: AttentionFactory, stages: frozenset[int]) -> None:
    from torchvision.models.resnet import BasicBlock, Bottleneck

    replaced = itertools.count()
    for stage in sorted(stages):
        for block in getattr(model, f"layer{stage}"):
            if isinstance(block, Bottleneck):
                conv, norm = "conv2", "bn2"
            elif isinstance(block, BasicBlock):
                conv, norm = "conv1", "bn1"
            else:
                raise TypeError(f"unexpected block {type(block).__name__} in layer{stage}")
            old = getattr(block, conv)
            new = attention(old.in_channels, out_channels=old.out_channels, stride=old.stride[0], groups=old.groups)
            # torchvision drew the replaced conv already: the branches alone, in a stream of their own
            initialise_branches(new, _as_torchvision_initialises_convs, next(replaced))
            setattr(block, conv, ConvReplacement(new))
            setattr(block, norm, nn.Identity())


def _as_torchvision_initialises_convs(module: nn.Module) -> None:
    if isinstance(module, nn.Conv2d):
        nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")


def _small_image_stem(model: nn.Module) -> None:
    """``conv1`` 3×3 stride 1 (Kaiming-normal, fan_out, as torchvision initialises it) and no max-pool."""
    conv = nn.Conv2d(3, model.conv1.out_channels, 3, 1, padding=1, bias=False)
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    model.conv1, model.maxpool = conv, nn.Identity()


@register_backbone("torchvision", "torchvision's ResNet/ResNeXt/WRN classes (backbone.arch), attention injected")
def build(attention: AttentionFactory, *, arch: str = "resnet50", num_classes: int = 1000, stem: str = "imagenet",
          placement: str = "standard", stages: Sequence[int] | None = None, weights: str | None = None) -> nn.Module:
    """``weights``: a state dict of torchvision's ``arch`` (``pretrained.py``), loaded after the attention is in."""
    if stem not in STEMS:
        raise ValueError(f"unknown stem '{stem}'; valid: {', '.join(STEMS)}")
    model = _build(attention, arch, num_classes, placement, stages)
    if stem == "cifar":
        _small_image_stem(model)
    # by arch, not by name: a conv replacement's start branch takes the replaced conv2 + bn2 (pretrained.py)
    return load_torchvision_weights(model, weights, arch) if weights else model


def _build(attention: AttentionFactory, arch: str, num_classes: int, placement: str,
           stages: Sequence[int] | None) -> nn.Module:
    import torchvision

    if arch not in ARCHS:
        raise ValueError(f"unknown torchvision arch '{arch}'; valid: {', '.join(ARCHS)}")
    check_placement(placement, attention, f"torchvision {arch}", ("standard",))
    chosen = selected_stages(stages, 4)
    model = torchvision.models.get_model(arch, weights=None, num_classes=num_classes)
    if replaces_conv(attention):
        _replace_convs(model, attention, chosen)
        return model
    if not chosen:  # no stage selected: the plain model (an error unless the attention is none)
        return model
    last_bn = "bn2" if isinstance(model.layer1[0], torchvision.models.resnet.BasicBlock) else "bn3"
    inject(model, attention, after=f"re:layer[{''.join(str(s) for s in sorted(chosen))}]\\.\\d+\\.{last_bn}")
    return model
