"""FcaNet multi-spectral channel attention (Qin, Zhang, Wu, Li: "FcaNet: Frequency Channel
Attention Networks", ICCV 2021).

Channels are split into K groups (K = ``frequencies``, the paper's top-16); group k is pooled with
one 2-D DCT-II basis function of frequency (u_k, v_k):

    B_{u,v}(h, w) = c_u(H) cos(π u (h + ½) / H) · c_v(W) cos(π v (w + ½) / W)
    c_0(L) = 1/√L, c_u(L) = √(2/L) for u > 0                  (orthonormal, as the authors' code)
    s_c = Σ_{h,w} x_{c,h,w} · B_{u_k,v_k}(h, w)                for c in group k
    y = x ⊙ sigmoid(W_2 · relu(W_1 · s))                       SE MLP, no biases (as the authors' code)

The (u, v) are the first K of one of the authors' three orders of the 7×7 grid's frequencies
(``selection``, their ``top``/``low``/``bot`` lists): ``top`` ranks single frequencies by the
accuracy each gave alone (the paper's choice, ``top16``), ``low`` takes the lowest frequencies first
and ``bot`` the worst-ranked first (the paper's ablation of the selection). For a map of H×W the
basis is computed on the fly for that size, with the 7×7 indices scaled as u·H/7, v·W/7 and floored:
at 7·m×7·m this is the authors' own scaling (u·m), at other sizes the nearest lower frequency of the
same relative position, and on a 1×1 map every group reduces to global average pooling (B = 1).
Small maps keep few distinct frequencies: of the top 16, 9 distinct pairs at 4×4 (3 groups pool
by the plain average) and 3 at 2×2 (8 groups), so where a network's last stage is that small
(ImageNet strides on small images) the multi-spectral pooling is mostly global average pooling; the
CIFAR ResNets' last stage is 8×8, where all 16 stay distinct.

Channel groups: channel c belongs to group ⌊c·K'/C⌋ with K' = min(K, C), so groups are as even as
the channel count allows; the authors require C divisible by K, where this is the same split.
With fewer channels than frequencies, channel c takes the c-th ranked frequency.

Parameters: 2·C·d (the MLP; the DCT bases are fixed), d = C/r rounded to a multiple of
``divisor``, at least ``min_width`` (as ``se``).

Departures: the authors first resize every map to a fixed per-stage size (56, 28, 14, 7) by
adaptive average pooling and use fixed bases; here the bases follow the map's own size (no
resize, no per-stage size to configure). The MLP width is rounded as in ``se``.
"""

import torch
from torch import Tensor, nn

from attn_zoo.attention._dct import dct_basis
from attn_zoo.attention._width import reduced_width
from attn_zoo.registry import register_attention

# The authors' three orders of 32 of the 7×7 grid's 2-D DCT frequencies: (u along H, v along W).
FREQUENCY_ORDERS = {
    "top": ((0, 0, 6, 0, 0, 1, 1, 4, 5, 1, 3, 0, 0, 0, 3, 2, 4, 6, 3, 5, 5, 2, 6, 5, 5, 3, 3, 4, 2, 2, 6, 1),
            (0, 1, 0, 5, 2, 0, 2, 0, 0, 6, 0, 4, 6, 3, 5, 2, 6, 3, 3, 3, 5, 1, 1, 2, 4, 2, 1, 1, 3, 0, 5, 3)),
    "low": ((0, 0, 1, 1, 0, 2, 2, 1, 2, 0, 3, 4, 0, 1, 3, 0, 1, 2, 3, 4, 5, 0, 1, 2, 3, 4, 5, 6, 1, 2, 3, 4),
            (0, 1, 0, 1, 2, 0, 1, 2, 2, 3, 0, 0, 4, 3, 1, 5, 4, 3, 2, 1, 0, 6, 5, 4, 3, 2, 1, 0, 6, 5, 4, 3)),
    "bot": ((6, 1, 3, 3, 2, 4, 1, 2, 4, 4, 5, 1, 4, 6, 2, 5, 6, 1, 6, 2, 2, 4, 3, 3, 5, 5, 6, 2, 5, 5, 3, 6),
            (6, 4, 4, 6, 6, 3, 1, 4, 4, 5, 6, 5, 2, 2, 5, 1, 4, 3, 5, 0, 3, 1, 1, 2, 4, 2, 1, 1, 5, 3, 3, 3)),
}
MAX_FREQUENCIES = 32
REFERENCE_GRID = 7


@register_attention("fca", "FcaNet: multi-spectral (2-D DCT) channel pooling, SE MLP, sigmoid")
class FrequencyChannelAttention(nn.Module):
    def __init__(self, channels: int, *, frequencies: int = 16, selection: str = "top", reduction: float = 16,
                 divisor: int = 8, min_width: int = 8):
        super().__init__()
        if not 1 <= frequencies <= MAX_FREQUENCIES:
            raise ValueError(f"frequencies must be in 1..{MAX_FREQUENCIES}, got {frequencies}")
        if selection not in FREQUENCY_ORDERS:
            raise ValueError(f"selection must be one of {', '.join(FREQUENCY_ORDERS)}, got {selection!r}")
        groups = min(frequencies, channels)
        group_of_channel = torch.arange(channels) * groups // channels
        order_u, order_v = FREQUENCY_ORDERS[selection]
        self.register_buffer("u", torch.tensor(order_u)[group_of_channel], persistent=False)
        self.register_buffer("v", torch.tensor(order_v)[group_of_channel], persistent=False)
        hidden = reduced_width(channels, reduction, divisor=divisor, min_width=min_width)
        self.reduce = nn.Conv2d(channels, hidden, 1, bias=False)
        self.act = nn.ReLU(inplace=True)
        self.expand = nn.Conv2d(hidden, channels, 1, bias=False)
        # the bases depend only on the map size: built once per (H, W, device, dtype), not per forward
        self._bases: dict[tuple, tuple[Tensor, Tensor]] = {}

    def frequencies_for(self, height: int, width: int) -> tuple[Tensor, Tensor]:
        """Each channel's (u, v) scaled from the 7×7 reference grid to a height×width map."""
        return self.u * height // REFERENCE_GRID, self.v * width // REFERENCE_GRID

    def bases(self, height: int, width: int, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        key = (height, width, self.u.device, dtype)
        if key not in self._bases:
            u, v = self.frequencies_for(height, width)
            self._bases[key] = dct_basis(u, height).to(dtype), dct_basis(v, width).to(dtype)
        return self._bases[key]

    def forward(self, x: Tensor) -> Tensor:
        basis_h, basis_w = self.bases(*x.shape[-2:], x.dtype)  # (C, H), (C, W)
        # weighted sums, as the authors' (x * filter).sum: an einsum became a batched matmul, which
        # the FLOP counter counts (2·C·H·W a module, 17 times SE's MLP in ResNet-20) while it counts
        # no other module's pooling, though FcaNet costs what SE costs
        pooled = ((x * basis_h[:, :, None]).sum(2) * basis_w).sum(2)[:, :, None, None]
        return x * self.expand(self.act(self.reduce(pooled))).sigmoid()
