"""CBAM (Woo et al., ECCV 2018): formulas for each half and each order, parameter counts (ResNet-50
totals of the paper and of timm), and agreement with timm's CbamModule."""
import pytest
import timm
import torch
from timm.layers.cbam import CbamModule

import attn_zoo
from attn_zoo.cost import count_params

RESNET50_PARAMS = 25_557_032
RESNET50_STAGES = ((256, 3), (512, 4), (1024, 6), (2048, 3))  # (block output channels, blocks)


def channel_map(module, x):
    mlp = module.excite
    return torch.sigmoid(mlp(x.mean((2, 3), keepdim=True)) + mlp(x.amax((2, 3), keepdim=True)))


def spatial_map(module, x):
    pooled = torch.cat([x.mean(1, keepdim=True), x.amax(1, keepdim=True)], dim=1)
    return torch.sigmoid(module.bn(module.conv(pooled)))


def randomise_batchnorm(bn):
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-0.5, 0.5)
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 1.5)


@pytest.fixture
def x():
    torch.manual_seed(0)
    return torch.randn(2, 32, 7, 9)


@pytest.fixture
def cbam():
    torch.manual_seed(1)
    module = attn_zoo.create_attention("cbam", 32).eval()
    randomise_batchnorm(module.spatial.bn)
    return module


def test_channel_then_spatial_by_default(cbam, x):
    refined = x * channel_map(cbam.channel, x)
    torch.testing.assert_close(cbam(x), refined * spatial_map(cbam.spatial, refined))


def test_spatial_then_channel(cbam, x):
    cbam.order = "spatial_channel"
    refined = x * spatial_map(cbam.spatial, x)
    torch.testing.assert_close(cbam(x), refined * channel_map(cbam.channel, refined))


def test_parallel_sums_the_branch_outputs(cbam, x):
    cbam.order = "parallel"
    torch.testing.assert_close(cbam(x), x * channel_map(cbam.channel, x) + x * spatial_map(cbam.spatial, x))


def test_no_internal_residual(cbam, x):
    # both maps lie in (0, 1), so the output never exceeds the input; x + x ⊙ M would
    assert (cbam(x).abs() <= x.abs()).all()


def test_channel_squeeze_choices_for_table_1(x):
    for squeeze, pool in (("avg", lambda t: t.mean((2, 3), keepdim=True)), ("max", lambda t: t.amax((2, 3), keepdim=True))):
        module = attn_zoo.create_attention("cbam_channel", 32, squeeze=squeeze)
        torch.testing.assert_close(module(x), x * torch.sigmoid(module.excite(pool(x))))


@pytest.mark.parametrize("kernel_size", [3, 7])
@pytest.mark.parametrize("spatial_bn", [True, False])
def test_spatial_half_formula_and_parameters(kernel_size, spatial_bn, x):
    module = attn_zoo.create_attention("cbam_spatial", 32, kernel_size=kernel_size, spatial_bn=spatial_bn).eval()
    assert count_params(module) == 2 * kernel_size**2 + (2 if spatial_bn else 1)
    assert (module.conv.bias is None) == spatial_bn
    torch.testing.assert_close(module(x), x * spatial_map(module, x))


@pytest.mark.parametrize("kernel_size", [0, 4])
def test_spatial_kernel_must_be_odd(kernel_size):
    with pytest.raises(ValueError, match="positive odd"):
        attn_zoo.create_attention("cbam", 32, kernel_size=kernel_size)


def test_unknown_order_names_the_valid_ones():
    with pytest.raises(ValueError, match="valid: channel_spatial, spatial_channel, parallel"):
        attn_zoo.create_attention("cbam", 32, order="both")


@pytest.mark.parametrize("channels,reduction", [(256, 16), (64, 16), (16, 16), (96, 8)])
@pytest.mark.parametrize("mlp_bias", [True, False])
def test_parameter_count(channels, reduction, mlp_bias):
    hidden = channels // reduction  # exact here: C/r is a whole number
    channel_params = 2 * channels * hidden + (hidden + channels if mlp_bias else 0)
    module = attn_zoo.create_attention("cbam", channels, reduction=reduction, mlp_bias=mlp_bias)
    assert count_params(module.channel) == channel_params
    assert count_params(module) == channel_params + 2 * 49 + 2


@pytest.mark.parametrize("mlp_bias,total", [(True, 28_089_624), (False, 28_073_576)])
def test_resnet50_totals_of_the_paper_and_of_timm(mlp_bias, total):
    attention = sum(
        blocks * count_params(attn_zoo.create_attention("cbam", channels, mlp_bias=mlp_bias))
        for channels, blocks in RESNET50_STAGES
    )
    assert RESNET50_PARAMS + attention == total


def test_timm_resnet50_with_cbam_has_timm_total():
    model = timm.create_model("resnet50", pretrained=False, block_args=dict(attn_layer="cbam"))
    assert count_params(model) == 28_073_576


def copy_from_timm(module, reference):
    module.channel.excite.reduce.load_state_dict(reference.channel.fc1.state_dict())
    module.channel.excite.expand.load_state_dict(reference.channel.fc2.state_dict())
    module.spatial.conv.load_state_dict(reference.spatial.conv.conv.state_dict())
    module.spatial.bn.load_state_dict(reference.spatial.conv.bn.state_dict())


@pytest.mark.parametrize("channels", [64, 256])
@pytest.mark.parametrize("mlp_bias", [False, True])
@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
def test_matches_timm_cbam_module(channels, mlp_bias, training):
    torch.manual_seed(0)
    reference = CbamModule(channels, mlp_bias=mlp_bias)
    randomise_batchnorm(reference.spatial.conv.bn)
    module = attn_zoo.create_attention("cbam", channels, mlp_bias=mlp_bias)
    copy_from_timm(module, reference)
    reference.train(training), module.train(training)
    x = torch.randn(2, channels, 7, 5)
    torch.testing.assert_close(module(x), reference(x), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(module.spatial.bn.running_mean, reference.spatial.conv.bn.running_mean)
    assert count_params(module) == count_params(reference)


@pytest.mark.parametrize("name", ["cbam_spatial", "cbam"])
def test_zero_init_spatial_starts_each_spatial_gate_at_one_half_as_the_released_code(name, x):
    """Woo et al.'s code sets the spatial BN's weight to 0: M_s = sigmoid(0) = 0.5 everywhere at the
    start, in training and in eval mode, and the weight still learns (its gradient is not 0)."""
    torch.manual_seed(1)
    module = attn_zoo.create_attention(name, 32, zero_init_spatial=True)
    spatial = module if name == "cbam_spatial" else module.spatial
    refined = x if name == "cbam_spatial" else x * channel_map(module.channel, x)
    for train in (True, False):
        module.train(train)
        torch.testing.assert_close(module(x), 0.5 * refined, rtol=0, atol=0)
    module.train()
    module(x).square().sum().backward()
    assert spatial.bn.weight.item() == 0 and spatial.bn.weight.grad.abs().item() > 1e-3
    default = attn_zoo.create_attention(name, 32)
    assert (default if name == "cbam_spatial" else default.spatial).bn.weight.item() == 1


def test_zero_init_spatial_needs_the_spatial_bn():
    with pytest.raises(ValueError, match="needs spatial_bn=true"):
        attn_zoo.create_attention("cbam", 32, spatial_bn=False, zero_init_spatial=True)


def test_zero_init_spatial_reaches_the_model_from_the_command_line():
    from attn_zoo.config import build_model, compose

    model = build_model(compose(["attention=cbam", "attention.zero_init_spatial=true"]), 10)
    weights = [m.bn.weight.item() for m in model.modules() if type(m).__name__ == "CBAMSpatialAttention"]
    assert len(weights) == 9 and set(weights) == {0.0}
