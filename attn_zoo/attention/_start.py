"""How an attention module starts: as built (``init="default"``) or as the identity (``"identity"``).

One option for every registered module, applied by the registry (``ATTENTION.build(..., init=...)``),
so a module file needs nothing for it. ``identity`` wraps the module in ``IdentityStart``:

    y = x + α · (attention(x) − x),    α a learnable scalar, 0 at the start

With α = 0 the output is x bit for bit (x + 0 = x for every finite x), so a network with attention
added computes exactly what it computed without, in eval and train mode: what fine-tuning a
pretrained model needs, since a gate that starts at sigmoid(·) ≈ 0.5 halves every activation it
touches. The gradient of α is Σ dL/dy · (attention(x) − x), non-zero from the first step; the
module's own parameters get α times their usual gradient, 0 at step 0 and non-zero once α has moved
(the second step). α = 1 is the module alone.

A module that already starts as the identity sets ``starts_as_identity = True`` and is kept as built
(``gc`` with ``fusion=add``: x + a zero-initialised transform). Wrapping it would freeze it: while
attention(x) = x, α's gradient is 0, and so are its parameters' (α times theirs).

Modules that replace a conv (``sk``, ``fusion``) are refused: their identity would be the replaced
conv + BN + ReLU, which they do not contain, so no blend of their output can equal it.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

INITS = ("default", "identity")
COMMON_OPTIONS = {"init": "default"}  # options every attention takes, beside its constructor's


class IdentityStart(nn.Module):
    """``x + scale · (module(x) − x)`` with ``scale`` a learnable scalar starting at 0."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module
        self.scale = nn.Parameter(torch.zeros(()))
        if isinstance(getattr(module, "kernel_size", None), int):  # ECA's k, recorded in results.json
            self.kernel_size = module.kernel_size

    def forward(self, x: Tensor) -> Tensor:
        return x + self.scale * (self.module(x) - x)


def apply_init(module: nn.Module, name: str, init: str = "default") -> nn.Module:
    """``module`` as ``init`` says it starts; ValueError for an unknown init or a conv replacement."""
    if init not in INITS:
        raise ValueError(f"attention init must be one of {', '.join(INITS)}, got {init!r}")
    if init == "default" or name == "none" or getattr(module, "starts_as_identity", False):
        return module
    if getattr(module, "replaces_conv", False):
        raise ValueError(
            f"attention '{name}' replaces a conv, so init=identity cannot make it the identity (it would "
            f"have to be the replaced conv + BN + ReLU); use a gate (se, eca, cbam, ...) or init=default"
        )
    return IdentityStart(module)
