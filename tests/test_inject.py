"""attn_zoo.inject on any nn.Module, and the torchvision backbone built with it."""
import copy

import pytest
import torch
import torchvision
from torch import nn

import attn_zoo
from attn_zoo.cost import count_attention_params, count_params


def first_conv(module):
    return next(m for m in module.modules() if isinstance(m, nn.Conv2d))


def small_net():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
    )


def test_inject_after_a_name_pattern_in_a_sequential():
    model = small_net().eval()
    keys_before = set(model.state_dict())
    x = torch.randn(2, 3, 8, 8)
    model, changed = attn_zoo.inject(model, "se", after="re:[14]", reduction=4)
    assert changed == ["1", "4"]
    assert first_conv(model[1].attention).in_channels == 8 and first_conv(model[4].attention).in_channels == 16
    assert keys_before < set(model.state_dict())  # the model's own keys are kept
    # calling BatchNorm2d.forward directly skips the hook: the expected result, composed by hand
    hidden = model[1].attention(nn.BatchNorm2d.forward(model[1], model[0](x)))
    hidden = model[4].attention(nn.BatchNorm2d.forward(model[4], model[3](model[2](hidden))))
    torch.testing.assert_close(model(x), model[5](hidden))
    assert count_attention_params(model) == sum(count_params(model[i].attention) for i in (1, 4))
    torch.testing.assert_close(copy.deepcopy(model)(x), model(x))  # the hooks travel with the copy


def test_inject_fnmatch_pattern_and_probe_for_modules_without_a_channel_count():
    model = nn.Sequential(nn.Sequential(nn.Conv2d(3, 8, 1), nn.ReLU()), nn.Sequential(nn.Conv2d(8, 12, 1), nn.ReLU()))
    model, changed = attn_zoo.inject(model, "se", after="*.1")  # the ReLUs: channels from a probe forward
    assert changed == ["0.1", "1.1"]
    assert [first_conv(model[i][1].attention).in_channels for i in (0, 1)] == [8, 12]
    assert model(torch.randn(1, 3, 5, 5)).shape == (1, 12, 5, 5)
    assert model.training  # the probe forward restored the mode


def test_a_module_that_runs_twice_in_a_forward_pass_is_refused():
    """torchvision's BasicBlock calls its one ReLU twice: the SE after it ran twice per block (and in a
    Bottleneck, built for the last call's width, failed on the first)."""
    model = torchvision.models.resnet18()
    with pytest.raises(ValueError, match=r"'layer1.0.relu' \(2 times\) ran more than once in a forward pass"):
        attn_zoo.inject(model, "se", after="layer1.0.relu", input_shape=(3, 32, 32))


def test_the_probe_keeps_each_submodule_s_own_mode():
    """A model in training with a frozen (eval) part, as fine-tuning leaves BatchNorm, stays so."""
    model = nn.Sequential(nn.Sequential(nn.Conv2d(3, 8, 1), nn.BatchNorm2d(8)), nn.Sequential(nn.Conv2d(8, 12, 1), nn.ReLU()))
    model.train()
    model[0].eval()
    attn_zoo.inject(model, "se", after="1.1")
    assert model.training and model[1].training and not model[0].training and not model[0][1].training


def test_inject_takes_a_callable_and_reports_bad_patterns():
    model, changed = attn_zoo.inject(small_net(), lambda c, scale: nn.Conv2d(c, c, 1), after="[0-9]", scale=2)
    assert len(changed) == 6  # conv, BN, ReLU (probed) at 8 and at 16 channels; 1x1 convs with bias
    assert count_attention_params(model) == 3 * (8 * 8 + 8) + 3 * (16 * 16 + 16)
    with pytest.raises(ValueError, match="no submodule name matches 'layer9'"):
        attn_zoo.inject(small_net(), "se", after="layer9")
    with pytest.raises(ValueError, match="already have a submodule named 'attention'"):
        attn_zoo.inject(attn_zoo.inject(small_net(), "se", after="1")[0], "se", after="1")
    with pytest.raises(TypeError, match="attention 'se' has no option r"):
        attn_zoo.inject(small_net(), "se", after="1", r=4)


@pytest.mark.parametrize("arch,block_count,last_bn", [("resnet18", 8, "bn2"), ("resnet50", 16, "bn3")])
def test_torchvision_backbone_gets_se_after_each_blocks_last_bn(arch, block_count, last_bn):
    torch.manual_seed(0)
    reference = torchvision.models.get_model(arch, weights=None, num_classes=10)
    model = attn_zoo.create_model("torchvision", "se", num_classes=10, backbone_options={"arch": arch})
    gates = {n: m for n, m in model.named_modules() if n.endswith(".attention")}
    assert len(gates) == block_count and all(n.endswith(f".{last_bn}.attention") for n in gates)
    assert count_params(model) == count_params(reference) + sum(count_params(g) for g in gates.values())
    assert set(reference.state_dict()) < set(model.state_dict())
    x = torch.randn(2, 3, 32, 32)
    assert model(x).shape == reference(x).shape == (2, 10)


def test_torchvision_attention_sits_before_the_addition():
    model = attn_zoo.create_model("torchvision", "se", backbone_options={"arch": "resnet50"}).eval()
    block = model.layer2[0]
    seen = {}
    block.bn3.attention.register_forward_hook(lambda m, i, o: seen.update(gate_in=i[0].clone(), gate_out=o.clone()))
    block.downsample.register_forward_hook(lambda m, i, o: seen.update(shortcut=o.clone()))
    block.conv3.register_forward_hook(lambda m, i, o: seen.update(conv3=o.clone()))
    with torch.no_grad():
        out = block(torch.randn(2, 256, 8, 8))
    torch.testing.assert_close(out, torch.relu(seen["gate_out"] + seen["shortcut"]))
    bn3 = block.bn3
    expected_bn = (seen["conv3"] - bn3.running_mean[:, None, None]) / torch.sqrt(bn3.running_var[:, None, None] + bn3.eps)
    torch.testing.assert_close(seen["gate_in"], expected_bn * bn3.weight[:, None, None] + bn3.bias[:, None, None])


def test_torchvision_rejects_unknown_archs():
    with pytest.raises(ValueError, match="unknown torchvision arch 'vgg16'; valid: resnet18, "):
        attn_zoo.create_model("torchvision", "se", backbone_options={"arch": "vgg16"})


def test_a_pattern_matching_a_module_and_one_inside_it_is_an_error_naming_both():
    """The issue's case: layer_blocks.* matched layer_blocks.0 and layer_blocks.0.0, so SE ran twice on one path."""
    from torchvision.ops import FeaturePyramidNetwork

    fpn = nn.Sequential()
    fpn.fpn = FeaturePyramidNetwork([8, 16], 8)
    with pytest.raises(ValueError, match=r"after 'fpn\.layer_blocks\.0\.0' and after 'fpn\.layer_blocks\.0' \(matches "
                                         r"too\), which contains it: two modules on one path"):
        attn_zoo.inject(fpn, "se", after="fpn.layer_blocks.*")
    model, places = attn_zoo.inject(fpn, "se", after="re:fpn\\.layer_blocks\\.\\d+")
    assert places == ["fpn.layer_blocks.0", "fpn.layer_blocks.1"]
    with pytest.raises(ValueError, match=r"after 'fpn\.layer_blocks\.1\.0' and after 'fpn\.layer_blocks\.1' \(already "
                                         r"has attention\)"):
        attn_zoo.inject(model, "eca", after="fpn.layer_blocks.1.0")
    with pytest.raises(ValueError, match=r"after 'fpn\.layer_blocks\.0' and after 'fpn' \(matches too\)"):
        attn_zoo.inject(model, "se", after="fpn")
