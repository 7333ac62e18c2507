"""Global Context (gc): parameter count, identity start of add fusion, equality with timm and the paper."""
import pytest
import torch
from timm.layers import GlobalContext as TimmGlobalContext

from attn_zoo.attention._width import reduced_width
from attn_zoo.attention.gc import GlobalContext
from attn_zoo.cost import count_params
from attention_checks import copy_weights, randomize


@pytest.mark.parametrize("channels,reduction", [(256, 16), (64, 16), (512, 4)])
def test_parameter_count_formula(channels, reduction):
    d = reduced_width(channels, reduction)
    expected = 2 * channels * d + 3 * d + 2 * channels + 1
    assert count_params(GlobalContext(channels, reduction=reduction)) == expected


def test_add_fusion_starts_as_identity():
    x = torch.randn(2, 8, 5, 5)
    torch.testing.assert_close(GlobalContext(8)(x), x)


def test_scale_fusion_starts_with_every_gate_at_one_half():
    """The authors zero the transform's last conv for both fusions (mmcv's last_zero_init); timm only
    for "add", which left the scale gates spread over 0.25-0.78 at C=256."""
    torch.manual_seed(0)
    x = torch.randn(2, 256, 5, 5)
    torch.testing.assert_close(GlobalContext(256, fusion="scale")(x), 0.5 * x)


@pytest.mark.parametrize("fusion", ["add", "scale"])
def test_matches_timm(fusion):
    torch.manual_seed(0)
    ours = GlobalContext(32, reduction=4, divisor=1, min_width=1, fusion=fusion)
    reference = TimmGlobalContext(32, fuse_add=fusion == "add", fuse_scale=fusion == "scale", rd_channels=8)
    randomize(reference)
    mlp = reference.mlp_add if fusion == "add" else reference.mlp_scale
    mlp.norm.eps = ours.transform[1].eps  # timm's LayerNorm2d uses 1e-6, the authors' code 1e-5
    prefix = "mlp_add." if fusion == "add" else "mlp_scale."
    copy_weights(reference, ours, {"attention_logits.": "conv_attn.", "transform.0.": prefix + "fc1.",
                                   "transform.1.": prefix + "norm.", "transform.3.": prefix + "fc2."})
    for shape in [(2, 32, 7, 9), (1, 32, 1, 1)]:
        x = torch.randn(shape)
        torch.testing.assert_close(ours(x), reference(x), atol=1e-5, rtol=1e-5)


def test_matches_the_paper_formula():
    module = randomize(GlobalContext(6, divisor=1, min_width=3, fusion="scale"))
    x = torch.randn(2, 6, 4, 5)
    logits = torch.einsum("nchw,c->nhw", x, module.attention_logits.weight.flatten()) + module.attention_logits.bias
    p = logits.flatten(1).softmax(dim=1)
    context = torch.einsum("ncp,np->nc", x.flatten(2), p)
    conv1, norm, _, conv2 = module.transform
    hidden = context @ conv1.weight.flatten(1).T + conv1.bias
    hidden = (hidden - hidden.mean(1, keepdim=True)) / torch.sqrt(hidden.var(1, unbiased=False, keepdim=True) + norm.eps)
    hidden = torch.relu(hidden * norm.weight.flatten() + norm.bias.flatten())
    t = hidden @ conv2.weight.flatten(1).T + conv2.bias
    torch.testing.assert_close(module(x), x * torch.sigmoid(t)[:, :, None, None])


def test_rejects_unknown_fusion():
    with pytest.raises(ValueError, match="fusion must be one of add, scale, got 'mul'"):
        GlobalContext(8, fusion="mul")
