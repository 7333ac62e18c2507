"""Parts shared by the modules that replace a convolution (``replaces_conv = True``): sk, fusion."""
from torch import nn

from attn_zoo.attention._batchnorm import TolerantBatchNorm2d


def conv_bn_relu(in_channels: int, out_channels: int, *, kernel_size: int, dilation: int = 1, stride: int = 1,
                 groups: int = 1) -> nn.Sequential:
    padding = dilation * (kernel_size - 1) // 2
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias=False),
        TolerantBatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


def check_conv_options(channels: int, out_channels: int, stride: int, groups: int) -> None:
    if out_channels < 1 or stride < 1 or groups < 1:
        raise ValueError(f"out_channels, stride and groups must be >= 1, got {out_channels}, {stride}, {groups}")
    if channels % groups or out_channels % groups:
        raise ValueError(f"groups must divide channels and out_channels, got {groups} for {channels}, {out_channels}")
