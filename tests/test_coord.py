"""Coordinate attention (coord): parameter count, equality with timm's CoordAttn, one gate per axis."""
import pytest
import torch
from timm.layers.coord_attn import CoordAttn

from attn_zoo.attention.coord import CoordinateAttention
from attn_zoo.cost import count_params
from attention_checks import copy_weights, randomize

TIMM_KEYS = {"reduce_norm.": "bn1.", "reduce.": "conv1.", "expand_h.": "conv_h.", "expand_w.": "conv_w."}


@pytest.mark.parametrize("channels,reduction,hidden", [(64, 32, 8), (512, 32, 16), (3, 32, 8), (256, 8, 32)])
def test_parameter_count_formula(channels, reduction, hidden):
    module = CoordinateAttention(channels, reduction=reduction)
    assert module.reduce.out_channels == hidden
    assert count_params(module) == 3 * channels * hidden + 3 * hidden + 2 * channels


@pytest.mark.parametrize("train", [False, True])
def test_matches_timm(train):
    torch.manual_seed(0)
    ours = CoordinateAttention(32, reduction=4, min_width=1)
    reference = randomize(CoordAttn(32, rd_channels=8, bias=True))
    copy_weights(reference, ours, TIMM_KEYS)
    ours.train(train)
    reference.train(train)
    for shape in [(2, 32, 7, 9), (1, 32, 1, 1), (3, 32, 4, 1)]:
        x = torch.randn(shape)
        torch.testing.assert_close(ours(x), reference(x), atol=1e-5, rtol=1e-5)


def test_gates_vary_along_one_axis_each():
    module = randomize(CoordinateAttention(4, min_width=2)).eval()
    x = torch.ones(1, 4, 5, 6) + torch.arange(6.0)  # varies along W only
    gate = module(x) / x
    assert gate.std() > 0
    # the H-pooled row is constant, so the gate is a_h (constant over h) times a_w (varying over w)
    torch.testing.assert_close(gate[:, :, :, :1] * gate[:, :, :1, :] / gate[:, :, :1, :1], gate)


def test_rejects_invalid_options():
    with pytest.raises(ValueError, match="reduction and min_width must be >= 1"):
        CoordinateAttention(8, reduction=0)
