"""The attention registry and every registered module: names and option errors, SE's widths and
counts, and the contract every module meets: the shape, gradients, bfloat16, channels_last,
torch.compile, a yaml of its options."""
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from omegaconf import OmegaConf

import attn_zoo
from attn_zoo.attention._width import reduced_width
from attn_zoo.registry import ATTENTION
from attn_zoo.cost import count_params
from attention_checks import SHAPE_IDS, SHAPES, assert_eval_acts_on_each_sample_alone, assert_shape_and_gradients, randomize


def test_registry_lists_baseline_and_se():
    names = attn_zoo.list_attention()
    assert {"none", "se"} <= set(names)
    assert names == sorted(names)


def test_unknown_attention_names_the_valid_ones_and_the_package_it_looked_in():
    """A module added to a clone, run with a venv installed from another checkout (``python
    analysis/<tool>.py`` imports the installed package), was "unknown" with no hint of which code ran."""
    with pytest.raises(KeyError, match="unknown attention 'sse'; valid: .*none.*se") as error:
        attn_zoo.create_attention("sse", 64)
    assert str(error.value).endswith(f"(attn_zoo loaded from {Path(attn_zoo.__file__).resolve().parent})")


def test_unknown_option_names_the_valid_ones():
    valid = "act, axis, divisor, .*kernel_size, min_width, mlp_bias, reduction"
    with pytest.raises(TypeError, match=f"no option ratio; valid: {valid}"):
        attn_zoo.create_attention("se", 64, ratio=4)


@pytest.mark.parametrize("name, old, new", [("eca", "k_size", "kernel_size"), ("se", "k_size", "kernel_size"),
                                            ("se", "bias", "mlp_bias"), ("cbam", "bias", "mlp_bias")])
def test_an_old_option_name_says_the_new_one(name, old, new):
    with pytest.raises(TypeError, match=f"has no option {old}; valid: .*{new}.* \\({old} is now {new}\\)$"):
        attn_zoo.create_attention(name, 64, **{old: 3})


@pytest.mark.parametrize("declaration", ["positional", "no default"])
def test_an_option_declared_without_keyword_and_default_says_how_to_declare_it(declaration):
    """A new module's ``def __init__(self, channels, bias_init=0.0)`` gave "no option bias_init; valid:
    init" with no word of why."""
    from attn_zoo.registry import Registry

    registry = Registry("attention")
    if declaration == "positional":
        registry.register("gate", "")(lambda channels, bias_init=0.0: torch.nn.Identity())
    else:
        registry.register("gate", "")(lambda channels, *, bias_init: torch.nn.Identity())
    with pytest.raises(TypeError, match=r"^attention 'gate' has no option bias_init; valid: \(none\) \(bias_init must be "
                                        r"keyword-only with a default to be an option: def __init__\(self, channels, "
                                        r"\*, bias_init=\.\.\.\)\)$"):
        registry.build("gate", 8, bias_init=1.0)


def test_an_old_name_the_module_never_took_gets_no_rename_hint():
    with pytest.raises(TypeError, match=r"has no option k_size; valid: init, mlp_bias, reduction, squeeze$"):
        attn_zoo.create_attention("cbam_channel", 64, k_size=3)


@pytest.mark.parametrize("channels,reduction", [(128, 16), (256, 16), (512, 16), (128, 8), (96, 4)])
def test_se_parameter_count_matches_paper_formula(channels, reduction):
    # with C/r a multiple of 8 the rounding is exact: 2C²/r + C/r + C
    module = attn_zoo.create_attention("se", channels, reduction=reduction)
    assert count_params(module) == 2 * channels**2 // reduction + channels // reduction + channels


def test_se_exact_paper_width_without_rounding():
    module = attn_zoo.create_attention("se", 64, reduction=16, divisor=1, min_width=1)
    assert count_params(module) == 2 * 64 * 4 + 4 + 64


@pytest.mark.parametrize(
    "channels,reduction,expected",
    [(64, 16, 8), (16, 16, 8), (256, 16, 16), (1, 16, 8), (200, 16, 16), (1000, 16, 64)],
)
def test_reduced_width_rounds_to_eight_with_floor(channels, reduction, expected):
    assert reduced_width(channels, reduction) == expected


def test_reduced_width_rejects_nonpositive_reduction():
    with pytest.raises(ValueError, match="reduction must be > 0"):
        reduced_width(64, 0)


# Every registered module, including ones added later, meets the shape contract of the
# constructor convention: (N, C, H, W) in, the same shape out, for any C, H, W (``replaces_conv``
# modules too), at its default options and at the variants whose forward takes another path.
# Tested here alone, for all of them (the Hypothesis test below draws inputs beyond the grid).
NAMES = attn_zoo.list_attention()
VARIANTS = {
    "fusion": {"sigmoid+mix": {"gate": "sigmoid", "interaction": True}},
    "gc": {"scale": {"fusion": "scale"}},
    "ge": {"e2": {"extent": 2}, "e4+mlp": {"extent": 4, "use_mlp": True}, "theta-e2": {"extent": 2, "extra_params": True},
           "theta-e8+mlp": {"extent": 8, "extra_params": True, "use_mlp": True}, "se-like": {"use_mlp": True}},
    "triplet": {"no-spatial": {"spatial": False}},
}
CASES = [pytest.param(name, {}, id=name) for name in NAMES] + [
    pytest.param(name, options, id=f"{name}-{variant}")
    for name, variants in VARIANTS.items() for variant, options in variants.items()
]


def test_every_variant_is_of_a_registered_module():
    assert set(VARIANTS) <= set(NAMES)


@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
@pytest.mark.parametrize("name, options", CASES)
def test_module_keeps_the_shape_and_passes_gradients(name, options, shape):
    assert_shape_and_gradients(attn_zoo.create_attention(name, shape[1], **options), shape)


@pytest.mark.parametrize("name, options", CASES)
def test_from_random_parameters_every_parameter_gets_a_non_zero_gradient(name, options):
    """The contract again away from the starting values: a module that starts as the identity (a
    gate of 1 + tanh(0)) passes the checks above whatever its embedding computes, and a parameter
    whose gradient is exactly 0 never learns (a frozen branch, a detached path). 64 channels: at
    reduction 16 a narrower MLP's one or two hidden ReLU units may be dead on the batch."""
    shape = (2, 64, 8, 8)
    module = randomize(attn_zoo.create_attention(name, shape[1], **options))
    assert_shape_and_gradients(module, shape)
    silent = [name for name, parameter in module.named_parameters() if not parameter.grad.abs().max() > 0]
    assert not silent, f"parameters without gradient: {silent}"


@pytest.mark.parametrize("name, options", [case for case in CASES if case.values[0] != "none"])
def test_in_eval_mode_the_module_acts_on_each_sample_alone(name, options):
    assert_eval_acts_on_each_sample_alone(randomize(attn_zoo.create_attention(name, 16, **options)))


class _EvalNoOp(torch.nn.Module):
    """Gates in training mode only: validation would score the plain network."""

    def __init__(self, channels: int):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones(channels, 1, 1))

    def forward(self, x):
        return x * torch.sigmoid(self.scale) if self.training else x + 0 * self.scale


class _MixesTheBatch(_EvalNoOp):
    """Normalises over dim 0 (the batch) where it meant dim 1 (the channels)."""

    def forward(self, x):
        energy = x.square().mean(dim=(2, 3), keepdim=True)
        return x * torch.sigmoid(self.scale * energy / energy.mean(dim=0, keepdim=True))


@pytest.mark.parametrize("broken, complaint", [(_EvalNoOp, "returns its input unchanged"),
                                               (_MixesTheBatch, "depends on the other samples of the batch")])
def test_the_contract_catches_a_module_wrong_only_in_eval_mode_or_across_the_batch(broken, complaint):
    """Both passed every registry-wide check (found by adding a module as a new user would)."""
    module = randomize(broken(16))
    assert_shape_and_gradients(module, (2, 16, 5, 5))
    with pytest.raises(AssertionError, match=complaint):
        assert_eval_acts_on_each_sample_alone(module)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("shape", [(2, 8, 5, 5), (2, 8, 1, 1)], ids=["5x5", "1x1"])
def test_zero_channels_give_finite_outputs_and_gradients(name, shape):
    """A channel that is all zero (dead after a ReLU), and an all-zero input: a square root or a norm
    of zeros without an epsilon gives NaN gradients, which the other checks' random inputs never hit."""
    module = randomize(attn_zoo.create_attention(name, shape[1]))
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    x[:, 0] = 0
    for training, values in ((True, x), (False, x), (True, torch.zeros(shape))):
        values = values.clone().requires_grad_()
        y = module.train(training)(values)
        y.square().sum().backward()
        assert torch.isfinite(y).all() and torch.isfinite(values.grad).all(), (training, values.abs().max())
        assert all(torch.isfinite(p.grad).all() for p in module.parameters()), training
        module.zero_grad()


@pytest.mark.parametrize("name", [name for name in NAMES if name != "none"])
def test_a_module_that_starts_as_the_identity_says_so(name):
    """``init=identity`` wraps a module as x + α·(m(x) − x); while m(x) = x every gradient of α and of
    m's parameters is 0, so a module that starts as the identity must set ``starts_as_identity``
    (attn_zoo/attention/_start.py) to be kept as built, and one that sets it must be the identity."""
    torch.manual_seed(0)
    module = attn_zoo.create_attention(name, 16)
    x = torch.randn(2, 16, 8, 8)
    with torch.no_grad():
        identity = all(torch.equal(module.train(training)(x), x) for training in (True, False))
    declared = getattr(module, "starts_as_identity", False)
    assert identity == declared, (
        f"{name} starts as the identity: set the class attribute starts_as_identity = True, or "
        "init=identity wraps it and freezes it" if identity else f"{name} says starts_as_identity but changes its input")


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_bfloat16_forward_and_backward(name, training):
    torch.manual_seed(0)
    module = attn_zoo.create_attention(name, 64).to(torch.bfloat16).train(training)
    x = torch.randn(2, 64, 5, 7, dtype=torch.bfloat16, requires_grad=True)
    y = module(x)
    assert y.dtype == torch.bfloat16 and y.shape == x.shape and torch.isfinite(y).all()
    y.float().square().sum().backward()
    assert x.grad.dtype == torch.bfloat16 and torch.isfinite(x.grad).all()


@pytest.mark.parametrize("name", NAMES)
def test_channels_last_input_gives_the_same_output(name):
    torch.manual_seed(0)
    module = randomize(attn_zoo.create_attention(name, 64)).eval()  # gc starts as the identity: x == x
    x = torch.randn(2, 64, 5, 7)
    y, expected = module(x.contiguous(memory_format=torch.channels_last)), module(x)
    assert y.shape == x.shape
    # convolutions (sk, fusion) sum in another order per layout: float32 rounding of outputs up to ~60,
    # where a layout bug moves values by their own size
    torch.testing.assert_close(y, expected, rtol=1e-4, atol=1e-5 * float(expected.detach().abs().max()))


@pytest.mark.slow  # CPU inductor compiles each module (time: BENCHMARKS.md, "The slow tests"): `make test-all` runs these
@pytest.mark.parametrize("name", NAMES)
def test_torch_compile_matches_eager(name):
    torch.manual_seed(0)
    module = randomize(attn_zoo.create_attention(name, 16)).eval()
    x = torch.randn(2, 16, 7, 5)
    compiled, expected = torch.compile(module), module(x)
    # inductor's CPU code vectorises for the machine it runs on (AVX-512 or AVX2), splitting sums and
    # computing exp/sigmoid its own way: float32 rounding on outputs up to ~60, as for channels_last
    torch.testing.assert_close(compiled(x), expected, rtol=1e-4, atol=1e-5 * max(1.0, float(expected.detach().abs().max())))


def test_se_matches_its_formula():
    torch.manual_seed(0)
    module = attn_zoo.create_attention("se", 32, reduction=4)
    x = torch.randn(2, 32, 6, 6)
    squeeze = x.mean(dim=(2, 3))
    w1, b1 = module.excite.reduce.weight.flatten(1), module.excite.reduce.bias
    w2, b2 = module.excite.expand.weight.flatten(1), module.excite.expand.bias
    gate = torch.sigmoid(torch.relu(squeeze @ w1.T + b1) @ w2.T + b2)
    torch.testing.assert_close(module(x), x * gate[:, :, None, None])


def test_none_is_identity_without_parameters():
    module = attn_zoo.create_attention("none", 8)
    x = torch.randn(2, 8, 4, 4)
    assert module(x) is x and count_params(module) == 0


CONF_ATTENTION = Path(__file__).resolve().parents[1] / "conf" / "attention"


@pytest.mark.parametrize("name", NAMES)
def test_each_module_has_a_yaml_listing_every_option_with_its_default(name):
    """The yaml lists the constructor's options; the options every module takes (``init``) are set
    once, in conf/config.yaml, so a new module's yaml needs none of them."""
    path = CONF_ATTENTION / f"{name}.yaml"
    assert path.is_file(), f"{name} is registered but has no {path.relative_to(CONF_ATTENTION.parents[1])}: run.py cannot select it"
    config = OmegaConf.to_container(OmegaConf.load(path))
    assert config.pop("name") == name
    assert config == ATTENTION.get(name).defaults()
    common = OmegaConf.to_container(OmegaConf.load(CONF_ATTENTION.parent / "config.yaml"))["attention"]
    assert {**config, **common} == attn_zoo.attention_defaults(name)


# ---------------------------------------------------------------- Hypothesis: inputs beyond the grid

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
INPUTS = ("normal", "constant", "zeros", "large", "tiny")


def _input(kind: str, shape, dtype: torch.dtype, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    normal = torch.randn(shape, generator=generator)
    values = {"normal": normal, "constant": torch.full(shape, 0.5), "zeros": torch.zeros(shape), "large": normal * 1e3, "tiny": normal * 1e-6}[kind]
    return values.to(dtype)


@pytest.mark.parametrize("name", NAMES)  # one test per module, so `-k my_module` runs its own
@settings(max_examples=30, deadline=None)
@given(
    channels=st.integers(1, 64),
    height=st.integers(1, 9),
    width=st.integers(1, 9),
    batch=st.integers(1, 3),
    dtype=st.sampled_from(sorted(DTYPES)),
    training=st.booleans(),
    kind=st.sampled_from(INPUTS),
    randomized=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_any_valid_input_keeps_its_shape_and_stays_finite(name, channels, height, width, batch, dtype, training,
                                                          kind, randomized, seed):
    """Every registered module, at its defaults or from random parameters, takes any small valid input
    (channels 1..64, H and W 1..9, batch 1..3, float32 or bfloat16, training or eval mode; random,
    constant, all-zero, large or tiny values) without crashing, keeps the shape and returns only
    finite values, and in float32 finite gradients (a square root or a norm at 0 gives NaN ones)."""
    torch.manual_seed(seed)
    module = attn_zoo.create_attention(name, channels)
    if randomized:
        randomize(module, seed)
    module = module.to(DTYPES[dtype]).train(training)
    x = _input(kind, (batch, channels, height, width), DTYPES[dtype], seed).requires_grad_(dtype == "float32")
    with torch.set_grad_enabled(x.requires_grad):
        y = module(x)
    assert y.shape == x.shape and y.dtype == x.dtype
    if x.requires_grad and torch.isfinite(y).all():
        y.sum().backward()
        assert torch.isfinite(x.grad).all(), f"{name}: non-finite input gradient"
    assert torch.isfinite(y).all(), f"{name}: non-finite output"


def test_a_backbone_option_slip_gets_no_module_declaration_hint():
    """attention=se given to a backbone's options must not be answered with how to declare a module option."""
    from attn_zoo.registry import BACKBONES

    with pytest.raises(TypeError) as error:
        BACKBONES.check_options("resnet20", {"attention": "se"})
    assert "keyword-only" not in str(error.value)
