"""eSE (Lee & Park, CenterMask, CVPR 2020): one FC C→C and a hard sigmoid; C² + C parameters."""
import pytest
import torch
import torch.nn.functional as F
from timm.layers import EffectiveSEModule

import attn_zoo
from attn_zoo.cost import count_params


@pytest.mark.parametrize("channels", [1, 64, 256])
def test_parameter_count(channels):
    assert count_params(attn_zoo.create_attention("ese", channels)) == channels**2 + channels


def test_matches_its_formula():
    torch.manual_seed(0)
    module = attn_zoo.create_attention("ese", 16)
    x = torch.randn(2, 16, 5, 7)
    fc = module.excite
    gate = F.relu6(x.mean((2, 3)) @ fc.weight.flatten(1).T + fc.bias + 3) / 6
    torch.testing.assert_close(module(x), x * gate[:, :, None, None])


@pytest.mark.parametrize("channels", [64, 256])
def test_matches_timm_effective_se(channels):
    torch.manual_seed(0)
    reference = EffectiveSEModule(channels).eval()
    module = attn_zoo.create_attention("ese", channels).eval()
    module.excite.load_state_dict(reference.fc.state_dict())
    x = torch.randn(2, channels, 7, 5)
    torch.testing.assert_close(module(x), reference(x), rtol=1e-5, atol=1e-5)
