"""SimAM (Yang, Zhang, Li, Xie: "SimAM: A Simple, Parameter-Free Attention Module for
Convolutional Neural Networks", ICML 2021).

    d = (x − μ)²                         μ: per-channel spatial mean
    σ² = Σ_{hw} d / n,  n = H·W − 1      per-channel spatial variance (the authors' code and pseudocode)
    e = d / (4(σ² + λ)) + 0.5            inverse of each neuron's minimal energy
    y = x ⊙ sigmoid(e)

Parameters: 0. λ (``lambda_``) = 1e-4, the paper's CIFAR value; the authors' ImageNet models use
0.1 (their README and logs, ``imagenet-resnet50-simam-param0.1``).

Where: the authors' code puts SimAM straight after each block's last 3×3 conv, before its BN (a
bottleneck's 3×3, MobileNetV2's depthwise conv), not after the last BN as SE: use
``backbone.placement=after_3x3_conv`` to match them. At the default ``standard`` placement nothing
renormalises its output: a gate of at least sigmoid(0.5) = 0.62 shrinks the residual branch.

Departure: on a 1×1 map n = 0 and σ² would be 0/0; n is taken as max(H·W − 1, 1), so there
σ² = 0, e = 0.5 and y = x · sigmoid(0.5) (a lone neuron is not distinctive), never NaN.
"""
from torch import Tensor, nn

from attn_zoo.registry import register_attention


@register_attention("simam", "SimAM: parameter-free energy-based 3-D attention")
class SimAM(nn.Module):
    def __init__(self, channels: int, *, lambda_: float = 1e-4):
        super().__init__()
        if lambda_ <= 0:
            raise ValueError(f"lambda_ must be > 0, got {lambda_}")
        self.lambda_ = lambda_

    def forward(self, x: Tensor) -> Tensor:
        n = max(x.shape[2] * x.shape[3] - 1, 1)
        squared_deviation = (x - x.mean(dim=(2, 3), keepdim=True)).square()
        variance = squared_deviation.sum(dim=(2, 3), keepdim=True) / n
        energy = squared_deviation / (4 * (variance + self.lambda_)) + 0.5
        return x * energy.sigmoid()
