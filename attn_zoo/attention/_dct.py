"""The orthonormal DCT-II basis, shared by FcaNet (``fca``) and the ``dct`` squeeze of ``se``.

    B_u(i) = sqrt((1 if u == 0 else 2) / L) · cos(π u (i + ½) / L),   i = 0 … L−1
"""
import math

import torch
from torch import Tensor


def dct_basis(frequencies: Tensor, length: int) -> Tensor:
    """Basis rows for integer ``frequencies``: shape (len(frequencies), length), float64."""
    positions = torch.arange(length, dtype=torch.float64, device=frequencies.device) + 0.5
    basis = torch.cos(math.pi * frequencies.double()[:, None] * positions / length)
    scale = torch.where(frequencies == 0, 1.0, 2.0).double().sqrt()[:, None] / math.sqrt(length)
    return basis * scale
