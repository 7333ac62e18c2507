"""Selective Kernel (sk): a conv replacement, parameter count, equality with timm and the paper, dilated branches."""
import pytest
import torch
from timm.layers import SelectiveKernel as TimmSelectiveKernel

import attn_zoo
from attn_zoo.attention.sk import SelectiveKernel
from attn_zoo.cost import count_params
from attention_checks import copy_weights, randomize

def timm_key_map(branches: int) -> dict[str, str]:
    keys = {f"branches.{i}.0.": f"paths.{i}.conv." for i in range(branches)}
    keys |= {f"branches.{i}.1.": f"paths.{i}.bn." for i in range(branches)}
    return keys | {"reduce_norm.": "attn.bn.", "reduce.": "attn.fc_reduce.", "select.": "attn.fc_select."}


def test_replaces_a_convolution_and_changes_width_and_stride():
    module = attn_zoo.create_attention("sk", 16, out_channels=32, stride=2, groups=4)
    assert SelectiveKernel.replaces_conv is True
    assert module(torch.randn(2, 16, 8, 8)).shape == (2, 32, 4, 4)


@pytest.mark.parametrize("channels,out_channels,groups,branches,reduction,min_width",
                         [(64, 64, 1, 2, 16, 32), (64, 128, 32, 2, 16, 32), (16, 32, 1, 3, 4, 4), (512, 512, 32, 2, 16, 32)])
def test_parameter_count_formula(channels, out_channels, groups, branches, reduction, min_width):
    module = SelectiveKernel(channels, out_channels=out_channels, groups=groups, branches=branches,
                             reduction=reduction, min_width=min_width)
    d = max(out_channels // reduction, min_width)
    expected = (branches * (9 * channels * out_channels // groups + 2 * out_channels)
                + out_channels * d + 2 * d + branches * out_channels * d)
    assert count_params(module) == expected


@pytest.mark.parametrize("train", [False, True])
@pytest.mark.parametrize("channels,out_channels,stride,groups,branches",
                         [(16, 16, 1, 1, 2), (8, 16, 2, 4, 3), (32, 32, 1, 8, 2)])
def test_matches_timm(train, channels, out_channels, stride, groups, branches):
    torch.manual_seed(0)
    reduction, min_width = 4, 6
    ours = SelectiveKernel(channels, out_channels=out_channels, stride=stride, groups=groups, branches=branches,
                           reduction=reduction, min_width=min_width)
    reference = TimmSelectiveKernel(channels, out_channels, kernel_size=[3 + 2 * i for i in range(branches)],
                                    stride=stride, groups=groups, split_input=False,
                                    rd_channels=max(out_channels // reduction, min_width))
    randomize(reference)
    copy_weights(reference, ours, timm_key_map(branches))
    ours.train(train)
    reference.train(train)
    x = torch.randn(3, channels, 9, 8)
    torch.testing.assert_close(ours(x), reference(x), atol=1e-5, rtol=1e-5)
    if train:  # running statistics moved the same way
        torch.testing.assert_close(ours.reduce_norm.running_mean, reference.attn.bn.running_mean)
        torch.testing.assert_close(ours.branches[1][1].running_var, reference.paths[1].bn.running_var)


def test_matches_the_paper_formula():
    torch.manual_seed(0)
    module = randomize(SelectiveKernel(8, reduction=2, min_width=3)).eval()
    x = torch.randn(2, 8, 6, 6)
    u = [branch(x) for branch in module.branches]
    s = (u[0] + u[1]).mean(dim=(2, 3))
    norm = module.reduce_norm
    z = torch.relu((s @ module.reduce.weight.flatten(1).T - norm.running_mean)
                   / torch.sqrt(norm.running_var + norm.eps) * norm.weight + norm.bias)
    a, b = (z @ module.select.weight.flatten(1).T).split(8, dim=1)
    a, b = torch.exp(a) / (torch.exp(a) + torch.exp(b)), torch.exp(b) / (torch.exp(a) + torch.exp(b))
    expected = a[:, :, None, None] * u[0] + b[:, :, None, None] * u[1]
    torch.testing.assert_close(module(x), expected)


def test_second_branch_is_dilated_three_by_three():
    module = SelectiveKernel(4, branches=3)
    convs = [branch[0] for branch in module.branches]
    assert [c.kernel_size for c in convs] == [(3, 3)] * 3
    assert [c.dilation for c in convs] == [(1, 1), (2, 2), (3, 3)]


@pytest.mark.parametrize("options,message", [
    ({"branches": 1}, "branches must be >= 2"),
    ({"groups": 3}, "groups must divide channels and out_channels"),
    ({"out_channels": 20, "groups": 8}, "groups must divide"),
    ({"stride": 0}, "must be >= 1"),
    ({"reduction": 0}, "reduction and min_width must be >= 1"),
])
def test_rejects_invalid_options(options, message):
    with pytest.raises(ValueError, match=message):
        SelectiveKernel(16, **options)


@pytest.mark.parametrize("attention", ["sk", "fusion"])
@pytest.mark.parametrize("option", [{"groups": 32}, {"stride": 2}, {"out_channels": 128}])
def test_a_conv_shape_option_the_block_sets_is_refused_not_ignored(attention, option):
    """The block sets the replaced conv's shape: attention.groups=32 built the check module, labelled the
    run sk[groups=32], and then every block built plain sk."""
    key, value = next(iter(option.items()))
    with pytest.raises(ValueError, match=f"replaces a conv of each block, which sets its {key}: "
                                         f"attention.{key}={value} would be ignored"):
        attn_zoo.create_model("resnet50", attention, num_classes=10, **option)
    attn_zoo.create_model("resnet20", attention, num_classes=10, groups=1)  # the default: nothing ignored
