"""init=identity: every registered module, added to a network with trained-like BatchNorm, leaves its
output exactly unchanged at the start (eval and train mode) and still learns from the first steps.
sk and fusion replace a conv unit: the plain network's conv + BN load into their start branch."""
import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

import attn_zoo
from attn_zoo.attention._start import ConvIdentityStart, IdentityStart
from attn_zoo.backbones.pretrained import line_up
from attn_zoo.registry import ATTENTION
from tests.helpers import saved

NAMES = [name for name in attn_zoo.list_attention() if name != "none"]
# modules that stand where a conv unit was (sk, fusion), read from the registry: a new one needs no edit here
CONV_REPLACING = {name for name in NAMES if getattr(ATTENTION.get(name).constructor, "replaces_conv", False)}
STARTS = (IdentityStart, ConvIdentityStart)


def randomise_batchnorm(model: nn.Module, seed: int = 1) -> nn.Module:
    """Running statistics and affine parameters away from 0/1, as a trained network has them."""
    generator = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            shape = module.running_mean.shape
            module.running_mean.copy_(torch.randn(shape, generator=generator) * 0.5)
            module.running_var.copy_(torch.rand(shape, generator=generator) * 2 + 0.2)
            module.weight.data.copy_(torch.rand(shape, generator=generator) * 1.5 + 0.25)
            module.bias.data.copy_(torch.randn(shape, generator=generator) * 0.5)
    return model


def with_and_without(name: str, init: str = "identity"):
    torch.manual_seed(0)
    plain = randomise_batchnorm(attn_zoo.create_model("resnet20", "none"))
    torch.manual_seed(0)
    model = attn_zoo.create_model("resnet20", name, init=init)
    state = plain.state_dict()
    if name in CONV_REPLACING and init == "identity":  # the replaced conv1 + bn1 load into the start branch
        names = line_up(model, list(state), "resnet20")
        state = {names[key]: value for key, value in state.items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert (not unexpected or name in CONV_REPLACING and init == "default") and all(".attention." in key for key in missing)
    return model, plain


def learning_within(model: nn.Module, x: torch.Tensor, steps: int) -> set[str]:
    """Attention parameters with a non-zero gradient in one of ``steps`` plain SGD steps (no momentum,
    no weight decay), named as in a model built without identity start. (Gradients, not moves: a
    step of 1e-10 on a weight of 1 does not change it in float32.)"""
    parameters = {name: p for name, p in model.named_parameters() if ".attention." in f".{name}"}
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    labels = torch.arange(len(x)) % 10
    learning = set()
    for _ in range(steps):
        optimizer.zero_grad()
        F.cross_entropy(model(x), labels).backward()
        learning |= {name for name, p in parameters.items() if p.grad is not None and p.grad.abs().max() > 0}
        optimizer.step()
    return {name.replace(".attention.module.", ".attention.") for name in learning}


@pytest.mark.parametrize("name", sorted(NAMES))
def test_identity_start_leaves_the_output_exactly_unchanged_and_learns(name):
    """Exactly the plain network's output; then every attention parameter that learns at all (a
    gradient in 2 SGD steps as built) gets one with identity start too, at most one step later, and
    so does α (from the first step). sk and fusion start as their 3x3 branch holding the plain
    network's conv1 + bn1 (resnet20's basic blocks: the unit they replace).
    (Some never move either way: a bias before a BatchNorm, a ReLU unit dead on the batch.)"""
    model, plain = with_and_without(name)
    x = torch.randn(16, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    for train in (False, True):
        model.train(train), plain.train(train)
        with torch.no_grad():
            difference = (model(x) - plain(x)).abs().max().item()
        assert difference == 0, (train, difference)
    gates = [m for n, m in model.named_modules() if n.endswith(".attention")]
    wrapped = not getattr(attn_zoo.create_attention(name, 16), "starts_as_identity", False)  # kept as built
    start = ConvIdentityStart if name in CONV_REPLACING else IdentityStart
    assert gates and all(isinstance(m, start) == wrapped for m in gates)
    learns = learning_within(with_and_without(name, init="default")[0].train(), x, steps=2)
    learning = learning_within(model.train(), x, steps=3)
    assert not learns - learning, f"no gradient with identity start: {sorted(learns - learning)}"
    scales = {f"{n}.scale" for n, m in model.named_modules() if isinstance(m, STARTS)}
    assert scales <= learning and len(scales) == len(gates) * wrapped


@pytest.mark.parametrize("name", sorted(CONV_REPLACING))
@pytest.mark.parametrize("backbone", ["resnet164", "wrn16_8"])
def test_conv_replacements_start_as_the_pre_activation_unit_too(name, backbone):
    """Pre-activation blocks: the replaced unit is a conv with the next conv's BN + ReLU. The start
    branch's BN statistics move as the replaced BN's do (each branch runs once per forward)."""
    torch.manual_seed(0)
    plain = randomise_batchnorm(attn_zoo.create_model(backbone, "none"))
    model = attn_zoo.create_model(backbone, name, init="identity")
    names = line_up(model, list(plain.state_dict()), backbone)
    missing, unexpected = model.load_state_dict({names[k]: v for k, v in plain.state_dict().items()}, strict=False)
    assert not unexpected and all(".attention." in key for key in missing)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    for train in (False, True):
        model.train(train), plain.train(train)
        with torch.no_grad():
            assert torch.equal(model(x), plain(x)), train
    ours = model.state_dict()
    assert all(torch.equal(value, ours[names[key]]) for key, value in plain.state_dict().items())


def test_conv_replacements_without_a_unit_to_start_as_are_refused():
    with pytest.raises(ValueError, match=r"'fusion' replaces a 3x3 conv unit but has no 3x3 branch .* add 3 to its kernels"):
        attn_zoo.create_model("resnet20", "fusion", init="identity", kernels=[1, 5])
    with pytest.raises(ValueError, match="cannot start 'sk' as mobilenet_v2's depthwise unit, which ends in ReLU6"):
        attn_zoo.create_model("mobilenet_v2", "sk", init="identity")


@pytest.mark.parametrize("name", sorted(CONV_REPLACING))
@pytest.mark.parametrize("backbone,arch", [("resnet18", "resnet18"), ("resnet50", "resnet50"), ("torchvision", "resnet18")])
def test_pretrained_conv_weights_become_the_start_branch(tmp_path, name, backbone, arch):
    """Fine-tuning a pretrained ResNet with sk/fusion in place of its 3x3 convs (basic block conv1,
    bottleneck conv2): the file's conv + BN load into the start branch, the model computes exactly
    what the pretrained one does, and the loaded branch trains at the pretrained learning rate."""
    _, path = saved(tmp_path, arch)
    options = {"weights": path, **({"arch": arch} if backbone == "torchvision" else {})}
    plain = attn_zoo.create_model(backbone, "none", backbone_options=options)
    model = attn_zoo.create_model(backbone, name, init="identity", backbone_options=options)
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    for train in (False, True):
        model.train(train), plain.train(train)
        with torch.no_grad():
            assert torch.equal(model(x), plain(x)), train
    units = [m.replaced_unit for m in model.modules() if isinstance(m, ConvIdentityStart)]
    starts = {n for n in model.pretrained_parameters if any(f".attention.{unit}." in n for unit in units)}
    assert len(model.pretrained_parameters) == len(plain.pretrained_parameters)
    assert units and len(starts) == 3 * len(units)  # each: conv weight, BN weight and bias


def test_unknown_init_is_an_error_naming_the_choices():
    with pytest.raises(ValueError, match="init must be one of default, identity"):
        attn_zoo.create_attention("se", 16, init="zero")


@pytest.mark.parametrize("name", ["se", "cbam", "eca", "simam"])
def test_inject_with_identity_start_keeps_a_torchvision_resnet18(name):
    """The issue's case: SE injected into a torchvision ResNet-18 with trained-like BN moved its logits."""
    torch.manual_seed(0)
    plain = randomise_batchnorm(torchvision.models.resnet18(weights=None, num_classes=10)).eval()
    model = randomise_batchnorm(torchvision.models.resnet18(weights=None, num_classes=10))
    model.load_state_dict(plain.state_dict())
    attn_zoo.inject(model, name, after="layer*.*.bn2", init="identity")
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model.eval()(x), plain(x))
        assert not torch.equal(attn_zoo.inject(plain, name, after="layer*.*.bn2")[0](x), model(x))


def test_identity_start_through_the_config(tmp_path):
    from attn_zoo.config import build_model, compose
    from attn_zoo.train import _attention_variant

    cfg = compose(["attention=eca", "attention.init=identity"])
    default = compose(["attention=eca"])
    model = build_model(cfg, num_classes=10)
    gates = [m for n, m in model.named_modules() if n.endswith(".attention")]
    assert gates and all(isinstance(m, IdentityStart) and m.kernel_size == 3 for m in gates)
    assert _attention_variant(cfg) == "eca[init=identity]" and _attention_variant(default) == "eca"

