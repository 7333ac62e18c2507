"""ECA (Wang et al., CVPR 2020): the adaptive kernel size of the paper's code, its formula,
parameter count k, and agreement with timm's EcaModule where the two define k alike (C ≥ 8)."""
import pytest
import torch
import torch.nn.functional as F
from timm.layers import EcaModule

import attn_zoo
from attn_zoo.cost import count_params


@pytest.mark.parametrize(
    "channels,k",
    # the paper's listing: t = int(|(log2 C + 1) / 2|), k = t if t is odd else t + 1
    [(1, 1), (4, 1), (7, 1), (8, 3), (16, 3), (64, 3), (128, 5), (256, 5), (512, 5), (1024, 5), (2048, 7)],
)
def test_adaptive_kernel_size_and_parameter_count(channels, k):
    module = attn_zoo.create_attention("eca", channels)
    assert module.kernel_size == k and count_params(module) == k


def test_fixed_kernel_size_overrides_the_adaptive_one():
    module = attn_zoo.create_attention("eca", 2048, kernel_size=3)
    assert module.kernel_size == 3 and count_params(module) == 3


@pytest.mark.parametrize("kernel_size", [0, 4, -3])
def test_kernel_size_must_be_positive_and_odd(kernel_size):
    with pytest.raises(ValueError, match="positive odd"):
        attn_zoo.create_attention("eca", 64, kernel_size=kernel_size)


def test_matches_its_formula():
    torch.manual_seed(0)
    module = attn_zoo.create_attention("eca", 64, kernel_size=5)
    x = torch.randn(2, 64, 5, 7)
    weight = module.excite.conv.weight.view(5)
    s = F.pad(x.mean((2, 3)), (2, 2))  # zero padding across the channel axis
    logits = torch.stack([(s[:, c : c + 5] * weight).sum(1) for c in range(64)], dim=1)
    torch.testing.assert_close(module(x), x * torch.sigmoid(logits)[:, :, None, None])


def test_small_channel_counts_use_k_1_unlike_timm():
    # timm floors k at 3; the paper's code gives k = 1 for C ≤ 7: a per-channel scale w·s
    module = attn_zoo.create_attention("eca", 4)
    x = torch.randn(2, 4, 3, 3)
    w = module.excite.conv.weight.view(())
    torch.testing.assert_close(module(x), x * torch.sigmoid(w * x.mean((2, 3), keepdim=True)))
    assert EcaModule(4).conv.kernel_size == (3,)


@pytest.mark.parametrize("channels", [8, 64, 256, 2048])
def test_matches_timm_eca_module(channels):
    torch.manual_seed(0)
    reference = EcaModule(channels).eval()
    module = attn_zoo.create_attention("eca", channels).eval()
    assert module.kernel_size == reference.conv.kernel_size[0]
    module.excite.conv.load_state_dict(reference.conv.state_dict())
    x = torch.randn(2, channels, 5, 3)
    torch.testing.assert_close(module(x), reference(x), rtol=1e-5, atol=1e-5)
