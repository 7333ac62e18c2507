"""Style-based Recalibration Module (Lee, Kim, Nam: "SRM: A Style-based Recalibration Module for
Convolutional Neural Networks", ICCV 2019).

    μ_c = mean_{hw} x_c,  σ_c = sqrt(var_{hw} x_c + ε)      style pooling, (N, C, 2)
    z_c = w_c,1 · μ_c + w_c,2 · σ_c                         channel-wise FC: 2 weights per channel
    g = sigmoid(BN(z))
    y = x ⊙ g

The variance is unbiased (divides by H·W − 1), as in the authors' code, with ε = 1e-5 (the revision
of their code read here, be16241, takes ``x.std()`` without ε; later ports add 1e-5); on a 1×1
map (H·W − 1 = 0) it is taken as 0, so σ = sqrt(ε) rather than NaN. The channel-wise weights start
at zero, as in the authors' code, so every gate starts at sigmoid(BN bias) = 0.5.

Parameters: 2C (channel-wise FC, no bias) + 2C (BN) = 4C.

``exempt_from_decay`` (default true, as the authors' training script, which puts the channel-wise
weights and the BN's weight and bias in a parameter group with weight decay 0): the module sets
``no_weight_decay`` and the optimiser leaves its parameters undecayed whatever
``optim.exclude_norm_and_bias`` says. Decayed, the channel-wise weights are pulled back towards their
zero start, every gate towards a constant. Runs made before the option decayed them (``false``,
``attn_zoo.later_options``).

Departure: BN uses running statistics when a training batch has a single sample
(``TolerantBatchNorm2d``), where ``nn.BatchNorm2d`` would raise.
"""
import torch
from torch import Tensor, nn

from attn_zoo.attention._batchnorm import TolerantBatchNorm2d
from attn_zoo.registry import register_attention


def style_pool(x: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    """Per-channel mean and standard deviation over H×W, each (N, C)."""
    flat = x.flatten(2)
    mean = flat.mean(dim=2)
    degrees_of_freedom = max(flat.shape[2] - 1, 1)
    variance = (flat - mean.unsqueeze(2)).square().sum(dim=2) / degrees_of_freedom
    return mean, torch.sqrt(variance + eps)


@register_attention("srm", "Style-based Recalibration: mean+std pooling, channel-wise FC, BN, sigmoid")
class StyleRecalibration(nn.Module):
    def __init__(self, channels: int, *, eps: float = 1e-5, exempt_from_decay: bool = True):
        super().__init__()
        if eps <= 0:
            raise ValueError(f"eps must be > 0 (it keeps the std differentiable), got {eps}")
        self.eps = eps
        self.no_weight_decay = exempt_from_decay  # read by attn_zoo.optim.parameter_groups
        self.style_weights = nn.Parameter(torch.zeros(channels, 2))
        self.norm = TolerantBatchNorm2d(channels)

    def forward(self, x: Tensor) -> Tensor:
        mean, std = style_pool(x, self.eps)
        z = mean * self.style_weights[:, 0] + std * self.style_weights[:, 1]
        return x * self.norm(z[:, :, None, None]).sigmoid()
