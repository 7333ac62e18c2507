"""No attention: the baseline every ablation compares against. f(x) = x, no parameters."""
from torch import Tensor, nn

from attn_zoo.registry import register_attention


@register_attention("none", "No attention (identity): the baseline")
class NoAttention(nn.Identity):
    """Identity; takes the same constructor as every module so backbones need no special case."""

    def __init__(self, channels: int):
        super().__init__()
        self.channels = channels

    def forward(self, x: Tensor) -> Tensor:
        return x
