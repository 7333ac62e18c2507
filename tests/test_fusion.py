"""SK-style fusion (fusion, SKFusion): a conv replacement, parameter counts, equality with timm's SelectiveKernel."""
import pytest
import torch
from timm.layers import SelectiveKernel as TimmSelectiveKernel
from timm.layers.selective_kernel import SelectiveKernelAttn

import attn_zoo
from attn_zoo.attention.fusion import FusionConv, SKFusion
from attn_zoo.cost import count_params
from attention_checks import copy_weights, randomize

ATTN_KEYS = {"reduce_norm.": "bn.", "reduce.": "fc_reduce.", "select.": "fc_select."}


def test_replaces_a_convolution_and_changes_width_and_stride():
    module = attn_zoo.create_attention("fusion", 16, out_channels=32, stride=2, groups=4, kernels=[3, 5])
    assert FusionConv.replaces_conv is True
    assert module(torch.randn(2, 16, 8, 8)).shape == (2, 32, 4, 4)


@pytest.mark.parametrize("inputs,interaction", [(2, False), (3, False), (3, True), (1, True)])
def test_fusion_parameter_count_formula(inputs, interaction):
    channels, d = 64, 32
    gate = "sigmoid" if inputs == 1 else "softmax"
    module = SKFusion(channels, inputs=inputs, gate=gate, interaction=interaction)
    expected = channels * d + 2 * d + inputs * channels * d
    if interaction:
        expected += (inputs * channels) ** 2 + inputs * channels
    assert count_params(module) == expected


def test_block_parameter_count_formula():
    channels, out_channels, groups, kernels = 32, 64, 4, (1, 3, 5)
    module = FusionConv(channels, out_channels=out_channels, groups=groups, kernels=kernels, reduction=4, min_width=8)
    d = max(out_channels // 4, 8)
    convs = sum(k * k * channels * out_channels // groups + 2 * out_channels for k in kernels)
    assert count_params(module) == convs + out_channels * d + 2 * d + 3 * out_channels * d


@pytest.mark.parametrize("train", [False, True])
@pytest.mark.parametrize("inputs", [2, 3])
def test_softmax_fusion_matches_timm_selective_kernel_attention(train, inputs):
    torch.manual_seed(0)
    ours = SKFusion(16, inputs=inputs, reduction=4, min_width=3)
    reference = randomize(SelectiveKernelAttn(16, num_paths=inputs, attn_channels=4))
    copy_weights(reference, ours, ATTN_KEYS)
    ours.train(train)
    reference.train(train)
    xs = [torch.randn(3, 16, 5, 6) for _ in range(inputs)]
    stacked = torch.stack(xs, dim=1)
    torch.testing.assert_close(ours(xs), (stacked * reference(stacked)).sum(dim=1), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("train", [False, True])
def test_block_with_kernels_3_5_7_matches_timm_selective_kernel_without_dilation(train):
    torch.manual_seed(0)
    ours = FusionConv(8, out_channels=16, stride=2, groups=2, kernels=(3, 5, 7), reduction=4, min_width=3)
    reference = randomize(TimmSelectiveKernel(8, 16, kernel_size=[3, 5, 7], stride=2, groups=2, keep_3x3=False,
                                              split_input=False, rd_channels=4))
    keys = {f"branches.{i}.0.": f"paths.{i}.conv." for i in range(3)}
    keys |= {f"branches.{i}.1.": f"paths.{i}.bn." for i in range(3)}
    keys |= {"fuse." + k: "attn." + v for k, v in ATTN_KEYS.items()}
    copy_weights(reference, ours, keys)
    ours.train(train)
    reference.train(train)
    x = torch.randn(2, 8, 9, 9)
    torch.testing.assert_close(ours(x), reference(x), atol=1e-5, rtol=1e-5)


def test_sigmoid_gate_weighs_each_input_by_its_own_sigmoid():
    module = randomize(SKFusion(8, inputs=3, gate="sigmoid", reduction=2, min_width=1)).eval()
    xs = [torch.randn(2, 8, 4, 4) for _ in range(3)]
    norm = module.reduce_norm
    s = sum(xs).mean(dim=(2, 3))
    z = torch.relu((s @ module.reduce.weight.flatten(1).T - norm.running_mean)
                   / torch.sqrt(norm.running_var + norm.eps) * norm.weight + norm.bias)
    logits = (z @ module.select.weight.flatten(1).T).split(8, dim=1)
    expected = sum(torch.sigmoid(l)[:, :, None, None] * x for l, x in zip(logits, xs))
    torch.testing.assert_close(module(xs), expected)


def test_interaction_starts_as_identity_and_then_mixes_inputs():
    plain = randomize(SKFusion(8, inputs=2, min_width=4)).eval()
    mixed = SKFusion(8, inputs=2, min_width=4, interaction=True).eval()
    mixed.load_state_dict(plain.state_dict(), strict=False)
    xs = [torch.randn(2, 8, 3, 3) for _ in range(2)]
    torch.testing.assert_close(mixed(xs), plain(xs))
    with torch.no_grad():
        mixed.interaction.weight.add_(0.3 * torch.randn_like(mixed.interaction.weight))
    assert not torch.allclose(mixed(xs), plain(xs))


def test_one_input_needs_a_sigmoid_gate():
    with pytest.raises(ValueError, match="gate='softmax' needs inputs >= 2.*use gate='sigmoid'"):
        SKFusion(8, inputs=1)
    with pytest.raises(ValueError, match="gate='softmax' needs inputs >= 2"):
        FusionConv(8, kernels=(3,))
    module = attn_zoo.create_attention("fusion", 8, kernels=[3], gate="sigmoid")
    assert module(torch.randn(2, 8, 4, 4)).shape == (2, 8, 4, 4)


def test_inputs_of_different_shapes_are_named():
    module = SKFusion(8, inputs=2)
    with pytest.raises(ValueError, match=r"SKFusion inputs must all be \(N, 8, H, W\) of one shape, "
                                         r"got \[\(2, 8, 4, 4\), \(2, 8, 4, 5\)\]"):
        module([torch.randn(2, 8, 4, 4), torch.randn(2, 8, 4, 5)])
    with pytest.raises(ValueError, match=r"SKFusion inputs must all be \(N, 8, H, W\) of one shape, "
                                         r"got \[\(2, 8, 4, 4\), \(2, 8, 5, 4\)\]"):
        module([torch.zeros(2, 8, 4, 4), torch.zeros(2, 8, 5, 4)])
    with pytest.raises(ValueError, match="expects a list of 2 tensors, got 3"):
        module([torch.randn(2, 8, 4, 4)] * 3)
    with pytest.raises(ValueError, match="a list of 2 tensors, got Tensor"):
        module(torch.randn(2, 8, 4, 4))


@pytest.mark.parametrize("options,message", [
    ({"kernels": (1, 4)}, "kernels must be one or more odd sizes >= 1"),
    ({"kernels": ()}, "kernels must be one or more odd sizes"),
    ({"gate": "tanh"}, "gate must be one of softmax, sigmoid"),
    ({"groups": 3}, "groups must divide"),
    ({"min_width": 0}, "reduction and min_width must be >= 1"),
])
def test_rejects_invalid_options(options, message):
    with pytest.raises(ValueError, match=message):
        FusionConv(16, **options)


def test_multi_input_class_is_not_registered_but_the_block_is():
    from attn_zoo.registry import ATTENTION

    constructors = [ATTENTION.get(name).constructor for name in attn_zoo.list_attention()]
    assert FusionConv in constructors and SKFusion not in constructors
    assert attn_zoo.attention_defaults("fusion")["kernels"] == [1, 3, 5]
