import pytest
import torch

import attn_zoo
from attn_zoo.attention._width import reduced_width
from attn_zoo.profile import count_params


def test_registry_lists_baseline_and_se():
    names = attn_zoo.list_attention()
    assert {"none", "se"} <= set(names)
    assert names == sorted(names)


def test_unknown_attention_names_the_valid_ones():
    with pytest.raises(KeyError, match="unknown attention 'sse'; valid: .*none.*se"):
        attn_zoo.create_attention("sse", 64)


def test_unknown_option_names_the_valid_ones():
    with pytest.raises(TypeError, match="no option ratio; valid: divisor, min_width, reduction"):
        attn_zoo.create_attention("se", 64, ratio=4)


@pytest.mark.parametrize("channels,reduction", [(128, 16), (256, 16), (512, 16), (128, 8), (96, 4)])
def test_se_parameter_count_matches_paper_formula(channels, reduction):
    # with C/r a multiple of 8 the rounding is exact: 2C²/r + C/r + C
    module = attn_zoo.create_attention("se", channels, reduction=reduction)
    assert count_params(module) == 2 * channels**2 // reduction + channels // reduction + channels


def test_se_exact_paper_width_without_rounding():
    module = attn_zoo.create_attention("se", 64, reduction=16, divisor=1, min_width=1)
    assert count_params(module) == 2 * 64 * 4 + 4 + 64


@pytest.mark.parametrize(
    "channels,reduction,expected",
    [(64, 16, 8), (16, 16, 8), (256, 16, 16), (1, 16, 8), (200, 16, 16), (1000, 16, 64)],
)
def test_reduced_width_rounds_to_eight_with_floor(channels, reduction, expected):
    assert reduced_width(channels, reduction) == expected


def test_reduced_width_rejects_nonpositive_reduction():
    with pytest.raises(ValueError, match="reduction must be > 0"):
        reduced_width(64, 0)


@pytest.mark.parametrize("name", attn_zoo.list_attention())
@pytest.mark.parametrize("shape", [(2, 16, 8, 8), (1, 1, 1, 1), (3, 64, 5, 7)])
def test_module_preserves_shape_and_passes_gradients(name, shape):
    module = attn_zoo.create_attention(name, shape[1])
    x = torch.randn(shape, requires_grad=True)
    y = module(x)
    assert y.shape == x.shape
    y.square().sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    for parameter_name, parameter in module.named_parameters():
        assert parameter.grad is not None, parameter_name


def test_se_matches_its_formula():
    torch.manual_seed(0)
    module = attn_zoo.create_attention("se", 32, reduction=4)
    x = torch.randn(2, 32, 6, 6)
    squeeze = x.mean(dim=(2, 3))
    w1, b1 = module.reduce.weight.flatten(1), module.reduce.bias
    w2, b2 = module.expand.weight.flatten(1), module.expand.bias
    gate = torch.sigmoid(torch.relu(squeeze @ w1.T + b1) @ w2.T + b2)
    torch.testing.assert_close(module(x), x * gate[:, :, None, None])


def test_none_is_identity_without_parameters():
    module = attn_zoo.create_attention("none", 8)
    x = torch.randn(2, 8, 4, 4)
    assert module(x) is x and count_params(module) == 0
