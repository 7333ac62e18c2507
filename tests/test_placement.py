"""Where the attention module sits in each kind of block, which stages get it, and conv replacement.

Each placement test hooks the block's submodules, records what each one received and returned
(cloned: later in-place ReLUs would change them) and the order of the calls, then checks the data
flow: what the attention module reads and where its output goes.
"""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import attn_zoo
from attn_zoo.backbones.placement import attention_modules, conv_replacement_branches, is_attention_path
from attn_zoo.cost import count_attention_params, count_params
from attn_zoo.registry import ATTENTION, register_attention


class Trace:
    """Inputs, outputs and call order of named submodules of a block during one forward."""

    def __init__(self, block: nn.Module, names: list[str]):
        self.calls, self.inputs, self.outputs = [], {}, {}
        self.handles = [block.get_submodule(n).register_forward_hook(self._record(n)) for n in names]

    def _record(self, name):
        def record(_module, inputs, output):
            self.calls.append(name)
            self.inputs[name] = inputs[0].detach().clone()
            self.outputs[name] = output.detach().clone()
        return record


def run_block(block, names, x):
    block.eval()
    trace = Trace(block, names)
    with torch.no_grad():
        out = block(x.clone())
    for handle in trace.handles:
        handle.remove()
    return trace, out


def first_block_of_stage(backbone, stage, placement, **options):
    torch.manual_seed(0)
    model = attn_zoo.create_model(
        backbone, "se", num_classes=10, backbone_options={"placement": placement, **options}
    )
    return model.stages[stage - 1][0]


close = torch.testing.assert_close


# ---- post-activation bottleneck (ResNet-50), first block of stage 2: stride 2 and a projection
BOTTLENECK = ["conv1", "bn2", "conv3", "bn3", "shortcut", "attention"]


def test_bottleneck_standard_is_after_bn3_before_the_addition():
    block = first_block_of_stage("resnet50", 2, "standard")
    x = torch.randn(2, 256, 8, 8)
    t, out = run_block(block, BOTTLENECK, x)
    assert t.calls.index("bn3") < t.calls.index("attention") < t.calls.index("shortcut")
    close(t.inputs["attention"], t.outputs["bn3"])
    close(out, F.relu(t.outputs["attention"] + t.outputs["shortcut"]))
    assert t.inputs["attention"].shape[1] == 512


def test_bottleneck_pre_gates_the_branch_input_only():
    block = first_block_of_stage("resnet50", 2, "pre")
    x = torch.randn(2, 256, 8, 8)
    t, out = run_block(block, BOTTLENECK, x)
    assert t.calls[0] == "attention"
    close(t.inputs["attention"], x)
    close(t.inputs["conv1"], t.outputs["attention"])
    close(t.inputs["shortcut"], x)  # the shortcut still sees the un-gated input
    close(out, F.relu(t.outputs["bn3"] + t.outputs["shortcut"]))
    assert t.inputs["attention"].shape[1] == 256


def test_bottleneck_post_gates_the_output_after_the_addition_and_relu():
    block = first_block_of_stage("resnet50", 2, "post")
    t, out = run_block(block, BOTTLENECK, torch.randn(2, 256, 8, 8))
    assert t.calls[-1] == "attention"
    close(t.inputs["attention"], F.relu(t.outputs["bn3"] + t.outputs["shortcut"]))
    close(out, t.outputs["attention"])


def test_bottleneck_identity_gates_the_shortcut():
    block = first_block_of_stage("resnet50", 2, "identity")
    t, out = run_block(block, BOTTLENECK, torch.randn(2, 256, 8, 8))
    assert t.calls.index("shortcut") < t.calls.index("attention")
    close(t.inputs["attention"], t.outputs["shortcut"])
    close(out, F.relu(t.outputs["bn3"] + t.outputs["attention"]))


def test_bottleneck_3x3_is_after_the_3x3_conv_unit_on_the_narrow_width():
    block = first_block_of_stage("resnet50", 2, "3x3")
    t, out = run_block(block, BOTTLENECK, torch.randn(2, 256, 8, 8))
    assert t.calls.index("bn2") < t.calls.index("attention") < t.calls.index("conv3")
    close(t.inputs["attention"], F.relu(t.outputs["bn2"]))
    close(t.inputs["conv3"], t.outputs["attention"])
    close(out, F.relu(t.outputs["bn3"] + t.outputs["shortcut"]))
    assert t.inputs["attention"].shape[1] == 128
    # SE paper Table 15: SE_3x3 is much cheaper than standard SE (25.72M vs 28.09M in ResNet-50)
    with torch.device("meta"):
        model = attn_zoo.create_model("resnet50", "se", backbone_options={"placement": "3x3"})
    assert count_params(model) == 25_719_776


# ---- post-activation basic block (ResNet-18 and the CIFAR ResNets)
@pytest.mark.parametrize("backbone,channels", [("resnet18", 64), ("resnet20", 16)])
@pytest.mark.parametrize("placement", ["standard", "pre", "post", "identity"])
def test_basic_block_placements(backbone, channels, placement):
    block = first_block_of_stage(backbone, 2, placement)
    x = torch.randn(2, channels, 8, 8)
    t, out = run_block(block, ["conv1", "bn2", "shortcut", "attention"], x)
    branch, shortcut, gate_in, gate_out = t.outputs["bn2"], t.outputs["shortcut"], t.inputs["attention"], t.outputs["attention"]
    if placement == "standard":
        close(gate_in, branch)
        close(out, F.relu(gate_out + shortcut))
    elif placement == "pre":
        close(gate_in, x)
        close(t.inputs["conv1"], gate_out)
        close(t.inputs["shortcut"], x)
        close(out, F.relu(branch + shortcut))
    elif placement == "post":
        close(gate_in, F.relu(branch + shortcut))
        close(out, gate_out)
    else:
        close(gate_in, shortcut)
        close(out, F.relu(branch + gate_out))


# ---- pre-activation blocks (ResNet-164 bottleneck, WRN basic block): no BN at the branch end
@pytest.mark.parametrize("placement", ["standard", "pre", "post", "identity", "3x3"])
def test_preact_bottleneck_placements(placement):
    block = first_block_of_stage("resnet164", 2, placement)  # 64 -> 128 channels, stride 2, projection
    x = torch.randn(2, 64, 8, 8)
    t, out = run_block(block, ["bn1", "conv1", "bn3", "conv3", "shortcut", "attention"], x)
    activated = F.relu(t.outputs["bn1"])
    close(t.inputs["shortcut"], activated)  # projection reads the pre-activated input
    branch, shortcut, gate_in, gate_out = t.outputs["conv3"], t.outputs["shortcut"], t.inputs["attention"], t.outputs["attention"]
    expected = {
        "standard": lambda: (branch, gate_out + shortcut),
        "pre": lambda: (activated, branch + shortcut),
        "post": lambda: (branch + shortcut, gate_out),
        "identity": lambda: (shortcut, branch + gate_out),
        "3x3": lambda: (F.relu(t.outputs["bn3"]), branch + shortcut),
    }[placement]()
    close(gate_in, expected[0])
    close(out, expected[1])
    if placement == "pre":
        close(t.inputs["conv1"], gate_out)
    if placement == "3x3":
        close(t.inputs["conv3"], gate_out)


@pytest.mark.parametrize("placement", ["standard", "pre", "post", "identity"])
def test_wide_resnet_block_placements(placement):
    block = first_block_of_stage("wrn16_8", 1, placement)  # 16 -> 128 channels, projection
    x = torch.randn(2, 16, 8, 8)
    t, out = run_block(block, ["bn1", "conv2", "shortcut", "attention"], x)
    branch, shortcut, gate_in, gate_out = t.outputs["conv2"], t.outputs["shortcut"], t.inputs["attention"], t.outputs["attention"]
    expected = {
        "standard": lambda: (branch, gate_out + shortcut),
        "pre": lambda: (F.relu(t.outputs["bn1"]), branch + shortcut),
        "post": lambda: (branch + shortcut, gate_out),
        "identity": lambda: (shortcut, branch + gate_out),
    }[placement]()
    close(gate_in, expected[0])
    close(out, expected[1])


@pytest.mark.parametrize("placement", ["standard", "3x3"])
def test_mobilenet_v2_placements(placement):
    torch.manual_seed(0)
    model = attn_zoo.create_model("mobilenet_v2", "se", backbone_options={"placement": placement})
    block = model.stages[1][1]  # 24 -> 24 with a residual, hidden 144
    x = torch.randn(2, 24, 8, 8)
    t, out = run_block(block, ["depthwise", "project", "project_bn", "attention"], x)
    if placement == "standard":
        close(t.inputs["attention"], t.outputs["project_bn"])
        close(out, x + t.outputs["attention"])
    else:
        close(t.inputs["attention"], t.outputs["depthwise"])
        close(t.inputs["project"], t.outputs["attention"])
        close(out, x + t.outputs["project_bn"])


# ---- after_3x3_conv: SimAM's authors' place, between the last 3×3 conv and its BN
@pytest.mark.parametrize("backbone,stage,conv,norm,channels", [
    ("resnet50", 2, "conv2", "bn2", 128), ("resnet18", 2, "conv2", "bn2", 128), ("resnet20", 2, "conv2", "bn2", 32),
    ("resnet164", 2, "conv2", "bn3", 32),
])
def test_after_3x3_conv_sits_between_the_last_3x3_conv_and_its_batchnorm(backbone, stage, conv, norm, channels):
    block = first_block_of_stage(backbone, stage, "after_3x3_conv")
    x = torch.randn(2, block.conv1.in_channels, 8, 8)
    t, _ = run_block(block, [conv, norm, "attention"], x)
    assert t.calls == [conv, "attention", norm]
    close(t.inputs["attention"], t.outputs[conv])
    close(t.inputs[norm], t.outputs["attention"])
    assert t.inputs["attention"].shape[1] == channels


def test_after_3x3_conv_in_a_wide_resnet_block_is_after_its_last_conv():
    """No BN follows a pre-activation basic block's last conv: the same point as ``standard``."""
    block = first_block_of_stage("wrn16_8", 1, "after_3x3_conv")
    x = torch.randn(2, 16, 8, 8)
    t, out = run_block(block, ["conv2", "shortcut", "attention"], x)
    close(t.inputs["attention"], t.outputs["conv2"])
    close(out, t.outputs["attention"] + t.outputs["shortcut"])


def test_after_3x3_conv_in_mobilenet_v2_gates_the_depthwise_conv_before_its_batchnorm():
    torch.manual_seed(0)
    model = attn_zoo.create_model("mobilenet_v2", "se", backbone_options={"placement": "after_3x3_conv"})
    block = model.stages[1][1]  # 24 -> 24 with a residual, hidden 144
    x = torch.randn(2, 24, 8, 8)
    t, out = run_block(block, ["depthwise.0", "depthwise.1", "project", "attention"], x)
    assert t.calls == ["depthwise.0", "attention", "depthwise.1", "project"]
    close(t.inputs["depthwise.1"], t.outputs["attention"])
    close(t.inputs["project"], F.relu6(t.outputs["depthwise.1"]))


# ---- stages
@pytest.mark.parametrize(
    "backbone,stages,expected",
    [("resnet50", [1], 3), ("resnet50", [4], 3), ("resnet50", [2, 3], 10), ("resnet20", [3], 3),
     ("mobilenet_v2", [7], 1), ("torchvision", [4], 3), ("wrn16_8", [1, 3], 4)],
)
def test_only_the_chosen_stages_get_attention(backbone, stages, expected):
    with torch.device("meta"):
        model = attn_zoo.create_model(backbone, "se", backbone_options={"stages": stages})
    names = [n for n, _ in model.named_modules() if n.endswith("attention")]
    assert len(names) == expected
    prefixes = {f"stages.{s - 1}." for s in stages} | {f"layer{s}." for s in stages}
    assert all(any(n.startswith(p) for p in prefixes) for n in names)


def test_se_paper_table13_stage_parameter_counts():
    # SE in one ResNet-50 stage: the paper's 25.6M, 25.7M, 26.4M (its stages 2, 3, 4 = our 1, 2, 3)
    expected = {1: 25_582_424, 2: 25_690_280, 3: 26_349_992, 4: 27_136_424}
    for stage, count in expected.items():
        with torch.device("meta"):
            assert count_params(attn_zoo.create_model("resnet50", "se", backbone_options={"stages": [stage]})) == count


@pytest.mark.parametrize(
    "backbone,stages,message",
    [("resnet50", [0, 5], r"stages \[0, 5\] out of range; valid: 1, 2, 3, 4"),
     ("resnet20", [4], r"stages \[4\] out of range; valid: 1, 2, 3 "),
     ("mobilenet_v2", [8], r"valid: 1, 2, 3, 4, 5, 6, 7")],
)
def test_out_of_range_stages_fail_with_the_valid_ones(backbone, stages, message):
    with pytest.raises(ValueError, match=message):
        attn_zoo.create_model(backbone, "se", backbone_options={"stages": stages})


@pytest.mark.parametrize(
    "backbone,placement,message",
    [("resnet18", "3x3", "placement '3x3' does not apply to resnet18 (BasicBlock blocks); valid here: standard, pre, post, identity, after_3x3_conv"),
     ("resnet20", "3x3", "placement '3x3' does not apply to resnet20"),
     ("wrn28_10", "3x3", "placement '3x3' does not apply to wrn28_10"),
     ("mobilenet_v2", "pre", "valid here: standard, 3x3, after_3x3_conv"),
     ("torchvision", "post", "valid here: standard"),
     ("resnet50", "middle", "unknown placement 'middle'; valid: standard, pre, post, identity, 3x3, after_3x3_conv")],
)
def test_placements_that_make_no_sense_fail_at_build_time(backbone, placement, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        attn_zoo.create_model(backbone, "se", backbone_options={"placement": placement})


def test_every_placement_module_is_named_attention():
    for placement in ["standard", "pre", "post", "identity", "3x3"]:
        model = attn_zoo.create_model("resnet164", "se", backbone_options={"placement": placement})
        gates = [m for m in model.modules() if type(m).__name__ == "SqueezeExcite"]
        assert len(gates) == 54
        assert count_attention_params(model) == sum(count_params(g) for g in gates)
        assert list(attention_modules(model).values()) == gates


def test_an_attention_path_is_one_inside_a_submodule_named_attention():
    assert is_attention_path("layer1.0.attention") and is_attention_path("layer1.0.attention.fc.weight")
    assert not is_attention_path("layer1.0.attention_scale") and not is_attention_path("attentions.0.conv")


# ---- modules that replace a conv (SK, fusion): wiring tested with a stand-in conv + BN + ReLU
@pytest.fixture(scope="module")
def conv_swap():
    name = "test_conv_swap"

    @register_attention(name, "test only: conv3x3 + BN + ReLU that replaces a conv unit")
    class ConvSwap(nn.Module):
        replaces_conv = True

        def __init__(self, channels, *, out_channels=None, stride=1, groups=1):
            super().__init__()
            out_channels = out_channels or channels
            self.conv = nn.Conv2d(channels, out_channels, 3, stride, 1, groups=groups, bias=False)
            self.bn = nn.BatchNorm2d(out_channels)

        def forward(self, x):
            return F.relu(self.bn(self.conv(x)))

    yield name
    del ATTENTION.entries[name]


REPLACEABLE = ["resnet20", "resnet164", "wrn16_8", "resnet18", "resnet50", "resnext50_32x4d", "mobilenet_v2", "torchvision"]


@pytest.mark.parametrize("backbone", REPLACEABLE)
def test_a_conv_replacing_module_takes_the_place_of_a_conv_bn_relu_unit(conv_swap, backbone):
    # The stand-in has exactly the parameters of the conv + BN it replaces (same stride and groups),
    # so the parameter count must not change and every conv replaced must be "attention" params.
    plain = attn_zoo.create_model(backbone, num_classes=10)
    swapped = attn_zoo.create_model(backbone, conv_swap, num_classes=10)
    assert count_params(swapped) == count_params(plain)
    assert count_attention_params(swapped) > 0
    size = 16 if backbone in ("resnet20", "resnet164", "wrn16_8") else 32
    assert swapped(torch.randn(2, 3, size, size)).shape == (2, 10)


def test_conv_replacement_in_a_bottleneck_sits_between_conv1_and_conv3(conv_swap):
    model = attn_zoo.create_model("resnext50_32x4d", conv_swap, num_classes=10)
    block = model.stages[1][0]
    assert not hasattr(block, "conv2") and not hasattr(block, "bn2")
    assert block.attention.conv.stride == (2, 2) and block.attention.conv.groups == 32
    t, _ = run_block(block, ["bn1", "attention", "conv3"], torch.randn(2, 256, 8, 8))
    assert t.calls == ["bn1", "attention", "conv3"]
    close(t.inputs["attention"], F.relu(t.outputs["bn1"]))
    close(t.inputs["conv3"], t.outputs["attention"])


def test_conv_replacement_in_a_basic_block_is_the_first_conv(conv_swap):
    block = attn_zoo.create_model("resnet18", conv_swap).stages[1][0]
    assert not hasattr(block, "conv1") and block.attention.conv.stride == (2, 2)
    t, _ = run_block(block, ["attention", "conv2"], torch.randn(2, 64, 8, 8))
    close(t.inputs["conv2"], t.outputs["attention"])


@pytest.mark.parametrize("placement", ["pre", "post", "identity", "3x3"])
def test_conv_replacing_modules_take_only_the_standard_placement(conv_swap, placement):
    with pytest.raises(ValueError, match=f"attention '{conv_swap}' replaces a conv of the block, so only placement 'standard'"):
        attn_zoo.create_model("resnet50", conv_swap, backbone_options={"placement": placement})


def test_sk_replaces_the_3x3_conv_of_resnext():
    model = attn_zoo.create_model("resnext50_32x4d", "sk", num_classes=10)
    block = model.stages[0][0]
    assert not hasattr(block, "conv2") and type(block.attention).__name__ == "SelectiveKernel"
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


@pytest.mark.parametrize("backbone", ["resnet20", "resnet50"])
def test_without_attention_every_placement_and_stage_set_builds_the_same_network(backbone):
    """What lets summarize compare SE-PRE with a none run made at the standard placement: the keys that
    say where attention goes change nothing in a network that has none (same weights, same output)."""
    def built(**options):
        torch.manual_seed(0)
        return attn_zoo.create_model(backbone, "none", num_classes=10, backbone_options=options).eval()

    reference = built()
    x = torch.randn(2, 3, 32, 32)
    for options in ({"placement": "pre"}, {"placement": "post"}, {"placement": "identity"},
                    {"placement": "after_3x3_conv"}, {"stages": [1]}, {"fused_tail": True}):
        model = built(**options)
        assert reference.state_dict().keys() == model.state_dict().keys(), options
        assert all(torch.equal(value, model.state_dict()[key]) for key, value in reference.state_dict().items())
        torch.testing.assert_close(model(x), reference(x), rtol=0, atol=0)


def _built_with_the_stream_after(backbone, attention, backbone_options=None, **options):
    torch.manual_seed(0)
    model = attn_zoo.create_model(backbone, attention, num_classes=10, backbone_options=backbone_options, **options)
    return model, torch.default_generator.get_state()


NETWORKS = {"resnet20": ("resnet20", None), "resnet20_pre": ("resnet20", {"placement": "pre"}),
            "resnet20_identity": ("resnet20", {"placement": "identity"}), "resnet50": ("resnet50", None),
            "mobilenet_v2": ("mobilenet_v2", None), "torchvision_resnet18": ("torchvision", {"arch": "resnet18"})}
COMMON_STREAM_CASES = [
    *((*network, attention) for network in NETWORKS.values() for attention in ("se", "eca", "cbam", "gc")),
    *(("resnet20", {"fused_tail": True}, attention) for attention in ("se", "eca")),
]


@pytest.mark.parametrize("backbone, backbone_options, attention", COMMON_STREAM_CASES, ids=[
    *(f"{name}-{attention}" for name in NETWORKS for attention in ("se", "eca", "cbam", "gc")),
    "resnet20_fused_tail-se", "resnet20_fused_tail-eca"])
def test_at_one_seed_every_attention_sits_in_the_same_network_and_leaves_the_same_stream(
        backbone, backbone_options, attention):
    """Common random numbers: runs of one seed that compare modules start from the same backbone
    weights and, the data loader drawing its order next from the same generator, see the same
    data. Attention modules drew their weights from torch's global generator between the
    backbone's layers: at seed 0, ``none`` and ``se`` shared no weight and no epoch order, though
    RESULTS.md compared them "paired by seed"."""
    plain, plain_stream = _built_with_the_stream_after(backbone, "none", backbone_options)
    model, stream = _built_with_the_stream_after(backbone, attention, backbone_options)
    around = {key: value for key, value in model.state_dict().items() if not is_attention_path(key)}
    assert around.keys() == plain.state_dict().keys()
    assert all(torch.equal(value, plain.state_dict()[key]) for key, value in around.items())
    assert torch.equal(stream, plain_stream)
    gates = [module for module in attention_modules(model).values() if list(module.parameters())]
    weights = [next(gate.parameters()) for gate in gates]
    alike = [(a, b) for a, b in zip(weights, weights[1:]) if a.shape == b.shape and a.numel() > 1]
    assert alike and not any(torch.equal(a, b) for a, b in alike)  # each module its own draw
    again, _ = _built_with_the_stream_after(backbone, attention, backbone_options)
    assert all(torch.equal(value, again.state_dict()[key]) for key, value in model.state_dict().items())


@pytest.mark.parametrize("backbone, backbone_options", [
    ("resnet20", None), ("resnet50", None), ("resnext50_32x4d", None), ("resnet164", None), ("wrn16_8", None),
    ("mobilenet_v2", None), ("torchvision", {"arch": "resnet18"}), ("torchvision", {"arch": "resnet50"})],
    ids=["resnet20", "resnet50", "resnext50", "resnet164", "wrn16_8", "mobilenet_v2", "tv_resnet18", "tv_resnet50"])
@pytest.mark.parametrize("attention", ["sk", "fusion"])
def test_a_module_that_replaces_a_conv_leaves_the_rest_of_the_network_and_the_stream_as_without_attention(
        backbone, backbone_options, attention):
    """SK and fusion stand where a conv was: the backbone no longer drew that conv, and initialised
    the branches from torch's generator instead, so every later layer and the data order differed
    from ``none`` at the same seed, though their runs were recorded ``paired_by_seed``. The
    replaced conv is drawn still, its branches in a stream of their own."""
    plain, plain_stream = _built_with_the_stream_after(backbone, "none", backbone_options)
    model, stream = _built_with_the_stream_after(backbone, attention, backbone_options)
    reference = plain.state_dict()
    around = {key: value for key, value in model.state_dict().items() if not is_attention_path(key)}
    assert set(around) < set(reference)  # the replaced conv + BN units are gone
    assert all(torch.equal(value, reference[key]) for key, value in around.items())
    assert torch.equal(stream, plain_stream)
    branches = [conv_replacement_branches(module) for module in attention_modules(model).values()]
    convs = [module.weight for branch in branches for module in branch.modules() if isinstance(module, nn.Conv2d)]
    assert branches and len(convs) >= 2 * len(branches)
    shaped = {}
    for weight in convs:  # still Kaiming-normal (fan_out) as the conv they replace, each its own draw
        shaped.setdefault(weight.shape, []).append(weight)
    pairs = [(a, b) for same in shaped.values() for a, b in zip(same, same[1:])]
    assert pairs or backbone == "wrn16_8"  # its two blocks a stage change width: no two branches alike
    assert not any(torch.equal(a, b) for a, b in pairs)


def test_two_models_built_one_after_the_other_get_different_attention_weights():
    """The modules' streams start where torch's generator stands (read, not drawn from): seeded from
    the seed alone, a second model built without reseeding repeated the first one's modules."""
    torch.manual_seed(0)
    first, second = (attn_zoo.create_model("resnet20", "se", num_classes=10) for _ in range(2))
    key = next(key for key in first.state_dict() if is_attention_path(key) and key.endswith("weight"))
    assert not torch.equal(first.state_dict()[key], second.state_dict()[key])
