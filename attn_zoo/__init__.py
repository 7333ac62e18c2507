"""attn_zoo: fair ablations of channel attention in image classifiers.

    model = attn_zoo.create_model("resnet20", attention="se", num_classes=10, reduction=8)
    gate = attn_zoo.create_attention("se", 64, reduction=16)
    attn_zoo.list_attention()  # ['cbam', 'cbam_channel', ..., 'triplet'] (sorted)
    model, changed = attn_zoo.inject(torchvision_model, "se", after="layer*.*.bn3")
"""
from __future__ import annotations

from torch import nn

from attn_zoo import attention as _attention_modules  # noqa: F401  (registers modules)
from attn_zoo import backbones as _backbone_modules  # noqa: F401  (registers backbones)
from attn_zoo.backbones.inject import inject
from attn_zoo.backbones.placement import Attention, attention_modules
from attn_zoo.registry import ATTENTION, BACKBONES, UnknownNameError
from attn_zoo.seeding import cpu_generator_seeded

__all__ = [
    "create_attention",
    "create_model",
    "list_attention",
    "list_backbones",
    "attention_defaults",
    "inject",
    "UnknownNameError",
]


def create_attention(name: str, channels: int, **options) -> nn.Module:
    """One attention module for a ``(N, channels, H, W)`` input.

    ``init="identity"`` (an option of every module) starts it as the identity: see
    ``attn_zoo/attention/_start.py``.
    """
    if channels < 1:
        raise ValueError(f"channels must be >= 1, got {channels}")
    return ATTENTION.build(name, channels, **options)


def create_model(
    backbone: str,
    attention: str = "none",
    num_classes: int | None = None,
    *,
    backbone_options: dict | None = None,
    **attention_options,
) -> nn.Module:
    """A backbone with ``attention`` in its blocks (where ``backbone_options`` place it).

    ``num_classes=None`` keeps the backbone's default (10 for CIFAR nets, 1000 for ImageNet ones).
    ``init="identity"`` (an attention option) makes the model compute, at the start, exactly what
    it computes without attention.
    """
    entry = ATTENTION.get(attention)
    # Build one module up front so a bad option fails here, not deep inside the backbone (drawing
    # nothing from torch's generator: the backbone's weights must not depend on the attention)
    with cpu_generator_seeded(0):
        create_attention(attention, 64, **attention_options)
    factory = Attention(
        attention, create_attention, attention_options, replaces_conv=getattr(entry.constructor, "replaces_conv", False)
    )
    if factory.replaces_conv:
        _refuse_conv_shape_options(attention, attention_options, entry.defaults())
    options = dict(backbone_options or {})
    if num_classes is not None:
        options["num_classes"] = num_classes
    model = BACKBONES.build(backbone, factory, **options)
    _require_a_place(model, backbone, attention, options)
    return model


CONV_SHAPE_OPTIONS = ("out_channels", "stride", "groups")


def _refuse_conv_shape_options(attention: str, options: dict, defaults: dict) -> None:
    """A module that replaces a conv takes that conv's shape from the block: ``attention.groups=32`` was
    built into the check module, recorded in the run's label (``sk[groups=32]``), and then overridden
    by every block, so the run was plain ``sk`` under another name."""
    fixed = [key for key in CONV_SHAPE_OPTIONS if key in options and options[key] != defaults.get(key)]
    if fixed:
        raise ValueError(f"attention '{attention}' replaces a conv of each block, which sets its "
                         f"{', '.join(fixed)}: attention.{fixed[0]}={options[fixed[0]]} would be ignored; remove it")


def _require_a_place(model: nn.Module, backbone: str, attention: str, options: dict) -> None:
    """A model with attention requested but none placed is the plain network: recorded under the
    attention's name it would be a baseline labelled otherwise, so refuse it.

    Backbones name every module they put in ``attention`` (``backbones/placement.py``).
    """
    if attention == "none" or attention_modules(model):
        return
    raise ValueError(
        f"attention '{attention}' has no place in {backbone} (stages={options.get('stages', 'default')}, "
        f"placement={options.get('placement', 'default')}): no block would get it and the run would train "
        f"the plain network; choose at least one stage, or attention=none for the baseline"
    )


def list_attention() -> list[str]:
    return ATTENTION.names()


def list_backbones() -> list[str]:
    return BACKBONES.names()


def attention_defaults(name: str) -> dict:
    """The options of attention ``name`` and their default values: its constructor's and the ones
    every module takes (``init``)."""
    return {**ATTENTION.get(name).defaults(), **ATTENTION.common}
