"""The optimiser of a run: a torch optimiser class with its arguments, plus how the model's parameters
split into groups: weight decay kept off normalisation and bias parameters (``exclude_norm_and_bias``,
as in the AdamW and ConvNeXt/DeiT recipes), and loaded weights trained at a fraction of the learning
rate (``pretrained_lr_scale``, fine-tuning).

The ``optim`` config group instantiates ``OptimizerFactory``: every key of the group is one of its
arguments, so the config reaches ``instantiate`` whole, with nothing filtered out by hand.
"""
from __future__ import annotations

import inspect
import math
from typing import Any

import torch
from hydra.utils import get_class
from torch import nn

NORM_LAYERS = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm)


def _always_exempt(model: nn.Module) -> set[int]:
    """The parameters of modules that set ``no_weight_decay = True`` (SRM, as its authors' recipe):
    never decayed, whatever ``exclude_norm_and_bias`` says."""
    return {id(parameter) for module in model.modules() if getattr(module, "no_weight_decay", False) is True
            for parameter in module.parameters()}


def _exempt_from_decay(module: nn.Module, name: str, parameter: nn.Parameter) -> bool:
    """Biases and normalisation parameters: 1-D ones, and also those of a norm layer of another shape
    (GC's LayerNorm over (d, 1, 1)), which a test of ``ndim <= 1`` alone would decay."""
    return parameter.ndim <= 1 or name == "bias" or isinstance(module, NORM_LAYERS)


def parameter_groups(model: nn.Module, exclude_norm_and_bias: bool,
                     pretrained_lr_scale: float = 1.0) -> list[dict[str, Any]]:
    """One group, or two with weight decay 0 for biases and normalisation parameters (the other
    group takes the optimiser's own ``weight_decay``). The parameters of a module that asks for no
    weight decay (``no_weight_decay = True``) join the weight-decay-0 group, which then exists in
    either case.

    With ``pretrained_lr_scale`` != 1 and a model that says which parameters were loaded
    (``pretrained_parameters``, set by ``backbone.weights``), each group splits in two and the loaded
    half gets ``lr_scale``: fine-tuning moves pretrained weights less than new ones (attention, head).
    """
    always = _always_exempt(model)
    decayed, exempt, seen = [], [], set()
    for module in model.modules():
        for name, parameter in module.named_parameters(recurse=False):
            if parameter.requires_grad and id(parameter) not in seen:  # a shared parameter once
                seen.add(id(parameter))
                excluded = id(parameter) in always or (
                    exclude_norm_and_bias and _exempt_from_decay(module, name, parameter))
                (exempt if excluded else decayed).append(parameter)
    # without exclusions and nothing always exempt: one group, as runs made before either existed
    groups = [{"params": decayed}, {"params": exempt, "weight_decay": 0.0}] if exclude_norm_and_bias or exempt \
        else [{"params": decayed}]
    pretrained = getattr(model, "pretrained_parameters", frozenset())
    if pretrained_lr_scale == 1 or not pretrained:
        return groups
    loaded = {id(p) for name, p in model.named_parameters() if name in pretrained}
    split = []
    for group in groups:
        new = [p for p in group["params"] if id(p) not in loaded]
        old = [p for p in group["params"] if id(p) in loaded]
        split += [{**group, "params": new}, {**group, "params": old, "lr_scale": pretrained_lr_scale}]
    return [group for group in split if group["params"]]


def _check_arguments(optimizer: type[torch.optim.Optimizer], options: dict[str, Any]) -> None:
    """Refuse, before training, options the class does not take: swapping ``optim.optimizer`` keeps the
    group's other keys (SGD's ``nesterov``, AdamW's ``betas``), which the class would reject only once
    the run has begun."""
    parameters = inspect.signature(optimizer.__init__).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return
    unknown = sorted(set(options) - set(parameters))
    if unknown:
        name = f"{optimizer.__module__}.{optimizer.__qualname__}"
        removals = " ".join(f"'~optim.{key}'" for key in unknown)
        raise ValueError(f"optim: {name} takes no argument {', '.join(unknown)} (the optim group's other keys "
                         f"are passed to it); remove with {removals}")


class OptimizerFactory:
    """``factory(model)``: ``optimizer(parameter_groups(model, ...), **options)`` with each group's
    learning rate times its ``lr_scale``. ``optimizer`` is a class or its dotted path
    (``torch.optim.SGD``); ``options`` are its arguments (``lr``, ``momentum``, ``weight_decay``...)."""

    def __init__(self, optimizer: str | type[torch.optim.Optimizer], *, exclude_norm_and_bias: bool = False,
                 pretrained_lr_scale: float = 1.0, **options: Any):
        self.optimizer = get_class(optimizer) if isinstance(optimizer, str) else optimizer
        if not (isinstance(self.optimizer, type) and issubclass(self.optimizer, torch.optim.Optimizer)):
            raise ValueError(f"optim.optimizer must name a torch.optim.Optimizer class, got {optimizer!r}")
        _check_arguments(self.optimizer, options)
        if not (isinstance(pretrained_lr_scale, (int, float)) and 0 < pretrained_lr_scale < math.inf):
            raise ValueError(f"optim.pretrained_lr_scale must be a number > 0, got {pretrained_lr_scale!r}")
        self.exclude_norm_and_bias = exclude_norm_and_bias
        self.pretrained_lr_scale = pretrained_lr_scale
        self.options = options

    def check(self, model: nn.Module) -> None:
        """Refuse a learning-rate scale for loaded weights when the model loaded none (before training)."""
        if self.pretrained_lr_scale != 1 and not getattr(model, "pretrained_parameters", None):
            raise ValueError(f"optim.pretrained_lr_scale={self.pretrained_lr_scale} scales the parameters that "
                             "backbone.weights loads, and no weights were loaded: set backbone.weights=<state dict>")

    def __call__(self, model: nn.Module) -> torch.optim.Optimizer:
        self.check(model)
        groups = parameter_groups(model, self.exclude_norm_and_bias, self.pretrained_lr_scale)
        optimizer = self.optimizer(groups, **self.options)
        for group in optimizer.param_groups:  # before a scheduler reads each group's base lr
            group["lr"] *= group.get("lr_scale", 1.0)
        return optimizer

    def __repr__(self) -> str:
        return (f"OptimizerFactory({self.optimizer.__module__}.{self.optimizer.__qualname__}, "
                f"exclude_norm_and_bias={self.exclude_norm_and_bias}, "
                f"pretrained_lr_scale={self.pretrained_lr_scale}, {self.options})")
