"""CIFAR ResNets: parameter counts of the paper, where SE sits in the block, forward/backward and FLOPs, errors."""
import pytest
import torch

import attn_zoo
from attn_zoo.cost import count_attention_params, count_flops, count_params


@pytest.mark.parametrize(
    "depth,shortcut,expected",
    [(20, "projection", 272_474), (56, "projection", 855_770), (110, "projection", 1_730_714), (20, "pad", 269_722)],
)
def test_cifar_resnet_parameter_counts(depth, shortcut, expected):
    model = attn_zoo.create_model(f"resnet{depth}", "none", backbone_options={"shortcut": shortcut})
    assert count_params(model) == expected


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
