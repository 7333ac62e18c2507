"""Gather-Excite (Hu, Shen, Albanie, Sun, Vedaldi: "Gather-Excite: Exploiting Feature Context in
Convolutional Neural Networks", NeurIPS 2018).

    g = gather(x)                 (N, C, H/e, W/e); global (1×1) when extent e = 0
    g = MLP(g)                    only with ``use_mlp``: 1×1 conv C→d, ReLU, 1×1 conv d→C (with
                                  ``extra_params`` the paper's GE-θ⁺; without, a local SE, or SE at e = 0)
    y = x ⊙ sigmoid(interp(g))    nearest-neighbour interpolation back to H×W

The gather is, by ``extra_params``:

- False (GE-θ⁻, parameter-free): average pooling, global for e = 0, else a (2e−1)×(2e−1) window
  with stride e and padding e−1, padding excluded from the mean (the map shrinks by e; each value
  summarises a window of extent ≈ e around its sampling point, and the nearest interpolation spreads
  it over the e×e block of that point, which lies at the window's far end, not its centre; as timm).
- True (GE-θ): log2(e) depthwise 3×3 stride-2 convolutions (no bias), each followed by BN, with
  ReLU between them.

The defaults (global GE-θ⁻, no MLP) are the paper's parameter-free operator: y = x ⊙ σ(mean x).
GE-θ⁻ with ``use_mlp`` and e = 0 is SE.

Parameters: θ⁻: 0; θ: log2(e)·11C (9C per depthwise conv, 2C per BN); MLP: 2Cd + d + C, with
d = C/r rounded to a multiple of ``divisor``, at least ``min_width`` (as ``se``).

Departures: e must be 0 or a power of two (the paper uses 2, 4, 8 and global). The paper's global
GE-θ (a depthwise conv whose kernel spans the whole map) needs the map size fixed at construction,
which a module here does not know, so ``extra_params`` needs e ≥ 2. BN in the gather uses running
statistics when a training batch gives one value per channel (``TolerantBatchNorm2d``).
"""
import torch.nn.functional as F
from torch import Tensor, nn

from attn_zoo.attention._batchnorm import TolerantBatchNorm2d
from attn_zoo.attention._width import reduced_width
from attn_zoo.registry import register_attention


def strided_depthwise_gather(channels: int, steps: int) -> nn.Sequential:
    layers = []
    for step in range(steps):
        layers += [nn.Conv2d(channels, channels, 3, 2, 1, groups=channels, bias=False), TolerantBatchNorm2d(channels)]
        if step < steps - 1:
            layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


@register_attention("ge", "Gather-Excite: pooled or strided-depthwise gather, sigmoid, nearest upsample")
class GatherExcite(nn.Module):
    def __init__(self, channels: int, *, extent: int = 0, extra_params: bool = False, use_mlp: bool = False,
                 reduction: float = 16, divisor: int = 8, min_width: int = 8):
        super().__init__()
        if extent < 0 or (extent and extent & (extent - 1)) or extent == 1:
            raise ValueError(f"extent must be 0 (global) or a power of two >= 2, got {extent}")
        if extra_params and extent == 0:
            raise ValueError("extra_params=True needs extent >= 2 (a power of two); "
                             "the global θ gather needs a fixed map size")
        self.extent = extent
        self.gather = strided_depthwise_gather(channels, extent.bit_length() - 1) if extra_params else None
        if use_mlp:
            hidden = reduced_width(channels, reduction, divisor=divisor, min_width=min_width)
            self.mlp = nn.Sequential(nn.Conv2d(channels, hidden, 1), nn.ReLU(inplace=True), nn.Conv2d(hidden, channels, 1))
        else:
            self.mlp = nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        gathered = self.mlp(self._gather(x))
        if gathered.shape[-2:] != x.shape[-2:]:
            gathered = F.interpolate(gathered, size=x.shape[-2:], mode="nearest")
        return x * gathered.sigmoid()

    def _gather(self, x: Tensor) -> Tensor:
        if self.gather is not None:
            return self.gather(x)
        if self.extent == 0:
            return x.mean(dim=(2, 3), keepdim=True)
        window = 2 * self.extent - 1
        return F.avg_pool2d(x, window, self.extent, self.extent - 1, count_include_pad=False)
