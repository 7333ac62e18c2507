"""SimAM (simam): parameter-free, the paper's energy per neuron, a 1x1 map, the lambda check."""
import pytest
import torch
from omegaconf import OmegaConf

from attn_zoo.attention.simam import SimAM
from attn_zoo.cost import count_params
from tests.helpers import ROOT


def test_has_no_parameters():
    assert count_params(SimAM(64)) == 0


@pytest.mark.parametrize("lambda_", [1e-4, 0.1])
def test_matches_the_paper_energy_per_neuron(lambda_):
    torch.manual_seed(0)
    x = torch.randn(2, 3, 4, 5, dtype=torch.float64)
    expected = torch.empty_like(x)
    for n in range(2):
        for c in range(3):
            values = x[n, c].flatten()
            for i, t in enumerate(values):  # closed form: μ, σ² (n = H·W − 1) over the whole channel
                mu, var = values.mean(), ((values - values.mean()) ** 2).sum() / (values.numel() - 1)
                energy = (t - mu) ** 2 / (4 * (var + lambda_)) + 0.5
                expected[n, c].view(-1)[i] = t * torch.sigmoid(energy)
    torch.testing.assert_close(SimAM(3, lambda_=lambda_)(x), expected)


def test_one_by_one_map_uses_zero_variance():
    x = torch.randn(3, 4, 1, 1)
    y = SimAM(4)(x)
    assert torch.isfinite(y).all()
    torch.testing.assert_close(y, x * torch.sigmoid(torch.tensor(0.5)))


def test_rejects_nonpositive_lambda():
    with pytest.raises(ValueError, match="lambda_ must be > 0"):
        SimAM(4, lambda_=0)


def test_the_default_lambda_is_the_papers_1e_4():
    """On channels of variance ~1e-4, λ moves the output: the module's and the config's default must
    be the paper's 1e-4."""
    torch.manual_seed(0)
    x = 0.01 * torch.randn(2, 3, 4, 5, dtype=torch.float64)
    mu = x.mean(dim=(2, 3), keepdim=True)
    var = ((x - mu) ** 2).sum(dim=(2, 3), keepdim=True) / (4 * 5 - 1)
    torch.testing.assert_close(SimAM(3)(x), x * torch.sigmoid((x - mu) ** 2 / (4 * (var + 1e-4)) + 0.5))
    assert OmegaConf.load(ROOT / "conf" / "attention" / "simam.yaml").lambda_ == 1e-4
