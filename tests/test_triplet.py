"""Triplet attention (triplet): parameter count, the paper's formula, the odd-kernel check."""
import pytest
import torch
import torch.nn.functional as F

from attn_zoo.attention.triplet import TripletAttention
from attn_zoo.cost import count_params
from attention_checks import randomize


@pytest.mark.parametrize("kernel_size,spatial,branches", [(7, True, 3), (3, True, 3), (7, False, 2)])
def test_parameter_count_formula(kernel_size, spatial, branches):
    module = TripletAttention(64, kernel_size=kernel_size, spatial=spatial)
    assert count_params(module) == branches * (2 * kernel_size**2 + 2)


def gate(x: torch.Tensor, pooled_dim: int, branch) -> torch.Tensor:
    """The paper's branch on the un-rotated tensor: pool over one axis, gate the other two."""
    z = torch.stack([x.amax(dim=pooled_dim), x.mean(dim=pooled_dim)], dim=1)  # (N, 2, a, b)
    norm = branch.norm
    s = F.conv2d(z, branch.conv.weight, padding=branch.conv.padding)
    s = (s - norm.running_mean) / torch.sqrt(norm.running_var + norm.eps) * norm.weight + norm.bias
    return torch.sigmoid(s).squeeze(1).unsqueeze(pooled_dim)


def test_matches_the_paper_formula():
    module = randomize(TripletAttention(5, kernel_size=3)).eval()
    x = torch.randn(2, 5, 6, 4)
    # pooled dims in x: 2 = H, 3 = W, 1 = C; the conv sees (C, W), (W, H) after rotation, (H, W)
    g_cw = gate(x, 2, module.channel_width)
    rotated = x.permute(0, 3, 2, 1)  # (N, W, H, C): pool over W, conv over (H, C)
    g_hc = gate(rotated, 1, module.channel_height).permute(0, 3, 2, 1)
    g_hw = gate(x, 1, module.height_width)
    torch.testing.assert_close(module(x), x * (g_cw + g_hc + g_hw) / 3)


def test_rejects_even_kernel():
    with pytest.raises(ValueError, match="kernel_size must be odd and >= 1, got 4"):
        TripletAttention(8, kernel_size=4)
