"""The attention registry and every registered module: names and option errors, SE's widths and
counts, shapes, gradients, bf16, channels_last, torch.compile, and each module's yaml."""
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

import attn_zoo
from attn_zoo.attention._width import reduced_width
from attn_zoo.registry import ATTENTION
from attn_zoo.cost import count_params


def test_registry_lists_baseline_and_se():
    names = attn_zoo.list_attention()
    assert {"none", "se"} <= set(names)
    assert names == sorted(names)


def test_unknown_attention_names_the_valid_ones():
    with pytest.raises(KeyError, match="unknown attention 'sse'; valid: .*none.*se"):
        attn_zoo.create_attention("sse", 64)


def test_unknown_option_names_the_valid_ones():
    valid = "act, axis, divisor, .*kernel_size, min_width, mlp_bias, reduction"
    with pytest.raises(TypeError, match=f"no option ratio; valid: {valid}"):
        attn_zoo.create_attention("se", 64, ratio=4)


@pytest.mark.parametrize("name, old, new", [("eca", "k_size", "kernel_size"), ("se", "k_size", "kernel_size"),
                                            ("se", "bias", "mlp_bias"), ("cbam", "bias", "mlp_bias")])
def test_an_old_option_name_says_the_new_one(name, old, new):
    with pytest.raises(TypeError, match=f"has no option {old}; valid: .*{new}.* \\({old} is now {new}\\)$"):
        attn_zoo.create_attention(name, 64, **{old: 3})


def test_an_old_name_the_module_never_took_gets_no_rename_hint():
    with pytest.raises(TypeError, match=r"has no option k_size; valid: init, mlp_bias, reduction, squeeze$"):
        attn_zoo.create_attention("cbam_channel", 64, k_size=3)


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


# Every registered module, including ones added later, meets the shape contract of the
# constructor convention: (N, C, H, W) in, the same shape out, for any C, H, W (``replaces_conv``
# modules too, with their default options).
NAMES = attn_zoo.list_attention()
CHANNELS = (1, 3, 64)
SPATIAL = ((1, 1), (7, 5))
BATCHES = (1, 2)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_module_preserves_shape(name, training):
    torch.manual_seed(0)
    for channels in CHANNELS:
        module = attn_zoo.create_attention(name, channels).train(training)
        for batch in BATCHES:
            for height, width in SPATIAL:
                x = torch.randn(batch, channels, height, width)
                y = module(x)
                assert y.shape == x.shape, (channels, batch, height, width)
                assert torch.isfinite(y).all()


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("shape", [(2, 16, 8, 8), (2, 3, 1, 1), (1, 64, 5, 7)])
def test_gradients_reach_input_and_every_parameter(name, shape):
    torch.manual_seed(0)
    module = attn_zoo.create_attention(name, shape[1]).train()
    x = torch.randn(shape, requires_grad=True)
    module(x).square().sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    for parameter_name, parameter in module.named_parameters():
        assert parameter.grad is not None, parameter_name
        assert torch.isfinite(parameter.grad).all(), parameter_name


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_bfloat16_forward_and_backward(name, training):
    torch.manual_seed(0)
    module = attn_zoo.create_attention(name, 64).to(torch.bfloat16).train(training)
    x = torch.randn(2, 64, 5, 7, dtype=torch.bfloat16, requires_grad=True)
    y = module(x)
    assert y.dtype == torch.bfloat16 and y.shape == x.shape and torch.isfinite(y).all()
    y.float().square().sum().backward()
    assert x.grad.dtype == torch.bfloat16 and torch.isfinite(x.grad).all()


@pytest.mark.parametrize("name", NAMES)
def test_channels_last_input_gives_the_same_output(name):
    torch.manual_seed(0)
    module = attn_zoo.create_attention(name, 64).eval()
    x = torch.randn(2, 64, 5, 7)
    y = module(x.contiguous(memory_format=torch.channels_last))
    assert y.shape == x.shape
    torch.testing.assert_close(y, module(x))


@pytest.mark.slow  # CPU inductor compiles each module (time: BENCHMARKS.md, "The slow tests"): `make test-all` runs these
@pytest.mark.parametrize("name", NAMES)
def test_torch_compile_matches_eager(name):
    torch.manual_seed(0)
    module = attn_zoo.create_attention(name, 16).eval()
    x = torch.randn(2, 16, 7, 5)
    compiled = torch.compile(module)
    torch.testing.assert_close(compiled(x), module(x), rtol=1e-5, atol=1e-5)


def test_se_matches_its_formula():
    torch.manual_seed(0)
    module = attn_zoo.create_attention("se", 32, reduction=4)
    x = torch.randn(2, 32, 6, 6)
    squeeze = x.mean(dim=(2, 3))
    w1, b1 = module.excite.reduce.weight.flatten(1), module.excite.reduce.bias
    w2, b2 = module.excite.expand.weight.flatten(1), module.excite.expand.bias
    gate = torch.sigmoid(torch.relu(squeeze @ w1.T + b1) @ w2.T + b2)
    torch.testing.assert_close(module(x), x * gate[:, :, None, None])


def test_none_is_identity_without_parameters():
    module = attn_zoo.create_attention("none", 8)
    x = torch.randn(2, 8, 4, 4)
    assert module(x) is x and count_params(module) == 0


CONF_ATTENTION = Path(__file__).resolve().parents[1] / "conf" / "attention"


@pytest.mark.parametrize("name", NAMES)
def test_each_module_has_a_yaml_listing_every_option_with_its_default(name):
    """The yaml lists the constructor's options; the options every module takes (``init``) are set
    once, in conf/config.yaml, so a new module's yaml needs none of them."""
    config = OmegaConf.to_container(OmegaConf.load(CONF_ATTENTION / f"{name}.yaml"))
    assert config.pop("name") == name
    assert config == ATTENTION.get(name).defaults()
    common = OmegaConf.to_container(OmegaConf.load(CONF_ATTENTION.parent / "config.yaml"))["attention"]
    assert {**config, **common} == attn_zoo.attention_defaults(name)
