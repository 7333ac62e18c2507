"""Style-based Recalibration (srm): 4C parameters, the paper's formula, a 1x1 map, gates starting at one half."""
import pytest
import torch

from attn_zoo.attention.srm import StyleRecalibration
from attn_zoo.cost import count_params
from attention_checks import randomize


@pytest.mark.parametrize("channels", [1, 64, 512])
def test_parameter_count_is_four_per_channel(channels):
    assert count_params(StyleRecalibration(channels)) == 4 * channels


@pytest.mark.parametrize("train", [False, True])
def test_matches_the_paper_formula(train):
    module = randomize(StyleRecalibration(6)).train(train)
    x = torch.randn(4, 6, 5, 3)
    flat = x.flatten(2)
    mean, std = flat.mean(2), torch.sqrt(flat.var(2, unbiased=True) + 1e-5)
    z = module.style_weights[:, 0] * mean + module.style_weights[:, 1] * std
    norm = module.norm
    if train:
        z_hat = (z - z.mean(0)) / torch.sqrt(z.var(0, unbiased=False) + norm.eps)
    else:
        z_hat = (z - norm.running_mean) / torch.sqrt(norm.running_var + norm.eps)
    gate = torch.sigmoid(z_hat * norm.weight + norm.bias)
    torch.testing.assert_close(module(x), x * gate[:, :, None, None])


def test_one_by_one_map_has_zero_variance_not_nan():
    module = randomize(StyleRecalibration(3)).eval()
    x = torch.randn(2, 3, 1, 1)
    norm = module.norm
    z = module.style_weights[:, 0] * x.flatten(1) + module.style_weights[:, 1] * 1e-5 ** 0.5
    gate = torch.sigmoid((z - norm.running_mean) / torch.sqrt(norm.running_var + norm.eps) * norm.weight + norm.bias)
    torch.testing.assert_close(module(x), x * gate[:, :, None, None])


def test_starts_with_every_gate_at_one_half():
    x = torch.randn(3, 4, 5, 5)
    torch.testing.assert_close(StyleRecalibration(4)(x), x * 0.5)


def test_rejects_nonpositive_eps():
    with pytest.raises(ValueError, match="eps must be > 0"):
        StyleRecalibration(4, eps=0)


def _decay_by_parameter(exempt_from_decay: bool, exclude_norm_and_bias: bool) -> dict[str, float]:
    from attn_zoo.config import build_model, compose
    from attn_zoo.optim import OptimizerFactory

    model = build_model(compose(["attention=srm", f"attention.exempt_from_decay={exempt_from_decay}"]), 10)
    optimizer = OptimizerFactory("torch.optim.SGD", exclude_norm_and_bias=exclude_norm_and_bias, lr=0.1,
                                 weight_decay=5e-4)(model)
    by_id = {id(p): group["weight_decay"] for group in optimizer.param_groups for p in group["params"]}
    names = [name for name, _ in model.named_parameters()]
    assert len(by_id) == len(names), "every parameter in one group"
    return {name: by_id[id(p)] for name, p in model.named_parameters()}


@pytest.mark.parametrize("exclude_norm_and_bias", [False, True])
def test_the_modules_parameters_are_not_decayed_as_in_the_authors_recipe(exclude_norm_and_bias):
    """Their script puts cfc, bn.weight and bn.bias of every SRM in a group with weight decay 0."""
    decay = _decay_by_parameter(True, exclude_norm_and_bias)
    srm = {name: value for name, value in decay.items() if ".attention." in name}
    assert len(srm) == 3 * 9 and set(srm.values()) == {0.0}  # style_weights, norm.weight, norm.bias in 9 blocks
    convs = [value for name, value in decay.items() if name.endswith("conv1.weight")]
    assert convs and set(convs) == {5e-4}
    backbone_norms = {value for name, value in decay.items() if ".attention." not in name and "bn" in name}
    assert backbone_norms == ({0.0} if exclude_norm_and_bias else {5e-4})


def test_exempt_from_decay_false_decays_them_with_the_rest_in_one_group():
    decay = _decay_by_parameter(False, False)
    assert set(decay.values()) == {5e-4}
