"""Triplet attention (triplet): parameter count, the paper's formula (train and eval, with and without
the spatial branch, the default 7×7 kernel), the odd-kernel check."""
import pytest
import torch
import torch.nn.functional as F

from attn_zoo.attention.triplet import TripletAttention
from attn_zoo.cost import count_params
from attention_checks import randomize


@pytest.mark.parametrize("kernel_size,spatial,branches", [(7, True, 3), (3, True, 3), (7, False, 2)])
def test_parameter_count_formula(kernel_size, spatial, branches):
    module = TripletAttention(64, kernel_size=kernel_size, spatial=spatial)
    assert count_params(module) == branches * (2 * kernel_size**2 + 2)


def z_pool(x: torch.Tensor, dim: int) -> torch.Tensor:
    """The paper's Z-pool: max and mean over ``dim``, stacked as 2 channels."""
    return torch.stack([x.amax(dim=dim), x.mean(dim=dim)], dim=1)


def gate(pooled: torch.Tensor, branch, train: bool) -> torch.Tensor:
    """sigmoid(BN(conv(pooled))) of a (N, 2, rows, cols) map: BN by the batch's statistics in training
    (biased variance), by the running ones in eval; (N, rows, cols)."""
    s = F.conv2d(pooled, branch.conv.weight, padding=branch.conv.padding)
    norm = branch.norm
    if train:
        mean, var = s.mean(dim=(0, 2, 3)), s.var(dim=(0, 2, 3), unbiased=False)
    else:
        mean, var = norm.running_mean, norm.running_var
    return torch.sigmoid((s - mean) / torch.sqrt(var + norm.eps) * norm.weight + norm.bias)[:, 0]


@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize("spatial", [True, False], ids=["three_branches", "no_spatial"])
@pytest.mark.parametrize("kernel_size", [None, 3], ids=["default_7", "k3"])
def test_matches_the_paper_formula(train, spatial, kernel_size):
    """Each branch gates x from a 2-D plane of its axes, the third pooled: (C rows, W cols) pooled over
    H; (H rows, C cols) pooled over W (the paper's rotation of the C-H plane); (H, W) pooled over C;
    the output is x times the branches' mean gate."""
    options = {"spatial": spatial} | ({"kernel_size": kernel_size} if kernel_size else {})
    module = randomize(TripletAttention(5, **options)).train(train)
    assert module.channel_width.conv.kernel_size == (kernel_size or 7,) * 2
    x = torch.randn(2, 5, 6, 4)
    gates = [
        gate(z_pool(x, 2), module.channel_width, train)[:, :, None, :],
        gate(z_pool(x, 3).transpose(-1, -2), module.channel_height, train).transpose(-1, -2)[..., None],
    ]
    if spatial:
        gates.append(gate(z_pool(x, 1), module.height_width, train)[:, None])
    running_mean = module.channel_width.norm.running_mean.clone()
    torch.testing.assert_close(module(x), x * sum(gates) / len(gates))
    if train:  # the authors' BN momentum, 0.01
        s = F.conv2d(z_pool(x, 2), module.channel_width.conv.weight, padding=module.channel_width.conv.padding)
        torch.testing.assert_close(module.channel_width.norm.running_mean, 0.99 * running_mean + 0.01 * s.mean())


def test_rejects_even_kernel():
    with pytest.raises(ValueError, match="kernel_size must be odd and >= 1, got 4"):
        TripletAttention(8, kernel_size=4)


@pytest.mark.parametrize("train", [True, False])
def test_zero_init_spatial_starts_the_height_width_gate_at_one_half_as_the_released_code(train):
    """The authors' ResNet zeroes the BN weight of the H–W branch (``SpatialGate``) alone: that gate
    is 0.5 everywhere at the start, the other two are as without the option; the weight still learns."""
    torch.manual_seed(0)
    module = TripletAttention(5, zero_init_spatial=True).train(train)
    torch.manual_seed(0)
    default = TripletAttention(5).train(train)
    x = torch.randn(2, 5, 6, 4)
    assert module.height_width.norm.weight.item() == 0 and default.height_width.norm.weight.item() == 1
    others = [module.channel_width(x.permute(0, 2, 1, 3)).permute(0, 2, 1, 3),
              module.channel_height(x.permute(0, 3, 2, 1)).permute(0, 3, 2, 1)]
    torch.testing.assert_close(module(x), (sum(others) + 0.5 * x) / 3)
    torch.testing.assert_close(module.channel_width(x), default.channel_width(x))
    module(x).square().sum().backward()
    assert module.height_width.norm.weight.grad.abs().item() > 1e-4


def test_zero_init_spatial_needs_the_spatial_branch():
    with pytest.raises(ValueError, match="needs spatial=true"):
        TripletAttention(8, spatial=False, zero_init_spatial=True)


def test_zero_init_spatial_reaches_the_model_from_the_command_line():
    from attn_zoo.config import build_model, compose

    model = build_model(compose(["attention=triplet", "attention.zero_init_spatial=true"]), 10)
    weights = [m.height_width.norm.weight.item() for m in model.modules() if isinstance(m, TripletAttention)]
    assert len(weights) == 9 and set(weights) == {0.0}
