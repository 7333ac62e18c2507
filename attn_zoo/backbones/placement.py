"""Where an attention module sits in a residual block, and which stages get one.

Placements (Hu et al., "Squeeze-and-Excitation Networks", TPAMI 2020, Fig. 5, Tables 14 and 15),
for a block ``out = act(branch(x) + shortcut(x))``:

- ``standard``: on the residual branch after its last BatchNorm, before the addition (SE block).
- ``pre``:      on the block input, before the branch; the shortcut still sees x (SE-PRE).
- ``post``:     on the block output, after the addition and its ReLU (SE-POST).
- ``identity``: on the shortcut, in parallel with the branch (SE-Identity).
- ``3x3``:      inside a bottleneck, after its 3×3 conv + BN + ReLU (SE_3×3), on the narrow width.
- ``after_3x3_conv``: straight after the branch's last 3×3 conv, before the BN that follows it (a
  bottleneck's or MobileNetV2's only 3×3, on the narrow width): where SimAM's authors put SimAM in
  every block (Yang et al.'s code; a parameter-free gate whose scale the next BN then absorbs). In a
  pre-activation basic block no BN follows the last conv: the same point as ``standard``.

A module whose class sets ``replaces_conv = True`` (SK, fusion) is not a gate: it takes the place
of a conv + BN + ReLU unit of the branch (the bottleneck's 3×3, the basic block's first 3×3), and
only ``standard`` makes sense for it.

Every module a backbone puts in is a submodule named ``attention``: ``attention_modules`` and
``is_attention_path`` are the one place that rule is spelt out; ``initialise_backbone`` says which
modules a backbone's weight initialisation covers (not attention, but a conv replacement's branches).
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator

from torch import Tensor, nn

from attn_zoo.seeding import cpu_generator_seeded, derived_seed, generator_position

PLACEMENTS = ("standard", "pre", "post", "identity", "3x3", "after_3x3_conv")
ATTENTION_NAME = "attention"

AttentionFactory = Callable[..., nn.Module]


@dataclass(frozen=True)
class Attention:
    """Builds one attention module per block: ``Attention(...)(channels, **conv_options)``.

    ``create_model`` passes one of these to every backbone; a bare ``callable(channels)`` works
    too (it is then a gate, never a conv replacement).
    """

    name: str
    build: Callable[..., nn.Module]
    options: dict[str, Any] = field(default_factory=dict)
    replaces_conv: bool = False
    # the k-th module built draws its weights from a stream of its own, seeded from where torch's
    # generator stands when this is made (read, not drawn from) and k, never from the generator
    # itself: the backbone around it then draws the same weights, and the data loader after it the
    # same order, whichever attention the run has. Runs of one seed compare modules on the same
    # network and data; two models built one after the other still get different modules.
    seed: int = field(default_factory=generator_position)
    built: Iterator[int] = field(default_factory=itertools.count, compare=False, repr=False)

    def __call__(self, channels: int, **conv_options) -> nn.Module:
        with cpu_generator_seeded(derived_seed(self.seed, next(self.built))):
            # where a module replaces a conv, the backbone fixes its shape (out_channels, stride, groups)
            return self.build(self.name, channels, **{**self.options, **conv_options})


def is_attention_path(name: str) -> bool:
    """Whether a dotted module or state-dict name is an ``attention`` submodule or lies inside one."""
    return ATTENTION_NAME in name.split(".")


def initialise_backbone(model: nn.Module, initialise: Callable[[nn.Module], None]) -> None:
    """``initialise(module)`` for each submodule a backbone's weight initialisation covers: all but the
    attention modules, which keep their own, and yet the ``branches`` of a module that replaces a
    conv (SK, fusion): they stand where the backbone's conv + BN + ReLU was and start as it would
    (timm's ResNet initialises SK's convs with its own; default-initialised, they started 2.4×
    smaller than the conv they replace, at another effective weight decay and learning rate).

    In a replacement's place comes first a stand-in of the conv it replaced (``build_replacement``),
    so the initialisation draws from torch's generator what it drew for that conv, then its branches,
    initialised in a stream of their own: the layers after it, and the data order after the model,
    are those of the network without attention at the same seed (common random numbers)."""
    inside_replacements: set[int] = set()
    for name, module in model.named_modules():
        if id(module) in inside_replacements:
            continue
        if name.rpartition(".")[2] == ATTENTION_NAME and replaces_conv(getattr(module, "module", module)):
            inside_replacements.update(id(inner) for inner in module.modules())
            replaced = getattr(module, "replaced_conv", None)
            if replaced is None:
                raise TypeError(f"{name} replaces a conv but was not built by placement.build_replacement, "
                                "which draws the conv it replaces and notes its shape")
            initialise(_conv3x3(skip_init=True, **replaced))
            initialise_branches(module, initialise)
        elif not is_attention_path(name):
            initialise(module)


def initialise_branches(replacement: nn.Module, initialise: Callable[[nn.Module], None], stream: int = 0) -> None:
    """``initialise`` each module of a conv replacement's ``branches`` in a stream of its own, seeded
    from where torch's generator stands (read, not drawn from) and ``stream``: the generator is left
    where the network without attention leaves it."""
    branches = conv_replacement_branches(replacement)
    if branches is not None:
        with cpu_generator_seeded(derived_seed(generator_position(), stream)):
            for inner in branches.modules():
                initialise(inner)


def build_replacement(attention: AttentionFactory, in_channels: int, out_channels: int, stride: int,
                      groups: int = 1) -> nn.Module:
    """The module ``attention`` builds in place of a block's 3×3 conv (+ BN + ReLU) of that shape, after
    drawing from torch's generator what that conv's construction drew (its default init), its shape
    noted for ``initialise_backbone``: the backbone around it then draws what it draws without attention."""
    module = attention(in_channels, out_channels=out_channels, stride=stride, groups=groups)
    shape = {"in_channels": in_channels, "out_channels": out_channels, "stride": stride, "groups": groups}
    _conv3x3(**shape)
    module.replaced_conv = shape
    return module


def _conv3x3(*, skip_init: bool = False, **shape) -> nn.Conv2d:
    """The 3×3 conv a replacement stands for; ``skip_init``: built without drawing (on the meta device)."""
    options = {"kernel_size": 3, "padding": 1, "bias": False, **shape}
    return nn.utils.skip_init(nn.Conv2d, **options) if skip_init else nn.Conv2d(**options)


def conv_replacement_branches(attention: nn.Module) -> nn.Module | None:
    """The conv + BN + ReLU ``branches`` of a module that replaces a conv (inside an identity-start
    wrapper too); None for a gate, or a replacement that names no ``branches`` (it keeps its own init)."""
    inner = getattr(attention, "module", attention)
    return getattr(inner, "branches", None) if getattr(inner, "replaces_conv", False) else None


def attention_modules(model: nn.Module) -> dict[str, nn.Module]:
    """The model's submodules named ``attention``, by qualified name, in the model's order."""
    return {name: module for name, module in model.named_modules() if name.rpartition(".")[2] == ATTENTION_NAME}


def attention_name(attention: AttentionFactory) -> str:
    return getattr(attention, "name", getattr(attention, "__name__", type(attention).__name__))


def replaces_conv(attention: AttentionFactory) -> bool:
    return bool(getattr(attention, "replaces_conv", False))


def check_placement(placement: str, attention: AttentionFactory, backbone: str, valid: Iterable[str]) -> None:
    """Fail at build time, in one line, for a placement this backbone or module cannot take."""
    valid = tuple(valid)
    if placement not in PLACEMENTS:
        raise ValueError(f"unknown placement '{placement}'; valid: {', '.join(PLACEMENTS)}")
    if replaces_conv(attention) and placement != "standard":
        raise ValueError(
            f"attention '{attention_name(attention)}' replaces a conv of the block, so only placement "
            f"'standard' applies, got '{placement}'"
        )
    if placement not in valid:
        raise ValueError(f"placement '{placement}' does not apply to {backbone}; valid here: {', '.join(valid)}")


def selected_stages(stages: Iterable[int] | None, num_stages: int) -> frozenset[int]:
    """Stage numbers (1-based) that get attention; ``None`` means all of them."""
    valid = range(1, num_stages + 1)
    if stages is None:
        return frozenset(valid)
    if isinstance(stages, int):
        stages = [stages]
    chosen = [int(stage) for stage in stages]
    wrong = [stage for stage in chosen if stage not in valid]
    if wrong:
        raise ValueError(
            f"stages {wrong} out of range; valid: {', '.join(str(s) for s in valid)} "
            f"(this backbone has {num_stages} stages)"
        )
    return frozenset(chosen)


class AttentionSlot(nn.Module):
    """Base for blocks that hold at most one ``attention`` module at one placement.

    ``placement`` is ``None`` for a block without attention (its stage was not selected).
    """

    placement: str | None = None

    def attend(self, position: str, x: Tensor) -> Tensor:
        return self.attention(x) if position == self.placement else x


def block_attention(
    attention: AttentionFactory, placement: str | None, channels_at: dict[str, int]
) -> nn.Module | None:
    """The gate for a block, built for the channel count where it sits; None without attention."""
    if placement is None or replaces_conv(attention):
        return None
    return attention(channels_at[placement])
