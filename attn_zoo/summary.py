"""Print a model's parameters, FLOPs and where its attention modules sit.

    python -m attn_zoo.summary backbone=resnet50 attention=se
    python -m attn_zoo.summary backbone=resnet50 attention=se backbone.placement=3x3 backbone.stages=[3,4]
    python -m attn_zoo.summary backbone=resnet20 attention=se attention.reduction=8 --image-size 32

Arguments are Hydra overrides of the run config (``conf/config.yaml``, composed with Hydra's
compose API), so every name and option means what it means to ``run.py``, the ``data`` group
included: the image size and class count are the ones that run trains on, read from the data
module as ``run.py`` reads them before any image loads (embedded CIFAR-10: 32x32, 10 classes;
``data=imagefolder``: ``data.image_size`` and its class folders). An image size the run would stop
on (an ImageNet stem on 32x32 images) is the run's one ``error:`` line here too. ``--image-size``
and ``--num-classes`` ask about another input instead (no check; both given: no data is read).
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from typing import Sequence

import pandas as pd
import torch
from hydra.errors import InstantiationException
from omegaconf import DictConfig
from torch import nn

from attn_zoo import cost
from attn_zoo.backbones.placement import attention_modules
from attn_zoo.backbones.torchvision_models import ConvReplacement
from attn_zoo.config import build_datamodule, build_model, compose, options
from attn_zoo.config_check import check_image_size, one_line, validate_data

@dataclass
class AttentionSite:
    name: str
    kind: str
    where: str
    input_shape: tuple[int, ...]
    params: int


def run_input(cfg: DictConfig, image_size: int | None = None, num_classes: int | None = None):
    """(image shape, class count) of the run of ``cfg``, as ``train.prepare`` reads them from its data
    module (constructors list folders, never load images); ``image_size`` / ``num_classes`` replace them."""
    if image_size and num_classes:
        return (3, image_size, image_size), num_classes
    validate_data(cfg)
    try:
        datamodule = build_datamodule(cfg.data)
    except InstantiationException as error:  # the data module's own message, as run.py shows it
        raise error.__cause__ or error from None
    shape = tuple(datamodule.image_shape)
    return (shape[0], image_size or shape[1], image_size or shape[2]), num_classes or datamodule.num_classes


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


def format_summary(title: str, model: nn.Module, image_shape: tuple[int, int, int], classes: str = "") -> str:
    """``classes``: where the class count comes from, for the title (e.g. ", 10 classes, data embedded")."""
    sites, flops = attention_sites(model, image_shape)
    params = cost.count_params(model)
    attention_params = sum(site.params for site in sites)
    lines = [
        f"{title}   (image {'x'.join(map(str, image_shape))}{classes})",
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
    parser.add_argument("--image-size", type=int, help="square input side (default: the run's, from its data group)")
    parser.add_argument("--num-classes", type=int, help="classes of the head (default: the run's, from its data group)")
    args = parser.parse_args(argv)
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    try:
        cfg = compose(args.overrides)
        image_shape, num_classes = run_input(cfg, args.image_size, args.num_classes)
        model = build_model(cfg, num_classes)
        if not args.image_size:  # the run's own check (after the model's): where the run stops, so does this
            check_image_size(cfg.backbone.name, options(cfg.backbone), image_shape)
    except (HydraException, OmegaConfBaseException, ValueError, TypeError, KeyError, OSError) as error:
        print(f"error: {one_line(error)}", file=sys.stderr)
        return 2
    title = f"{cfg.backbone.name} + {cfg.attention.name}   backbone {options(cfg.backbone)}   attention {options(cfg.attention)}"
    source = "--num-classes" if args.num_classes else f"data {cfg.data.name}"
    with torch.no_grad():
        print(format_summary(title, model, image_shape, f", {num_classes} classes from {source}"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
