"""Residual blocks with one attention slot, shared by the CIFAR, wide and ImageNet ResNets.

Post-activation blocks (He et al., CVPR 2016) end in ``relu(bn(branch) + shortcut)``;
pre-activation blocks (He et al., "Identity Mappings in Deep Residual Networks", ECCV 2016) start
with BN + ReLU and add without a ReLU after. Where each placement puts the module is described in
``placement.py``; in pre-activation blocks the branch ends in a conv (no BN), ``pre`` gates the
activated input the first conv reads, and ``post`` gates the sum.

A module with ``replaces_conv`` takes the place of one conv → BN → ReLU unit: the bottleneck's 3×3
(with its stride and groups), or the basic block's first 3×3 (as timm's SelectiveKernelBasic does:
the branch then still ends in a BN without ReLU before the addition). In pre-activation blocks the
unit is the conv together with the next conv's pre-activation BN + ReLU.

``fused_tail=True`` (post-activation blocks, placement ``standard``, SE or ECA) computes the last
BN, the attention, the addition and the ReLU with ``attn_zoo.fused.bn_se_tail`` from the same
modules; ``fused_tail="triton"`` does the same with its spatial reductions as Triton kernels.
Anything else fails at build time. A block without attention (or with ``none``) has no
attention to fuse and keeps its plain tail.
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from attn_zoo.attention.identity import NoAttention
from attn_zoo.backbones.placement import (
    AttentionFactory, AttentionSlot, attention_name, block_attention, build_replacement, initialise_backbone,
    replaces_conv,
)
from attn_zoo.fused.bn_se_tail import bn_se_add_relu, check_fused_tail, tail_kernels

REPLACED = "conv"  # internal placement of a module that stands in for a conv unit


def conv3x3(in_channels: int, out_channels: int, stride: int = 1, groups: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, 3, stride, padding=1, groups=groups, bias=False)


def conv1x1(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, 1, stride, bias=False)


class _ResidualBlock(AttentionSlot):
    def _place(self, attention: AttentionFactory, placement: str | None, channels_at: dict[str, int], **conv):
        """Set ``self.attention`` (gate or conv replacement); return the replacement or None."""
        self.placement = placement
        if placement is not None and replaces_conv(attention):
            self.placement = REPLACED
            self.attention = build_replacement(attention, **conv)
            return self.attention
        gate = block_attention(attention, placement, channels_at)
        if gate is not None:
            self.attention = gate
        return None

    def _fuse_tail(self, fused_tail: bool | str, attention: AttentionFactory) -> None:
        """Decide (and check, at build time) whether forward runs the fused BN-attention-add-ReLU tail."""
        has_gate = self.placement is not None and not isinstance(getattr(self, "attention", None), NoAttention)
        self.tail_kernels = tail_kernels(fused_tail)
        self.fused_tail = self.tail_kernels is not None and has_gate
        if self.fused_tail:
            check_fused_tail(self.attention, self.placement, attention_name(attention))


class BasicBlock(_ResidualBlock):
    """Two 3×3 convs, post-activation: relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))."""

    expansion = 1

    def __init__(self, in_channels: int, planes: int, stride: int, shortcut: nn.Module,
                 attention: AttentionFactory, placement: str | None, groups: int = 1, base_width: int = 64,
                 fused_tail: bool = False):
        super().__init__()
        if groups != 1 or base_width != 64:
            raise ValueError("BasicBlock supports only groups=1 and base_width=64")
        out = planes
        replacement = self._place(
            attention, placement,
            {"standard": out, "pre": in_channels, "post": out, "identity": out, "after_3x3_conv": out},
            in_channels=in_channels, out_channels=out, stride=stride,
        )
        if replacement is None:
            self.conv1 = conv3x3(in_channels, out, stride)
            self.bn1 = nn.BatchNorm2d(out)
        self.conv2 = conv3x3(out, out)
        self.bn2 = nn.BatchNorm2d(out)
        self.shortcut = shortcut
        self._fuse_tail(fused_tail, attention)

    def last_bn(self) -> nn.BatchNorm2d:
        return self.bn2

    def forward(self, x: Tensor) -> Tensor:
        out = self.attend("pre", x)
        if self.placement == REPLACED:
            out = self.attention(out)
        else:
            out = F.relu(self.bn1(self.conv1(out)), inplace=True)
        if self.fused_tail:
            return bn_se_add_relu(self.conv2(out), self.shortcut(x), self.bn2, self.attention, self.tail_kernels)
        out = self.attend("standard", self.bn2(self.attend("after_3x3_conv", self.conv2(out))))
        identity = self.attend("identity", self.shortcut(x))
        return self.attend("post", F.relu(out + identity, inplace=True))


class Bottleneck(_ResidualBlock):
    """1×1 → 3×3 (stride, groups) → 1×1 ×4, post-activation (torchvision's "ResNet v1.5");
    ``stride_in_1x1=True``: the stride on the first 1×1 instead, as in He et al.'s and the SE paper's
    released Caffe models ("v1": the same parameters, 3.86 instead of 4.09 GMACs for ResNet-50)."""

    expansion = 4

    def __init__(self, in_channels: int, planes: int, stride: int, shortcut: nn.Module,
                 attention: AttentionFactory, placement: str | None, groups: int = 1, base_width: int = 64,
                 fused_tail: bool = False, stride_in_1x1: bool = False):
        super().__init__()
        width = int(planes * base_width / 64) * groups
        out = planes * self.expansion
        stride_1x1, stride_3x3 = (stride, 1) if stride_in_1x1 else (1, stride)
        self.conv1 = conv1x1(in_channels, width, stride_1x1)
        self.bn1 = nn.BatchNorm2d(width)
        replacement = self._place(
            attention, placement,
            {"standard": out, "pre": in_channels, "post": out, "identity": out, "3x3": width,
             "after_3x3_conv": width},
            in_channels=width, out_channels=width, stride=stride_3x3, groups=groups,
        )
        if replacement is None:
            self.conv2 = conv3x3(width, width, stride_3x3, groups)
            self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = conv1x1(width, out)
        self.bn3 = nn.BatchNorm2d(out)
        self.shortcut = shortcut
        self._fuse_tail(fused_tail, attention)

    def last_bn(self) -> nn.BatchNorm2d:
        return self.bn3

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(self.attend("pre", x))), inplace=True)
        if self.placement == REPLACED:
            out = self.attention(out)
        else:
            out = F.relu(self.bn2(self.attend("after_3x3_conv", self.conv2(out))), inplace=True)
        out = self.attend("3x3", out)
        if self.fused_tail:
            return bn_se_add_relu(self.conv3(out), self.shortcut(x), self.bn3, self.attention, self.tail_kernels)
        out = self.attend("standard", self.bn3(self.conv3(out)))
        identity = self.attend("identity", self.shortcut(x))
        return self.attend("post", F.relu(out + identity, inplace=True))


class PreActBasicBlock(_ResidualBlock):
    """Pre-activation basic unit (Wide ResNets, pre-activation ResNet-110): BN-ReLU-conv3×3-BN-ReLU-
    dropout-conv3×3, plus the shortcut, no final ReLU.

    A projection shortcut (1×1 conv, no BN) reads the pre-activated input, as in Zagoruyko and
    Komodakis's code; an identity shortcut reads x itself. ``shortcut`` replaces the default one (e.g.
    option A zero-padding) and ``shares_activation`` says whether it reads the activated input
    (default: where the shape changes): fb.resnet.torch's "both_preact" first unit of a stage.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int, attention: AttentionFactory,
                 placement: str | None, dropout: float = 0.0, *, shortcut: nn.Module | None = None,
                 shares_activation: bool | None = None):
        super().__init__()
        out = out_channels
        self.bn1 = nn.BatchNorm2d(in_channels)
        replacement = self._place(
            attention, placement,
            {"standard": out, "pre": in_channels, "post": out, "identity": out, "after_3x3_conv": out},
            in_channels=in_channels, out_channels=out, stride=stride,
        )
        if replacement is None:
            self.conv1 = conv3x3(in_channels, out, stride)
            self.bn2 = nn.BatchNorm2d(out)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.conv2 = conv3x3(out, out)
        projects = stride != 1 or in_channels != out
        if shortcut is None:
            shortcut = conv1x1(in_channels, out, stride) if projects else nn.Identity()
        self.shortcut = shortcut
        self.shares_activation = projects if shares_activation is None else shares_activation

    def forward(self, x: Tensor) -> Tensor:
        activated = F.relu(self.bn1(x))
        out = self.attend("pre", activated)
        if self.placement == REPLACED:
            out = self.attention(out)
        else:
            out = F.relu(self.bn2(self.conv1(out)), inplace=True)
        out = self.conv2(self.dropout(out))
        out = self.attend("after_3x3_conv", self.attend("standard", out))  # no BN after conv2: the same point
        identity = self.attend("identity", self.shortcut(activated if self.shares_activation else x))
        return self.attend("post", out + identity)


class PreActBottleneck(_ResidualBlock):
    """BN-ReLU-conv1×1-BN-ReLU-conv3×3(stride)-BN-ReLU-conv1×1 (×4), plus the shortcut (ResNet-164)."""

    expansion = 4

    def __init__(self, in_channels: int, planes: int, stride: int, attention: AttentionFactory,
                 placement: str | None):
        super().__init__()
        out = planes * self.expansion
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv1 = conv1x1(in_channels, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        replacement = self._place(
            attention, placement,
            {"standard": out, "pre": in_channels, "post": out, "identity": out, "3x3": planes,
             "after_3x3_conv": planes},
            in_channels=planes, out_channels=planes, stride=stride,
        )
        if replacement is None:
            self.conv2 = conv3x3(planes, planes, stride)
            self.bn3 = nn.BatchNorm2d(planes)
        self.conv3 = conv1x1(planes, out)
        self.projects = stride != 1 or in_channels != out
        self.shortcut = conv1x1(in_channels, out, stride) if self.projects else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        activated = F.relu(self.bn1(x))
        out = F.relu(self.bn2(self.conv1(self.attend("pre", activated))), inplace=True)
        if self.placement == REPLACED:
            out = self.attention(out)
        else:
            out = F.relu(self.bn3(self.attend("after_3x3_conv", self.conv2(out))), inplace=True)
        out = self.attend("standard", self.conv3(self.attend("3x3", out)))
        identity = self.attend("identity", self.shortcut(activated if self.projects else x))
        return self.attend("post", out + identity)


def init_weights(model: nn.Module, zero_init_residual: bool = False) -> None:
    """torchvision's ResNet initialisation (Linear layers keep PyTorch's default); attention modules keep
    their own, but for a conv replacement's branches (``placement.initialise_backbone``)."""
    def initialise(module: nn.Module) -> None:
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(module, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)

    initialise_backbone(model, initialise)
    if zero_init_residual:
        for module in model.modules():
            if isinstance(module, (BasicBlock, Bottleneck)):
                nn.init.zeros_(module.last_bn().weight)
