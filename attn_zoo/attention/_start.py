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

A module that replaces a conv (``sk``, ``fusion``) stands where a conv + BN + ReLU unit U was, so its
"identity" is U, not x. Each has one branch built exactly as U (SK's 3×3 branch 0, fusion's k = 3
branch: same shape, stride, groups, BN and ReLU), named by its ``identity_path``, and
``ConvIdentityStart`` blends from that branch (Li et al.'s SK select step, started at one branch):

    y = U(x) + α · (module(x) − U(x)),    α a learnable scalar, 0 at the start

U(x) is the branch output the module computed anyway (each branch runs once, so its BN statistics
move once per step, as the replaced unit's did). With α = 0 and U holding the replaced conv's and
BN's weights the network computes what it computed before, bit for bit: ``backbone.weights`` loads
the replaced conv + BN into that branch (``replaced_unit`` is its state-dict prefix), and a
fine-tuning run starts from the pretrained function. U's parameters get their full gradient from
the first step, α too (Σ dL/dy · (module(x) − U(x))); the other branches and the selection get α
times theirs, non-zero from the second step. A conv replacement without such a branch (``fusion``
without 3 in ``kernels``) is refused.
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


class ConvIdentityStart(nn.Module):
    """``U + scale · (module(x) − U)`` with U the module's branch ``identity_path`` (the replaced unit)."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module
        self.scale = nn.Parameter(torch.zeros(()))
        self.path = module.identity_path
        self.replaced_unit = f"module.branches.{self.path}"  # where the replaced conv + BN's weights load

    def forward(self, x: Tensor) -> Tensor:
        out, branches = self.module.forward_with_branches(x)
        unit = branches[self.path]
        return unit + self.scale * (out - unit)


def apply_init(module: nn.Module, name: str, init: str = "default") -> nn.Module:
    """``module`` as ``init`` says it starts; ValueError for an unknown init or a conv replacement
    with no branch that is the replaced unit."""
    if init not in INITS:
        raise ValueError(f"attention init must be one of {', '.join(INITS)}, got {init!r}")
    if init == "default" or name == "none" or getattr(module, "starts_as_identity", False):
        return module
    if not getattr(module, "replaces_conv", False):
        return IdentityStart(module)
    if getattr(module, "identity_path", None) is None:
        raise ValueError(
            f"attention '{name}' replaces a 3x3 conv unit but has no 3x3 branch to start as, so init=identity "
            f"cannot keep the network's output; add 3 to its kernels (e.g. attention.kernels=[1,3,5])"
        )
    return ConvIdentityStart(module)
