"""Whole networks equal the references' networks: the same weights give the same logits.

Our ImageNet ResNets, ResNeXt and MobileNetV2 against torchvision's; SE-, ECA- and CBAM-ResNet-50 and
SKNet-50 against timm's. Each reference's weights are copied into our model entry by entry (the
attention entries and the others each in their registration order, shapes checked), then both run
the same input in eval mode (running statistics) and in train mode (batch statistics, which also
update the running statistics). Both run in float64, so the comparison holds to 1e-9 on any CPU:
these are checks of the function, not of float32 rounding.
"""
import pytest
import timm
import torch
import torchvision
from torch import nn

import attn_zoo

TOLERANCE = 1e-9  # relative to the largest logit; float64 rounding through 150 layers is ~1e-13


def _split(state: dict[str, torch.Tensor], attention_marker: str) -> tuple[list, list]:
    attention = [(key, value) for key, value in state.items() if attention_marker in key]
    rest = [(key, value) for key, value in state.items() if attention_marker not in key]
    return attention, rest


def copy_weights(ours: nn.Module, reference: nn.Module, reference_attention: str | None) -> None:
    """Every state entry of ``reference`` into ``ours``, in order within the attention entries and
    within the rest (the blocks register their attention at different places); all in one order
    when ``reference_attention`` is None."""
    ours_state = ours.state_dict()
    ours_parts = _split(ours_state, ".attention." if reference_attention else "<no attention>")
    reference_parts = _split(reference.state_dict(), reference_attention or "<no attention>")
    copied = {}
    for ours_part, reference_part in zip(ours_parts, reference_parts):
        assert len(ours_part) == len(reference_part)
        for (key, value), (reference_key, reference_value) in zip(ours_part, reference_part):
            assert value.shape == reference_value.shape, (key, reference_key)
            copied[key] = reference_value.clone()
    assert copied.keys() == ours_state.keys()
    ours.load_state_dict(copied)


def randomise_batchnorms(model: nn.Module) -> None:
    """Trained-like BatchNorm, so eval mode tests more than an identity normalisation."""
    generator = torch.Generator().manual_seed(1)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            channels = module.num_features
            with torch.no_grad():
                module.weight.copy_(0.5 + torch.rand(channels, generator=generator))
                module.bias.copy_(torch.rand(channels, generator=generator) - 0.5)
                module.running_mean.copy_(0.2 * torch.randn(channels, generator=generator))
                module.running_var.copy_(0.5 + torch.rand(channels, generator=generator))


def assert_same_function(ours: nn.Module, reference: nn.Module) -> None:
    ours, reference = ours.double(), reference.double()
    # 40x40: the smallest input that leaves every stage a map of at least 2x2 (40 → 20 → 10 → 5 → 3 → 2),
    # so each 3x3 tap, stride and padding of the last stage still shows in the logits
    x = torch.randn(4, 3, 40, 40, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    for training in (False, True):
        for model in (ours, reference):
            model.train(training)
            for dropout in (m for m in model.modules() if isinstance(m, nn.Dropout)):
                dropout.eval()  # random in training: the two would draw different masks
        with torch.no_grad():
            expected = reference(x)
            scale = expected.abs().max().item()
            torch.testing.assert_close(ours(x), expected, rtol=0, atol=TOLERANCE * scale)
    ours_buffers = [b for key, b in ours.state_dict().items() if "running" in key]
    reference_buffers = [b for key, b in reference.state_dict().items() if "running" in key]
    assert sorted(b.numel() for b in ours_buffers) == sorted(b.numel() for b in reference_buffers)
    assert sum(b.sum() for b in ours_buffers).item() == pytest.approx(sum(b.sum() for b in reference_buffers).item(), rel=1e-9)


def build_pair(ours: nn.Module, reference: nn.Module, reference_attention: str | None = None) -> tuple[nn.Module, nn.Module]:
    randomise_batchnorms(reference)
    copy_weights(ours, reference, reference_attention)
    return ours, reference


@pytest.mark.parametrize("arch", ["resnet18", "resnet34", "resnet50", "resnet101", "resnext50_32x4d", "mobilenet_v2"])
def test_imagenet_backbones_compute_torchvisions_function(arch):
    torch.manual_seed(0)
    ours, reference = build_pair(attn_zoo.create_model(arch), torchvision.models.get_model(arch, weights=None))
    assert_same_function(ours, reference)


TIMM_MODELS = {
    # ours (backbone, attention, options) -> timm model name and options
    "se": (("resnet50", "se", {}), ("seresnet50", {})),
    "eca": (("resnet50", "eca", {}), ("resnet50", {"block_args": {"attn_layer": "eca"}})),
    "cbam": (("resnet50", "cbam", {"mlp_bias": False}), ("resnet50", {"block_args": {"attn_layer": "cbam"}})),
    "sknet": (("resnext50_32x4d", "sk", {}), ("skresnext50_32x4d", {})),
}


@pytest.mark.parametrize("name", list(TIMM_MODELS))
def test_attention_resnets_compute_timms_function(name):
    (backbone, attention, options), (timm_name, timm_options) = TIMM_MODELS[name]
    torch.manual_seed(0)
    ours = attn_zoo.create_model(backbone, attention, **options)
    reference = timm.create_model(timm_name, pretrained=False, **timm_options)
    # timm names each block's attention module `se`; SK replaces the 3x3 conv in place, so both
    # register it at the same point of the block
    marker = None if name == "sknet" else ".se."
    assert_same_function(*build_pair(ours, reference, marker))


def test_the_check_notices_a_changed_weight():
    torch.manual_seed(0)
    ours, reference = build_pair(attn_zoo.create_model("resnet18"), torchvision.models.resnet18(weights=None))
    with torch.no_grad():
        ours.stages[3][1].bn2.bias[0] += 0.1
    with pytest.raises(AssertionError, match="not close"):
        assert_same_function(ours, reference)
