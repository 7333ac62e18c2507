"""Print a model's parameters, FLOPs and where its attention modules sit.

    python -m attn_zoo.summary backbone=resnet50 attention=se
    python -m attn_zoo.summary backbone=resnet50 attention=se backbone.placement=3x3 backbone.stages=[3,4]
    python -m attn_zoo.summary backbone=resnet20 attention=se attention.reduction=8 --image-size 32

Arguments are Hydra overrides of the run config (``conf/config.yaml``, composed with Hydra's
compose API), so every name and option means what it means to ``run.py``. The image size defaults
to 224 for backbones with the ImageNet stem and 32 otherwise; the class count to the backbone's own
default (1000 for ImageNet backbones, 10 for CIFAR ones).
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from typing import Sequence

import pandas as pd
import torch
from omegaconf import DictConfig
from torch import nn

from attn_zoo import cost
from attn_zoo.backbones.placement import attention_modules
from attn_zoo.backbones.torchvision_models import ConvReplacement
from attn_zoo.config import build_model, compose, options

@dataclass
class AttentionSite:
    name: str
    kind: str
    where: str
    input_shape: tuple[int, ...]
    params: int


def default_image_size(cfg: DictConfig) -> int:
    imagenet_stem = cfg.backbone.get("stem") == "imagenet" or cfg.backbone.name == "torchvision"
    return 224 if imagenet_stem else 32


def _where(model: nn.Module, name: str) -> str:
    """Where the module at ``name`` sits, in words, from the module that holds it."""
    parent_name = name.rsplit(".", 1)[0] if "." in name else ""
    parent = model.get_submodule(parent_name)
    placement = getattr(parent, "placement", None)
    if placement == "conv" or isinstance(parent, ConvReplacement):
        return "replaces a conv unit"
    if placement is not None:
        return f"placement {placement}"
    return f"after {parent_name} (injected)"


def attention_sites(model: nn.Module, image_shape: tuple[int, int, int]) -> tuple[list[AttentionSite], int]:
    """The modules named ``attention`` with their input shapes, and the model's forward FLOPs."""
    modules = attention_modules(model)
    shapes: dict[str, tuple[int, ...]] = {}

    def recorder(name: str):
        def record(_module, inputs, _output) -> None:
            shapes.setdefault(name, tuple(inputs[0].shape[1:]))
        return record

    handles = [module.register_forward_hook(recorder(name)) for name, module in modules.items()]
    try:
        flops = cost.count_flops(model, image_shape)
    finally:
        for handle in handles:
            handle.remove()
    sites = [
        AttentionSite(name, type(module).__name__, _where(model, name), shapes.get(name, ()), cost.count_params(module))
        for name, module in modules.items()
    ]
    return sites, flops


def format_summary(title: str, model: nn.Module, image_shape: tuple[int, int, int]) -> str:
    sites, flops = attention_sites(model, image_shape)
    params = cost.count_params(model)
    attention_params = sum(site.params for site in sites)
    lines = [
        f"{title}   (image {'x'.join(map(str, image_shape))})",
        f"params             {params:,}   (attention {attention_params:,} = {100 * attention_params / params:.2f} %)",
        f"forward MACs       {flops / 2 / 1e9:.3f} G   (multiply-accumulates, one image)",
        f"forward FLOPs      {flops / 1e9:.3f} G   (= 2 x MACs; torch.utils.flop_counter: convolutions and "
        "matrix products only, not pooling, gates, rescales or BatchNorm)",
        f"attention modules  {len(sites)}",
    ]
    if sites:
        lines += ["", sites_table(sites)]
    return "\n".join(lines)


def sites_table(sites: list[AttentionSite]) -> str:
    """One markdown row per attention module: its name, class, place, input shape and parameters."""
    rows = [
        (site.name, site.kind, site.where, "x".join(map(str, site.input_shape)) or "not run", f"{site.params:,}")
        for site in sites
    ]
    table = pd.DataFrame(rows, columns=["module", "kind", "where", "input", "params"])
    return table.to_markdown(index=False, disable_numparse=True, colalign=("left",) * 4 + ("right",))


def main(argv: Sequence[str] | None = None, prog: str = "python -m attn_zoo.summary") -> int:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. backbone=resnet50 attention=se")
    parser.add_argument("--image-size", type=int, help="square input side (default 224 with the ImageNet stem, else 32)")
    parser.add_argument("--num-classes", type=int, help="classes of the head (default: the backbone's)")
    args = parser.parse_args(argv)
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    try:
        cfg = compose(args.overrides)
        model = build_model(cfg, args.num_classes)
    except (HydraException, OmegaConfBaseException, ValueError, TypeError, KeyError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    size = args.image_size or default_image_size(cfg)
    title = f"{cfg.backbone.name} + {cfg.attention.name}   backbone {options(cfg.backbone)}   attention {options(cfg.attention)}"
    with torch.no_grad():
        print(format_summary(title, model, (3, size, size)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
