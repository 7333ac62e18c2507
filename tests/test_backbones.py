"""Every backbone: exact parameter counts against the papers and torchvision, FLOPs, forward/backward,
where the attention sits in a block, and bad inputs named."""
import pytest
import torch
import torchvision

import attn_zoo
from attn_zoo.config import compose
from attn_zoo.cost import count_attention_params, count_flops, count_params

CIFAR_BACKBONES = ["resnet20", "resnet32", "resnet44", "resnet56", "resnet110", "preresnet110", "resnet164", "wrn16_8",
                   "wrn28_10"]
IMAGENET_BACKBONES = ["resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "resnext50_32x4d", "mobilenet_v2"]
ALL_BACKBONES = CIFAR_BACKBONES + IMAGENET_BACKBONES + ["torchvision"]
ATTENTIONS = ["none", "se", "eca", "cbam", "sk"]


def params_of(backbone, attention="none", backbone_options=None, **options):
    """Parameter count of a model built on the meta device (no memory, no init cost)."""
    with torch.device("meta"):
        return count_params(attn_zoo.create_model(backbone, attention, backbone_options=backbone_options, **options))


def test_every_backbone_is_registered_with_a_yaml():
    from pathlib import Path

    conf = Path(__file__).resolve().parents[1] / "conf" / "backbone"
    assert set(ALL_BACKBONES) <= set(attn_zoo.list_backbones())
    assert {p.stem for p in conf.glob("*.yaml")} == set(attn_zoo.list_backbones())


@pytest.mark.parametrize(
    "backbone,attention,options,expected",
    [
        # He et al. 2016, CIFAR ResNets: projection shortcuts, and option A (zero-padding) at depth 20
        ("resnet20", "none", {"shortcut": "projection"}, 272_474),
        ("resnet56", "none", {"shortcut": "projection"}, 855_770),
        ("resnet110", "none", {"shortcut": "projection"}, 1_730_714),
        ("resnet20", "none", {"shortcut": "pad"}, 269_722),
        ("resnet50", "none", None, 25_557_032),
        ("resnet50", "se", None, 28_088_024),
        ("resnet50", "eca", None, 25_557_118),  # adaptive k: 5, 5, 5, 7 by stage
        ("resnext50_32x4d", "none", None, 25_028_904),
        ("resnet18", "none", None, 11_689_512),
        ("resnet18", "se", None, 11_779_624),
        ("resnet164", "none", None, 1_703_258),  # He et al. 2016b: 1.7M
        # pre-activation ResNet-110, option A: He et al.'s ResNet-110 with option A has as many (BN moved,
        # not added: a final BN(64) instead of the stem's BN(16), the stage's first BN on its input)
        ("preresnet110", "none", None, 1_727_962),
        ("preresnet110", "none", {"shortcut": "projection"}, 1_727_962 + 16 * 32 + 32 * 64),
        ("wrn16_8", "none", None, 10_961_370),  # Zagoruyko & Komodakis: 11.0M
        ("wrn28_10", "none", None, 36_479_194),  # 36.5M
        ("resnet32", "none", None, 466_906),
        ("resnet44", "none", None, 661_338),
    ],
)
def test_parameter_counts_match_the_references(backbone, attention, options, expected):
    assert params_of(backbone, attention, options) == expected


def test_resnet50_cbam_matches_one_of_the_reference_counts():
    # 28,073,576: MLP without bias + BN after the spatial conv (timm); 28,089,624: MLP with bias
    assert params_of("resnet50", "cbam") in {28_073_576, 28_089_624}


def test_resnext50_with_sk_is_sknet50():
    count = params_of("resnext50_32x4d", "sk")
    assert abs(count - 27.5e6) / 27.5e6 < 0.005  # the SKNet paper's 27.5M; timm's skresnext50_32x4d: 27,479,784


@pytest.mark.parametrize("arch", ["resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "resnext50_32x4d", "mobilenet_v2"])
def test_own_imagenet_backbones_have_torchvisions_parameter_count(arch):
    with torch.device("meta"):
        reference = count_params(torchvision.models.get_model(arch, weights=None))
    assert params_of(arch) == reference


def test_imagenet_backbones_default_to_1000_classes_and_cifar_ones_to_10():
    with torch.device("meta"):
        assert attn_zoo.create_model("resnet18").head.out_features == 1000
        assert attn_zoo.create_model("mobilenet_v2").head[-1].out_features == 1000
        assert attn_zoo.create_model("wrn16_8").head.out_features == 10
        assert attn_zoo.create_model("resnet18", num_classes=7).head.out_features == 7


def test_resnet50_flops_and_what_se_adds():
    with torch.device("meta"):
        plain = attn_zoo.create_model("resnet50")
        se = attn_zoo.create_model("resnet50", "se")
    flops_plain, flops_se = count_flops(plain, (3, 224, 224)), count_flops(se, (3, 224, 224))
    assert 4.0e9 < flops_plain / 2 < 4.2e9  # ~4.1 GMACs, 2 FLOPs per MAC
    assert 0 < flops_se - flops_plain < 0.003 * flops_plain


def test_stride_in_1x1_is_the_se_papers_resnet50():
    """SE paper Table 2: ResNet-50 3.86 and SE-ResNet-50 3.87 GFLOPs (multiply-adds) for the released
    Caffe models, whose downsampling blocks stride the first 1x1 conv; torchvision's v1.5 strides the
    3x3 (4.09). Same parameters; the SE tables that train ResNet-50 use the paper's."""
    v1 = {"stride_in_1x1": True}
    with torch.device("meta"):
        plain, se = attn_zoo.create_model("resnet50", backbone_options=v1), attn_zoo.create_model("resnet50", "se", backbone_options=v1)
        default = attn_zoo.create_model("resnet50", "se")
    assert round(count_flops(plain, (3, 224, 224)) / 2e9, 2) == 3.86
    assert round(count_flops(se, (3, 224, 224)) / 2e9, 2) == 3.86  # 3.87 in the paper, which counts the gates too
    assert round(count_flops(default, (3, 224, 224)) / 2e9, 2) == 4.09
    assert count_params(se) == count_params(default) == 28_088_024
    assert plain.stages[1][0].conv1.stride == (2, 2) and plain.stages[1][0].conv2.stride == (1, 1)
    with pytest.raises(ValueError, match="stride_in_1x1 is for bottleneck blocks"):
        attn_zoo.create_model("resnet18", backbone_options=v1)
    for table in ("se_table13", "se_table14", "se_table15"):
        assert compose([f"+experiment={table}"]).backbone.stride_in_1x1 is True


def test_stem_cifar_keeps_32x32_resolution_until_the_first_downsampling():
    model = attn_zoo.create_model("resnet18", backbone_options={"stem": "cifar"}, num_classes=10)
    assert not any(isinstance(m, torch.nn.MaxPool2d) for m in model.modules())
    assert model.stem(torch.randn(1, 3, 32, 32)).shape == (1, 64, 32, 32)
    imagenet = attn_zoo.create_model("resnet18", num_classes=10)
    assert imagenet.stem(torch.randn(1, 3, 32, 32)).shape == (1, 64, 8, 8)
    with pytest.raises(ValueError, match="unknown stem 'tiny'; valid: imagenet, cifar"):
        attn_zoo.create_model("resnet18", backbone_options={"stem": "tiny"})


def test_initialisation_follows_torchvision():
    torch.manual_seed(0)
    model = attn_zoo.create_model("resnet50", "se", num_classes=10, backbone_options={"stem": "cifar"})
    conv = model.stages[2][0].conv2  # 256 -> 256, 3x3: fan_out 2304
    assert conv.weight.std().item() == pytest.approx((2 / (256 * 9)) ** 0.5, rel=0.05)
    assert torch.all(model.stages[0][0].bn3.weight == 1)
    # attention keeps PyTorch's default init: SE's first 1x1 conv reads 1024 channels
    se_conv = next(m for m in model.stages[2][0].attention.modules() if isinstance(m, torch.nn.Conv2d))
    assert se_conv.weight.abs().max().item() <= 1 / 1024 ** 0.5 + 1e-6
    zeroed = attn_zoo.create_model("resnet18", backbone_options={"zero_init_residual": True})
    assert all(torch.all(block.bn2.weight == 0) for stage in zeroed.stages for block in stage)


def _input_for(backbone):
    # the smallest input that leaves each a map at every stage: CIFAR nets (stride 4) at 8x8, 2x2 after
    # the last stage; ImageNet stems (stride 32) at 32x32, 1x1 after it
    return torch.randn(2, 3, 8, 8) if backbone in CIFAR_BACKBONES else torch.randn(2, 3, 32, 32)


@pytest.mark.parametrize("attention", ATTENTIONS)
@pytest.mark.parametrize("backbone", ALL_BACKBONES)
def test_every_backbone_with_every_attention_runs_forward_and_backward(backbone, attention):
    torch.manual_seed(0)
    options = {"arch": "resnet18"} if backbone == "torchvision" else {}
    model = attn_zoo.create_model(backbone, attention, num_classes=5, backbone_options=options)
    logits = model(_input_for(backbone))
    assert logits.shape == (2, 5) and torch.isfinite(logits).all()
    logits.square().mean().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    if attention != "none":
        assert count_attention_params(model) > 0


def test_wrn_dropout_sits_between_the_two_convs():
    model = attn_zoo.create_model("wrn16_8", backbone_options={"dropout": 0.3})
    block = model.stages[0][0]
    assert isinstance(block.dropout, torch.nn.Dropout) and block.dropout.p == 0.3
    with pytest.raises(ValueError, match=r"dropout must be in \[0, 1\)"):
        attn_zoo.create_model("wrn16_8", backbone_options={"dropout": 1.0})


def _preact_unit(block, x, shortcut_input):
    """A pre-activation basic unit written out: conv-BN-ReLU-conv on BN-ReLU(x), plus the shortcut."""
    activated = torch.relu(block.bn1(x))
    branch = block.conv2(torch.relu(block.bn2(block.conv1(activated))))
    return branch + block.shortcut(activated if shortcut_input == "activated" else x)


@torch.no_grad()
def test_preresnet110_activates_each_stages_first_unit_before_both_paths():
    """He et al. 2016b: the first unit after conv1 is activated "before splitting into two paths"; as in
    fb.resnet.torch (both_preact), every stage's first unit; the others add their raw input."""
    from attn_zoo.backbones.resnet_cifar import PadShortcut

    torch.manual_seed(0)
    model = attn_zoo.create_model("preresnet110").eval()
    for module in model.modules():  # running statistics far from identity, so a skipped BN shows
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-1, 1), module.running_var.uniform_(0.5, 2), module.bias.uniform_(-1, 1)
    x = torch.randn(2, 16, 8, 8)
    for stage in model.stages:
        for index, block in enumerate(stage):
            expected = _preact_unit(block, x, "activated" if index == 0 else "raw")
            torch.testing.assert_close(block(x), expected)
            x = expected
    assert [type(stage[0].shortcut) for stage in model.stages] == [torch.nn.Identity, PadShortcut, PadShortcut]
    features = torch.relu(model.final_norm(model.stages(model.stem(torch.randn(2, 3, 8, 8)))))
    assert isinstance(model.stem, torch.nn.Conv2d) and features.shape == (2, 64, 2, 2)


def test_se_adds_exactly_its_modules_parameters():
    plain = count_params(attn_zoo.create_model("resnet20", "none"))
    model = attn_zoo.create_model("resnet20", "se", reduction=16)
    # 9 blocks, 3 per stage at 16/32/64 channels; hidden width 8 everywhere (rounding floor)
    per_block = {c: 2 * c * 8 + 8 + c for c in (16, 32, 64)}
    expected = 3 * sum(per_block.values())
    assert count_attention_params(model) == expected
    assert count_params(model) == plain + expected


def test_attention_sits_before_the_residual_addition():
    model = attn_zoo.create_model("resnet20", "se")
    block = model.stages[0][0]
    seen = []
    block.bn2.register_forward_hook(lambda *_: seen.append("bn2"))
    block.attention.register_forward_hook(lambda *_: seen.append("attention"))
    block.shortcut.register_forward_hook(lambda *_: seen.append("shortcut"))
    block(torch.randn(1, 16, 8, 8))
    assert seen == ["bn2", "attention", "shortcut"]


def test_model_forward_backward_and_flops():
    model = attn_zoo.create_model("resnet20", "se", num_classes=7)
    logits = model(torch.randn(2, 3, 32, 32))
    assert logits.shape == (2, 7)
    logits.sum().backward()
    assert all(p.grad is not None for p in model.parameters())
    plain = attn_zoo.create_model("resnet20", "none")
    flops_plain = count_flops(plain, (3, 32, 32))
    assert 80e6 < flops_plain < 84e6  # ~41M MACs, counted as 2 FLOPs each
    assert count_flops(model, (3, 32, 32)) > flops_plain


def test_bad_backbone_inputs_fail_with_the_valid_choices():
    with pytest.raises(KeyError, match="unknown backbone 'resnet21'; valid: .*resnet110, .*resnet20, "):
        attn_zoo.create_model("resnet21", "se")
    with pytest.raises(ValueError, match="num_classes must be >= 1"):
        attn_zoo.create_model("resnet20", "se", num_classes=0)
    with pytest.raises(ValueError, match="unknown shortcut 'conv'; valid: projection, pad"):
        attn_zoo.create_model("resnet20", "se", backbone_options={"shortcut": "conv"})
    with pytest.raises(TypeError, match="attention 'se' has no option r"):
        attn_zoo.create_model("resnet20", "se", r=4)


@pytest.mark.parametrize("attention", ["sk", "fusion"])
@pytest.mark.parametrize("backbone,init", [
    ("resnet20", "default"), ("resnet20", "identity"), ("resnet18", "default"), ("resnet18", "identity"),
    ("mobilenet_v2", "default"), ("torchvision", "default"), ("torchvision", "identity"),
])  # mobilenet_v2 refuses init=identity for a conv replacement (its unit ends in ReLU6)
def test_a_conv_replacement_starts_as_the_backbone_starts_the_conv_it_replaces(backbone, attention, init):
    """SK's and fusion's branches stand where the backbone's conv was: Kaiming-normal (fan_out) as
    that conv, not PyTorch's default (about 2.4x smaller), which changed their weight decay's and
    learning rate's effect against the baseline's conv."""
    from attn_zoo.backbones.placement import attention_modules, conv_replacement_branches

    torch.manual_seed(0)
    model = attn_zoo.create_model(backbone, attention, init=init)
    branch_convs = [module for replacement in attention_modules(model).values()
                    for module in conv_replacement_branches(replacement).modules() if isinstance(module, torch.nn.Conv2d)]
    assert branch_convs
    for conv in branch_convs:
        fan_out = conv.weight.shape[0] * conv.weight[0, 0].numel()
        assert conv.weight.std().item() == pytest.approx((2 / fan_out) ** 0.5, rel=0.25), conv
