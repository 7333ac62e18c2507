"""The models a bench times: ours for each (backbone, attention), with a fused tail, and timm's."""
from __future__ import annotations

import importlib.util
import sys
from dataclasses import dataclass
from functools import partial
from typing import Callable

from torch import nn

import attn_zoo
from attn_zoo.bench.settings import Settings, fused_tail_options
from attn_zoo.cost import count_flops, count_params

# timm's ResNet builds its blocks' attention from block_args=dict(attn_layer=...), placed as ours:
# after the block's last BatchNorm, before the residual addition. The same construction serves every
# attention (for se it is exactly timm's 'seresnet50'); ecaresnet50d is not used because its deep
# stem and average-pool shortcuts make it a different network.
TIMM_BACKBONES = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")
TIMM_ATTENTIONS = ("none", "se", "eca", "cbam")
TIMM_NOTES = {"cbam": "timm's CbamModule has no MLP biases (ours: mlp_bias=true)"}


@dataclass(frozen=True)
class Candidate:
    """One model to time: ours or timm's for a (backbone, attention) pair."""

    implementation: str
    backbone: str
    attention: str
    build: Callable[[], nn.Module]
    note: str = ""
    variant: str = ""

    @property
    def model(self) -> str:
        return f"{self.backbone}+{self.attention}{self.variant}"


class NoTimmEquivalent(LookupError):
    pass


def timm_model(backbone: str, attention: str) -> nn.Module:
    """timm's model for the pair, randomly initialised (never downloads weights)."""
    if backbone not in TIMM_BACKBONES or attention not in TIMM_ATTENTIONS:
        raise NoTimmEquivalent(
            f"no timm equivalent for ({backbone}, {attention}); timm pairs: "
            f"{', '.join(TIMM_BACKBONES)} x {', '.join(TIMM_ATTENTIONS)}"
        )
    import timm

    block_args = {} if attention == "none" else {"block_args": {"attn_layer": attention}}
    return timm.create_model(backbone, pretrained=False, **block_args)


def timm_note(backbone: str, attention: str) -> str:
    how = f"timm.create_model('{backbone}')"
    if attention != "none":
        how = f"timm.create_model('{backbone}', block_args=dict(attn_layer='{attention}'))"
    return "; ".join(filter(None, (how, TIMM_NOTES.get(attention, ""))))


def timm_candidate(backbone: str, attention: str) -> Candidate | None:
    if backbone not in TIMM_BACKBONES or attention not in TIMM_ATTENTIONS:
        print(f"note: no timm equivalent for ({backbone}, {attention}); skipped", file=sys.stderr)
        return None
    return Candidate("timm", backbone, attention, partial(timm_model, backbone, attention), timm_note(backbone, attention))


def fused_tail_candidate(backbone: str, attention: str, option: bool | str = True) -> Candidate | None:
    """Ours with ``backbone.fused_tail=<option>``, for an attention the fused tail computes."""
    from attn_zoo.fused.bn_se_tail import fuses
    from attn_zoo.registry import BACKBONES

    if "fused_tail" not in BACKBONES.get(backbone).defaults():
        print(f"note: backbone '{backbone}' has no fused tail; fused_tail row skipped", file=sys.stderr)
        return None
    if not fuses(attn_zoo.create_attention(attention, 64)):
        if attention != "none":
            print(f"note: attention '{attention}' has no fused tail; fused_tail row skipped", file=sys.stderr)
        return None
    build = partial(attn_zoo.create_model, backbone, attention, backbone_options={"fused_tail": option})
    name = "true" if option is True else option
    variant = "+fused_tail" if option is True else f"+fused_tail_{option}"
    return Candidate("attn_zoo", backbone, attention, build, f"backbone.fused_tail={name}", variant=variant)


def candidates(settings: Settings) -> list[Candidate]:
    """Ours for every pair, then ours with a fused tail (``fused_tail=true``), then timm's (``timm=true``)."""
    with_timm = settings.timm and importlib.util.find_spec("timm") is not None
    if settings.timm and not with_timm:
        print("note: timm is not installed; timm=true is ignored", file=sys.stderr)
    found = []
    for backbone in settings.backbones:
        for attention in settings.attentions:
            found.append(Candidate("attn_zoo", backbone, attention, partial(attn_zoo.create_model, backbone, attention)))
            for option in fused_tail_options(settings.fused_tail):
                fused = fused_tail_candidate(backbone, attention, option)
                found += [fused] if fused else []
            theirs = timm_candidate(backbone, attention) if with_timm else None
            found += [theirs] if theirs else []
    return found


def model_cost(candidate: Candidate, image_size: int) -> dict[str, int]:
    """Parameters and one-image forward FLOPs/MACs, counted in float32 on the CPU."""
    model = candidate.build()
    flops = count_flops(model, (3, image_size, image_size))
    return {"params": count_params(model), "flops": flops, "macs": flops // 2}
