"""The generic squeeze-excite space (registered as ``se``): each squeeze, excitation and gate
against its formula, the CBAM Eq. 2 reading of ``avgmax``, parameter counts, and timm's SEModule."""
from itertools import product

import pytest
import torch
import torch.nn.functional as F
from timm.layers import SEModule

import attn_zoo
from attn_zoo.attention._excite import EXCITATIONS
from attn_zoo.attention._gate import GATES
from attn_zoo.attention._squeeze import AXES, SQUEEZES, dct_filters, low_frequencies
from attn_zoo.attention._width import reduced_width
from attn_zoo.config import build_model, compose
from attn_zoo.cost import count_params


def bare_gate(squeeze, channels=8, **options):
    """The squeeze alone: no excitation, sigmoid gate, so y = x ⊙ sigmoid(descriptor)."""
    return attn_zoo.create_attention("se", channels, squeeze=squeeze, excitation="none", **options)


@pytest.fixture
def x():
    torch.manual_seed(0)
    return torch.randn(2, 8, 6, 5)


@pytest.mark.parametrize(
    "squeeze,descriptor",
    [
        ("avg", lambda x: x.mean((2, 3), keepdim=True)),
        ("max", lambda x: x.amax((2, 3), keepdim=True)),
        ("std", lambda x: (x.var((2, 3), unbiased=False, keepdim=True) + 1e-5).sqrt()),
        ("gem", lambda x: x.clamp(min=1e-6).pow(3).mean((2, 3), keepdim=True).pow(1 / 3)),
    ],
)
def test_squeeze_matches_its_formula(squeeze, descriptor, x):
    torch.testing.assert_close(bare_gate(squeeze)(x), x * torch.sigmoid(descriptor(x)))


@pytest.mark.parametrize("axis,dims", [("h", (2,)), ("w", (3,)), ("hw", (2, 3))])
def test_axis_pools_only_the_named_dimensions(axis, dims, x):
    module = bare_gate("avg", axis=axis)
    torch.testing.assert_close(module(x), x * torch.sigmoid(x.mean(dims, keepdim=True)))


def test_axis_with_mlp_excites_each_row_separately(x):
    module = attn_zoo.create_attention("se", 8, axis="h", reduction=2, divisor=1, min_width=1)
    rows = x.mean(2, keepdim=True)  # (N, C, 1, W): one descriptor per column
    expected = torch.sigmoid(module.excite.expand(torch.relu(module.excite.reduce(rows))))
    torch.testing.assert_close(module(x), x * expected)


def test_avgmax_sums_the_excited_descriptors_as_cbam_eq2(x):
    module = attn_zoo.create_attention("se", 8, squeeze="avgmax", reduction=2, divisor=1, min_width=1)
    mlp = module.excite
    avg, peak = x.mean((2, 3), keepdim=True), x.amax((2, 3), keepdim=True)
    torch.testing.assert_close(module(x), x * torch.sigmoid(mlp(avg) + mlp(peak)))
    # and not the excitation of the summed descriptor (which differs once biases and ReLU act)
    assert not torch.allclose(module(x), x * torch.sigmoid(mlp(avg + peak)))


def test_gem_has_one_learnable_p_that_spans_mean_to_max():
    module = bare_gate("gem")
    assert count_params(module) == 1 and module.squeeze.p.item() == 3.0
    x = torch.rand(2, 8, 4, 4) + 0.1
    with torch.no_grad():
        module.squeeze.p.fill_(1.0)
    torch.testing.assert_close(module.squeeze(x)[0], x.mean((2, 3), keepdim=True))
    with torch.no_grad():
        module.squeeze.p.fill_(200.0)
    torch.testing.assert_close(module.squeeze(x.double())[0], x.double().amax((2, 3), keepdim=True), rtol=2e-2, atol=0)


def test_dct_frequencies_are_the_lowest_in_zigzag_order():
    assert low_frequencies(7, 6) == [(0, 0), (0, 1), (1, 0), (0, 2), (1, 1), (2, 0)]


def test_dct_filters_are_orthonormal_and_the_first_is_the_average():
    filters = dct_filters(16).double().flatten(1)
    torch.testing.assert_close(filters @ filters.T, torch.eye(16, dtype=torch.float64), atol=1e-6, rtol=0)
    torch.testing.assert_close(filters[0], torch.full((49,), 1 / 7, dtype=torch.float64), atol=1e-7, rtol=0)


def test_dct_squeeze_on_a_7x7_map_projects_on_each_group_frequency():
    module = bare_gate("dct", channels=32)
    x = torch.randn(2, 32, 7, 7)
    descriptor = module.squeeze(x)[0]
    filters = dct_filters(32)
    torch.testing.assert_close(descriptor, (x * filters).sum((2, 3), keepdim=True))
    # 16 frequencies over 32 channels: two channels per frequency, the first pair sees 7 × GAP
    torch.testing.assert_close(filters[0], filters[1])
    torch.testing.assert_close(descriptor[:, :2], 7 * x[:, :2].mean((2, 3), keepdim=True))
    assert count_params(module) == 0


def test_dct_rejects_a_partial_axis():
    with pytest.raises(ValueError, match="axis must be 'hw'"):
        attn_zoo.create_attention("se", 8, squeeze="dct", axis="h")


@pytest.mark.parametrize("act,function", [("relu", F.relu), ("gelu", F.gelu), ("silu", F.silu)])
def test_mlp_activation_choices(act, function, x):
    module = attn_zoo.create_attention("se", 8, act=act, reduction=2, divisor=1, min_width=1)
    reduce, expand = module.excite.reduce, module.excite.expand
    s = x.mean((2, 3))
    hidden = function(s @ reduce.weight.flatten(1).T + reduce.bias)
    gate = torch.sigmoid(hidden @ expand.weight.flatten(1).T + expand.bias)
    torch.testing.assert_close(module(x), x * gate[:, :, None, None])


@pytest.mark.parametrize(
    "options,expected",
    [
        ({}, lambda c, d: 2 * c * d + d + c),
        ({"mlp_bias": False}, lambda c, d: 2 * c * d),
        ({"excitation": "linear"}, lambda c, d: c * c + c),
        ({"excitation": "linear", "mlp_bias": False}, lambda c, d: c * c),
        ({"excitation": "none"}, lambda c, d: 0),
        ({"excitation": "conv1d"}, lambda c, d: 5),  # adaptive k at C = 256
        ({"excitation": "conv1d", "kernel_size": 9}, lambda c, d: 9),
        ({"squeeze": "gem"}, lambda c, d: 2 * c * d + d + c + 1),
    ],
)
def test_parameter_count_per_excitation(options, expected):
    channels = 256
    module = attn_zoo.create_attention("se", channels, **options)
    assert count_params(module) == expected(channels, reduced_width(channels, 16))


def test_conv1d_records_its_kernel_size():
    assert attn_zoo.create_attention("se", 256, excitation="conv1d").kernel_size == 5
    assert attn_zoo.create_attention("se", 256, excitation="conv1d", kernel_size=3).kernel_size == 3
    assert attn_zoo.create_attention("se", 256).kernel_size is None


def test_linear_excitation_is_one_fc(x):
    module = attn_zoo.create_attention("se", 8, excitation="linear")
    fc = module.excite
    gate = torch.sigmoid(x.mean((2, 3)) @ fc.weight.flatten(1).T + fc.bias)
    torch.testing.assert_close(module(x), x * gate[:, :, None, None])


@pytest.mark.parametrize(
    "gate,function",
    [
        ("sigmoid", torch.sigmoid),
        ("hardsigmoid", lambda z: F.relu6(z + 3) / 6),
        ("tanh", torch.tanh),
        ("relu", torch.relu),
        ("softmax", lambda z: z.softmax(dim=1)),
    ],
)
def test_gate_choices(gate, function, x):
    module = bare_gate("avg", gate=gate)
    torch.testing.assert_close(module(x), x * function(x.mean((2, 3), keepdim=True)))


def test_softmax_gate_weights_sum_to_one_over_channels(x):
    module = attn_zoo.create_attention("se", 8, gate="softmax")
    weights = module(torch.ones_like(x))
    torch.testing.assert_close(weights.sum(1), torch.ones(2, 6, 5))


@pytest.mark.parametrize(
    "option,value,message",
    [
        ("squeeze", "median", "unknown squeeze 'median'; valid: avg, max, avgmax, std, gem, dct"),
        ("axis", "c", "unknown axis 'c'; valid: hw, h, w"),
        ("excitation", "attention", "unknown excitation 'attention'; valid: mlp, conv1d, linear, none"),
        ("act", "tanh", "unknown act 'tanh'; valid: relu, gelu, silu"),
        ("gate", "swish", "unknown gate 'swish'; valid: sigmoid, hardsigmoid, tanh, relu, softmax"),
    ],
)
def test_bad_choice_names_the_valid_ones(option, value, message):
    with pytest.raises(ValueError, match=message):
        attn_zoo.create_attention("se", 8, **{option: value})


def test_std_squeeze_has_finite_gradients_on_a_single_pixel():
    module = bare_gate("std")
    x = torch.randn(2, 8, 1, 1, requires_grad=True)
    module(x).sum().backward()
    assert torch.isfinite(x.grad).all()


@pytest.mark.parametrize("channels", [64, 256])
@pytest.mark.parametrize(
    "ours,theirs",
    [
        ({}, {}),
        ({"gate": "hardsigmoid", "act": "silu"}, {"gate_layer": "hard_sigmoid", "act_layer": torch.nn.SiLU}),
        ({"mlp_bias": False, "reduction": 4}, {"bias": False, "rd_ratio": 1 / 4}),
    ],
)
def test_matches_timm_se_module(channels, ours, theirs):
    torch.manual_seed(0)
    reference = SEModule(channels, **theirs).eval()
    module = attn_zoo.create_attention("se", channels, **ours).eval()
    module.excite.reduce.load_state_dict(reference.fc1.state_dict())
    module.excite.expand.load_state_dict(reference.fc2.state_dict())
    x = torch.randn(2, channels, 7, 5)
    torch.testing.assert_close(module(x), reference(x), rtol=1e-5, atol=1e-5)
    assert count_params(module) == count_params(reference)


def test_cli_overrides_reach_the_built_modules():
    # python run.py attention=se attention.squeeze=max attention.gate=tanh
    cfg = compose(["attention=se", "attention.squeeze=max", "attention.gate=tanh"])
    model = build_model(cfg, num_classes=10)
    modules = [m for name, m in model.named_modules() if name.endswith("attention")]
    assert modules and all(m.squeeze.kind == "max" and isinstance(m.gate, torch.nn.Tanh) for m in modules)
    x = torch.randn(2, 3, 32, 32)
    assert model(x).shape == (2, 10)


def test_every_combination_of_choices_keeps_shape_and_gradients():
    torch.manual_seed(0)
    x = torch.randn(2, 8, 5, 3, requires_grad=True)
    for squeeze, axis, excitation, gate in product(SQUEEZES, AXES, EXCITATIONS, GATES):
        if squeeze == "dct" and axis != "hw":
            continue
        module = attn_zoo.create_attention("se", 8, squeeze=squeeze, axis=axis, excitation=excitation, gate=gate)
        y = module(x)
        assert y.shape == x.shape, (squeeze, axis, excitation, gate)
        y.sum().backward()
        assert all(p.grad is not None for p in module.parameters()), (squeeze, axis, excitation, gate)
    assert torch.isfinite(x.grad).all()


def test_se_exact_is_se_at_the_papers_width_c_over_r_and_is_recorded_as_such():
    """On ResNet-20 (option A) SE's hidden widths are 16/16, 32/16, 64/16 = 1, 2, 4 units, as the SE
    paper's CIFAR networks and senet.pytorch; ``se`` rounds them all up to 8."""
    from attn_zoo.backbones.placement import attention_modules
    from attn_zoo.train import _attention_variant

    cfg = compose(["attention=se_exact", "backbone.shortcut=pad"])
    assert _attention_variant(cfg) == "se[divisor=1,min_width=1]"
    model = build_model(cfg)
    widths = sorted({module.excite.reduce.out_channels for module in attention_modules(model).values()})
    assert widths == [1, 2, 4]
    # 9 blocks, 3 per width C: 2·C·d + d + C each, on 269,722 for the plain network
    assert count_params(model) == 269_722 + sum(3 * (2 * c * (c // 16) + c // 16 + c) for c in (16, 32, 64))
