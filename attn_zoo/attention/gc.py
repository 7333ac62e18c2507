"""Global Context block (Cao, Xu, Lin, Wei, Hu: "GCNet: Non-local Networks Meet Squeeze-Excitation
Networks and Beyond", ICCV Workshops 2019; "Global Context Networks", TPAMI 2020).

    p = softmax_{hw}(W_k · x)                   attention pooling: 1×1 conv C→1, softmax over H·W
    c = Σ_{hw} p_{hw} x_{:,hw}                  context, (N, C)
    t = W_2 · relu(LN(W_1 · c))                 transform: 1×1 conv C→d, LayerNorm, ReLU, 1×1 conv d→C
    y = x + t            (fusion="add", the paper's default)
    y = x ⊙ sigmoid(t)   (fusion="scale")

The addition in fusion="add" is part of GC's definition (its fusion step broadcasts the context
onto every position), not a block residual: inside a residual block the block still adds its own
shortcut. As in the authors' code (mmcv's ContextBlock, ``last_zero_init`` on both fusions), the
transform's last conv starts at zero: with fusion="add" the block starts as the identity, with
"scale" every gate starts at sigmoid(0) = 1/2 (timm zeroes it for "add" only); W_k uses Kaiming fan-in
initialisation.

Parameters: (C + 1) + (C·d + d) + 2d + (d·C + C) = 2Cd + 3d + 2C + 1, biases on; d = C/r rounded
to a multiple of ``divisor``, at least ``min_width`` (as ``se``; the paper's r = 16 with C ≥ 256
is exact).

Departures: the width rounding, and where it goes: the authors' released networks put GC in
stages c3-c5 only (ResNet-50's last three; ``backbone.stages=[2,3,4]`` here), while the backbones'
default puts it in every stage (on ResNet-50, three more blocks on the 56×56 maps).
"""
import torch
from torch import Tensor, nn

from attn_zoo.attention._width import reduced_width
from attn_zoo.registry import register_attention

FUSIONS = ("add", "scale")


@register_attention("gc", "Global Context: softmax attention pooling, conv-LN-ReLU-conv, add or scale")
class GlobalContext(nn.Module):
    def __init__(self, channels: int, *, reduction: float = 16, divisor: int = 8, min_width: int = 8,
                 fusion: str = "add"):
        super().__init__()
        if fusion not in FUSIONS:
            raise ValueError(f"fusion must be one of {', '.join(FUSIONS)}, got {fusion!r}")
        hidden = reduced_width(channels, reduction, divisor=divisor, min_width=min_width)
        self.fusion = fusion
        self.attention_logits = nn.Conv2d(channels, 1, 1)
        self.transform = nn.Sequential(
            nn.Conv2d(channels, hidden, 1), nn.LayerNorm([hidden, 1, 1]), nn.ReLU(inplace=True), nn.Conv2d(hidden, channels, 1)
        )
        nn.init.kaiming_normal_(self.attention_logits.weight, mode="fan_in", nonlinearity="relu")
        self.starts_as_identity = fusion == "add"  # x + 0: init=identity keeps it as built
        nn.init.zeros_(self.transform[-1].weight)
        nn.init.zeros_(self.transform[-1].bias)

    def forward(self, x: Tensor) -> Tensor:
        batch, channels = x.shape[:2]
        weights = self.attention_logits(x).flatten(1).softmax(dim=1)  # (N, H·W)
        context = torch.bmm(x.flatten(2), weights.unsqueeze(2)).view(batch, channels, 1, 1)
        transformed = self.transform(context)
        return x + transformed if self.fusion == "add" else x * transformed.sigmoid()
