"""FcaNet (fca): the DCT pooling against the paper's formula for each map size, parameter count, channel groups."""
import math
from functools import lru_cache

import pytest
import torch

from attn_zoo.attention.fca import FrequencyChannelAttention
from attn_zoo.cost import count_params
from attention_checks import randomize

# the authors' three orders of (u, v) on the 7×7 grid (their get_freq_indices lists, as pairs)
ORDERS = {
    "top": [(0, 0), (0, 1), (6, 0), (0, 5), (0, 2), (1, 0), (1, 2), (4, 0), (5, 0), (1, 6), (3, 0), (0, 4), (0, 6),
            (0, 3), (3, 5), (2, 2), (4, 6), (6, 3), (3, 3), (5, 3), (5, 5), (2, 1), (6, 1), (5, 2), (5, 4), (3, 2),
            (3, 1), (4, 1), (2, 3), (2, 0), (6, 5), (1, 3)],
    "low": [(0, 0), (0, 1), (1, 0), (1, 1), (0, 2), (2, 0), (2, 1), (1, 2), (2, 2), (0, 3), (3, 0), (4, 0), (0, 4),
            (1, 3), (3, 1), (0, 5), (1, 4), (2, 3), (3, 2), (4, 1), (5, 0), (0, 6), (1, 5), (2, 4), (3, 3), (4, 2),
            (5, 1), (6, 0), (1, 6), (2, 5), (3, 4), (4, 3)],
    "bot": [(6, 6), (1, 4), (3, 4), (3, 6), (2, 6), (4, 3), (1, 1), (2, 4), (4, 4), (4, 5), (5, 6), (1, 5), (4, 2),
            (6, 2), (2, 5), (5, 1), (6, 4), (1, 3), (6, 5), (2, 0), (2, 3), (4, 1), (3, 1), (3, 2), (5, 4), (5, 2),
            (6, 1), (2, 1), (5, 5), (5, 3), (3, 3), (6, 3)],
}
TOP16 = ORDERS["top"][:16]  # the paper's choice


@pytest.mark.parametrize("channels, hidden", [(64, 8), (256, 16), (512, 32)])
def test_parameter_count_is_the_mlp(channels, hidden):
    """d = C/16, rounded to a multiple of 8, at least 8 (at C=64: 8, where the authors' C//16 gives 4)."""
    assert count_params(FrequencyChannelAttention(channels)) == 2 * channels * hidden


@pytest.mark.parametrize("selection", ORDERS)
def test_each_selection_takes_the_authors_order(selection):
    u, v = FrequencyChannelAttention(32, frequencies=32, selection=selection).frequencies_for(7, 7)
    assert list(zip(u.tolist(), v.tolist())) == ORDERS[selection]


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


@pytest.mark.parametrize("size,scale,selection", [(7, 1, "top"), (14, 2, "top"), (28, 4, "top"), (14, 2, "low"),
                                                  (7, 1, "bot")])
def test_matches_the_paper_formula_on_multiples_of_seven(size, scale, selection):
    channels = 32  # 16 groups of 2 channels
    module = randomize(FrequencyChannelAttention(channels, selection=selection, reduction=4, divisor=1, min_width=1))
    x = torch.randn(2, channels, size, size, dtype=torch.float64)
    order = ORDERS[selection]
    pooled = torch.stack([
        (x[:, c] * dct_2d(scale * order[c // 2][0], scale * order[c // 2][1], size, size)).sum(dim=(1, 2))
        for c in range(channels)
    ], dim=1)
    w1, w2 = module.reduce.weight.flatten(1).double(), module.expand.weight.flatten(1).double()
    gate = torch.sigmoid(torch.relu(pooled @ w1.T) @ w2.T)
    torch.testing.assert_close(module.double()(x), x * gate[:, :, None, None])


def test_other_sizes_floor_the_scaled_frequencies():
    """At 32×5: (6, 0) → (⌊6·32/7⌋, 0) = (27, 0); (0, 5) → (0, ⌊5·5/7⌋) = (0, 3); (0, 1) → (0, 0)."""
    module = FrequencyChannelAttention(16)
    u, v = module.frequencies_for(32, 5)
    assert list(zip(u.tolist(), v.tolist()))[:4] == [(0, 0), (0, 0), (27, 0), (0, 3)]
    assert (u < 32).all() and (v < 5).all()


def test_a_four_by_four_map_keeps_nine_distinct_frequencies_of_the_top_sixteen():
    u, v = FrequencyChannelAttention(16).frequencies_for(4, 4)
    pairs = list(zip(u.tolist(), v.tolist()))
    assert len(set(pairs)) == 9 and pairs.count((0, 0)) == 3


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


def test_rejects_an_unknown_selection():
    with pytest.raises(ValueError, match="selection must be one of top, low, bot, got 'mid'"):
        FrequencyChannelAttention(16, selection="mid")


def test_flops_count_the_mlp_only_as_they_do_for_se():
    """FLOPs count no module's pooling (``attn_zoo.cost``): FCA's DCT pooling was an einsum, a batched
    matmul to the FLOP counter, which added 2·C·H·W (32,768 here) to a module costing 2·(2·C·d)."""
    from attn_zoo import create_attention
    from attn_zoo.cost import count_flops

    fca, se = FrequencyChannelAttention(16, divisor=1, min_width=1), create_attention("se", 16, divisor=1, min_width=1)
    assert count_flops(fca, (16, 32, 32)) == count_flops(se, (16, 32, 32)) == 2 * 2 * 16 * 1
