"""FcaNet (fca): the DCT pooling against the paper's formula for each map size, parameter count, channel groups."""
import math
from functools import lru_cache

import pytest
import torch

from attn_zoo.attention._width import reduced_width
from attn_zoo.attention.fca import FrequencyChannelAttention
from attn_zoo.cost import count_params
from attention_checks import randomize

# the paper's top-16 (u, v) on the 7×7 grid, in rank order
TOP16 = [(0, 0), (0, 1), (6, 0), (0, 5), (0, 2), (1, 0), (1, 2), (4, 0),
         (5, 0), (1, 6), (3, 0), (0, 4), (0, 6), (0, 3), (3, 5), (2, 2)]


@pytest.mark.parametrize("channels", [64, 256, 512])
def test_parameter_count_is_the_mlp(channels):
    d = reduced_width(channels, 16)
    assert count_params(FrequencyChannelAttention(channels)) == 2 * channels * d


@lru_cache(maxsize=None)
def dct_2d(u: int, v: int, height: int, width: int) -> torch.Tensor:
    """The paper's 2-D DCT basis B_{u,v}(h, w), orthonormal scaling, by its definition."""
    basis = torch.empty(height, width, dtype=torch.float64)
    for h in range(height):
        for w in range(width):
            basis[h, w] = math.cos(math.pi * u * (h + 0.5) / height) * math.cos(math.pi * v * (w + 0.5) / width)
    scale_u = math.sqrt((1 if u == 0 else 2) / height)
    scale_v = math.sqrt((1 if v == 0 else 2) / width)
    return basis * scale_u * scale_v


@pytest.mark.parametrize("size,scale", [(7, 1), (14, 2), (28, 4)])
def test_matches_the_paper_formula_on_multiples_of_seven(size, scale):
    channels = 32  # 16 groups of 2 channels
    module = randomize(FrequencyChannelAttention(channels, reduction=4, divisor=1, min_width=1))
    x = torch.randn(2, channels, size, size, dtype=torch.float64)
    pooled = torch.stack([
        (x[:, c] * dct_2d(scale * TOP16[c // 2][0], scale * TOP16[c // 2][1], size, size)).sum(dim=(1, 2))
        for c in range(channels)
    ], dim=1)
    w1, w2 = module.reduce.weight.flatten(1).double(), module.expand.weight.flatten(1).double()
    gate = torch.sigmoid(torch.relu(pooled @ w1.T) @ w2.T)
    torch.testing.assert_close(module.double()(x), x * gate[:, :, None, None])


def test_other_sizes_floor_the_scaled_frequencies():
    module = FrequencyChannelAttention(16)
    u, v = module.frequencies_for(32, 5)
    assert u.tolist() == [a * 32 // 7 for a, _ in TOP16]
    assert v.tolist() == [b * 5 // 7 for _, b in TOP16]
    assert (u < 32).all() and (v < 5).all()


def test_one_by_one_map_pools_like_global_average():
    module = FrequencyChannelAttention(16, reduction=4)
    x = torch.randn(2, 16, 1, 1)
    gate = torch.sigmoid(module.expand(torch.relu(module.reduce(x))))
    torch.testing.assert_close(module(x), x * gate)


def test_fewer_channels_than_frequencies_take_the_top_ranked_ones():
    u, v = FrequencyChannelAttention(3).frequencies_for(7, 7)
    assert list(zip(u.tolist(), v.tolist())) == TOP16[:3]


def test_uneven_channel_counts_split_into_near_equal_groups():
    u, _ = FrequencyChannelAttention(40, frequencies=16).frequencies_for(7, 7)
    group_sizes = torch.bincount(torch.arange(40) * 16 // 40)
    assert group_sizes.tolist().count(2) + group_sizes.tolist().count(3) == 16
    assert u[0].item() == 0 and u[-1].item() == TOP16[15][0]


@pytest.mark.parametrize("frequencies", [0, 33])
def test_rejects_invalid_frequency_count(frequencies):
    with pytest.raises(ValueError, match="frequencies must be in 1..32"):
        FrequencyChannelAttention(16, frequencies=frequencies)
