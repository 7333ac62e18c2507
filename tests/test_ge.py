"""Gather-Excite (ge): parameter counts per option, equality with timm and with the strided gather's formula."""
import pytest
import torch
import torch.nn.functional as F
from timm.layers import GatherExcite as TimmGatherExcite
from timm.layers.mlp import ConvMlp

from attn_zoo.attention._width import reduced_width
from attn_zoo.attention.ge import GatherExcite
from attn_zoo.cost import count_params
from attention_checks import copy_weights, randomize


@pytest.mark.parametrize("channels,extent,extra_params,use_mlp", [(64, 0, False, False), (64, 4, True, False),
                                                                  (128, 8, True, True), (256, 2, False, True)])
def test_parameter_count_formula(channels, extent, extra_params, use_mlp):
    module = GatherExcite(channels, extent=extent, extra_params=extra_params, use_mlp=use_mlp)
    d = reduced_width(channels, 16)
    gather = (extent.bit_length() - 1) * 11 * channels if extra_params else 0
    assert count_params(module) == gather + (2 * channels * d + d + channels if use_mlp else 0)


def test_default_is_parameter_free_global_gate():
    x = torch.randn(2, 5, 4, 6)
    torch.testing.assert_close(GatherExcite(5)(x), x * torch.sigmoid(x.mean(dim=(2, 3), keepdim=True)))


def timm_reference(channels: int, extent: int, use_mlp: bool, hidden: int) -> TimmGatherExcite:
    # timm 1.0.31 passes `*dd` positionally to ConvMlp and create_conv2d, so GatherExcite(use_mlp=True)
    # and extra_params=True raise TypeError; build it without the MLP, then give it timm's ConvMlp.
    reference = TimmGatherExcite(channels, extent=extent, use_mlp=False)
    if use_mlp:
        reference.mlp = ConvMlp(channels, hidden)
    return randomize(reference)


@pytest.mark.parametrize("extent,use_mlp", [(0, True), (2, False), (2, True), (4, True), (8, False)])
def test_parameter_free_gather_matches_timm(extent, use_mlp):
    torch.manual_seed(0)
    ours = GatherExcite(16, extent=extent, use_mlp=use_mlp, reduction=4, divisor=1, min_width=1)
    reference = timm_reference(16, extent, use_mlp, hidden=4)
    copy_weights(reference, ours, {"mlp.0.": "mlp.fc1.", "mlp.2.": "mlp.fc2."})
    for shape in [(2, 16, 9, 9), (2, 16, 8, 13), (1, 16, 1, 1)]:
        x = torch.randn(shape)
        torch.testing.assert_close(ours(x), reference(x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("extent,use_mlp", [(2, False), (4, False), (8, True)])
def test_strided_gather_matches_timm_with_its_conv_call_mended(extent, use_mlp, monkeypatch):
    """GE-θ and GE-θ⁺ against timm's own gather (an independent reference for the layer sequence):
    timm passes its device/dtype keys positionally (the ``*dd`` above), as the conv's kernel size
    and the BNs' eps and momentum, so the test drops them and sets what timm means to."""
    import timm.layers.gather_excite as timm_ge

    create = timm_ge.create_conv2d
    monkeypatch.setattr(timm_ge, "create_conv2d", lambda inputs, outputs, *_keys, **options: create(inputs, outputs, **options))
    torch.manual_seed(0)
    reference = TimmGatherExcite(16, extent=extent, extra_params=True, use_mlp=False)
    for layer in reference.gather:
        if isinstance(layer, torch.nn.BatchNorm2d):
            layer.eps, layer.momentum = 1e-5, 0.1  # were the strings "device" and "dtype"
    if use_mlp:
        reference.mlp = ConvMlp(16, 4)
    reference = randomize(reference).eval()
    ours = GatherExcite(16, extent=extent, extra_params=True, use_mlp=use_mlp, reduction=4, divisor=1, min_width=1).eval()
    steps = extent.bit_length() - 1
    layers = {f"gather.{3 * step}.": f"gather.conv{step + 1}." for step in range(steps)}
    layers |= {f"gather.{3 * step + 1}.": f"gather.norm{step + 1}." for step in range(steps)}
    copy_weights(reference, ours, {**layers, "mlp.0.": "mlp.fc1.", "mlp.2.": "mlp.fc2."})
    for shape in [(2, 16, 11, 9), (2, 16, 16, 16), (1, 16, 3, 5)]:
        x = torch.randn(shape)
        torch.testing.assert_close(ours(x), reference(x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("extent", [2, 4])
def test_strided_gather_matches_its_formula(extent):
    module = randomize(GatherExcite(6, extent=extent, extra_params=True)).eval()
    x = torch.randn(2, 6, 11, 9)
    gathered, layers = x, list(module.gather)
    for step in range(extent.bit_length() - 1):
        conv, norm = layers[3 * step], layers[3 * step + 1]
        gathered = F.conv2d(gathered, conv.weight, stride=2, padding=1, groups=6)
        gathered = (gathered - norm.running_mean[:, None, None]) / torch.sqrt(norm.running_var[:, None, None] + norm.eps)
        gathered = gathered * norm.weight[:, None, None] + norm.bias[:, None, None]
        if step < extent.bit_length() - 2:
            gathered = gathered.relu()
    assert gathered.shape[-2:] == (-(-11 // extent), -(-9 // extent))
    rows = torch.arange(11) * gathered.shape[2] // 11
    cols = torch.arange(9) * gathered.shape[3] // 9
    expected = x * torch.sigmoid(gathered[:, :, rows][:, :, :, cols])
    torch.testing.assert_close(module(x), expected)


@pytest.mark.parametrize("options,message", [
    ({"extent": 3}, "extent must be 0 \\(global\\) or a power of two >= 2"),
    ({"extent": 1}, "extent must be 0"),
    ({"extent": -2}, "extent must be 0"),
    ({"extra_params": True}, "extra_params=True needs extent >= 2"),
    ({"use_mlp": True, "reduction": 0}, "reduction must be > 0"),
])
def test_rejects_invalid_options(options, message):
    with pytest.raises(ValueError, match=message):
        GatherExcite(16, **options)
