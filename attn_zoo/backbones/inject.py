"""Put attention after chosen submodules of any ``nn.Module``: ``inject(model, "se", after="layer*.*.bn3")``.

Each matching submodule gets a child named ``attention`` and a forward hook that passes the
submodule's output through it. The model's own parameter names and ``state_dict`` keys stay as
they were (pretrained weights still load, with ``strict=False`` for the new modules), ``print(model)``
shows each module under the submodule it follows, and ``cost.count_attention_params`` counts it.
"""
from __future__ import annotations

import fnmatch
import re
from typing import Callable

import torch
from torch import Tensor, nn

from attn_zoo.attention._start import apply_init
from attn_zoo.backbones.placement import ATTENTION_NAME, is_attention_path
from attn_zoo.registry import ATTENTION


def _name_matcher(pattern: str) -> Callable[[str], bool]:
    if pattern.startswith("re:"):
        regex = re.compile(pattern[3:])
        return lambda name: regex.fullmatch(name) is not None
    return lambda name: fnmatch.fnmatchcase(name, pattern)


def _gate_factory(attention: str | Callable[[int], nn.Module], options: dict, init: str) -> Callable[[int], nn.Module]:
    if callable(attention):
        name = getattr(attention, "__name__", type(attention).__name__)
        return lambda channels: apply_init(attention(channels, **options), name, init)
    constructor = ATTENTION.get(attention).constructor
    if getattr(constructor, "replaces_conv", False):
        raise ValueError(f"attention '{attention}' replaces a conv; inject() only adds modules after others")
    return lambda channels: ATTENTION.build(attention, channels, init=init, **options)


def _probe_channels(model: nn.Module, modules: dict[str, nn.Module], input_shape) -> dict[str, int]:
    """Output channels of ``modules`` from one forward pass on a zero image of ``input_shape``; a
    module that runs more than once in it (torchvision's blocks call one ReLU twice) is refused: the
    attention after it would run at each call, on tensors of other widths."""
    seen: dict[str, list[int]] = {}

    def recorder(name):
        def record(_module, _inputs, output):
            if not isinstance(output, Tensor) or output.dim() != 4:
                raise ValueError(f"'{name}' does not output an (N, C, H, W) tensor; attention cannot follow it")
            seen.setdefault(name, []).append(output.shape[1])
        return record

    handles = [module.register_forward_hook(recorder(name)) for name, module in modules.items()]
    modes = {module: module.training for module in model.modules()}  # each one's: a frozen BN stays in eval
    model.eval()
    try:
        parameter = next(model.parameters(), torch.empty(0))
        with torch.no_grad():
            model(torch.zeros(1, *input_shape, dtype=parameter.dtype, device=parameter.device))
    finally:
        for module, training in modes.items():
            module.training = training
        for handle in handles:
            handle.remove()
    missing = sorted(set(modules) - set(seen))
    if missing:
        raise ValueError(f"{', '.join(missing)} never ran in a forward pass; attention cannot follow them")
    reused = sorted(f"'{name}' ({len(calls)} times)" for name, calls in seen.items() if len(calls) > 1)
    if reused:
        raise ValueError(f"{', '.join(reused)} ran more than once in a forward pass (a module reused); attention "
                         f"after it would run at every call: name a module that runs once (e.g. a block's BN)")
    return {name: calls[0] for name, calls in seen.items()}


def _channels(module: nn.Module) -> int | None:
    for attribute in ("out_channels", "num_features"):
        if isinstance(getattr(module, attribute, None), int):
            return getattr(module, attribute)
    return None


def _refuse_nesting(targets: list[str], injected: list[str], after: str) -> None:
    """A place inside another place stacks two modules on one path (the inner one's output is, or
    feeds, the outer one's): an error naming both, never a silent double gate. ``injected``: places
    an earlier ``inject`` call took."""
    places = {**{name: "already has attention" for name in injected}, **{name: "matches too" for name in targets}}
    for outer, why in places.items():
        for inner in places:
            if inner.startswith(outer + ".") and (outer in targets or inner in targets):
                raise ValueError(
                    f"after='{after}' would put attention after '{inner}' and after '{outer}' ({why}), which "
                    f"contains it: two modules on one path; narrow the pattern (e.g. re:...) so no place contains another"
                )


def _apply_attention(module: nn.Module, _inputs, output: Tensor) -> Tensor:
    return module.attention(output)


def inject(
    model: nn.Module,
    attention: str | Callable[..., nn.Module],
    after: str,
    *,
    input_shape: tuple[int, int, int] = (3, 64, 64),
    init: str = "default",
    **options,
) -> tuple[nn.Module, list[str]]:
    """Insert an attention module after each submodule whose qualified name matches ``after``.

    ``after`` is a shell-style pattern (``fnmatch``, case-sensitive) matched against the whole
    qualified name as ``named_modules()`` gives it, e.g. ``"layer*.*.bn3"`` or ``"features.*"``
    (``*`` also crosses dots); prefix it with ``re:`` for a regular expression that must match the
    whole name, e.g. ``"re:layer[12]\\.\\d+\\.bn2"``. Modules inside an existing ``attention``
    submodule are never targets. ``attention`` is a registered name (its ``options`` are checked by
    the registry) or a callable ``f(channels, **options)``. The channel count is the submodule's
    ``out_channels`` or ``num_features``, otherwise the output channels of one forward pass on a zero
    image of ``input_shape`` (C, H, W). ``init="identity"`` starts every module as the identity, so
    the model computes exactly what it did before (for pretrained models and detectors; see
    ``attn_zoo/attention/_start.py``). Changes ``model`` in place; returns it and the matched names.
    """
    matches = _name_matcher(after)
    targets = {
        name: module for name, module in model.named_modules()
        if name and not is_attention_path(name) and matches(name)
    }
    if not targets:
        raise ValueError(f"no submodule name matches '{after}'")
    taken = [name for name, module in targets.items() if ATTENTION_NAME in module._modules]
    if taken:
        raise ValueError(f"{', '.join(taken)} already have a submodule named '{ATTENTION_NAME}'")
    injected = [name for name, module in model.named_modules() if getattr(module, "_attn_zoo_injected", False)]
    _refuse_nesting(list(targets), injected, after)
    channels = {name: _channels(module) for name, module in targets.items()}
    unknown = {name: targets[name] for name, count in channels.items() if count is None}
    if unknown:
        channels.update(_probe_channels(model, unknown, input_shape))
    build = _gate_factory(attention, options, init)
    for name, module in targets.items():
        module.attention = build(channels[name])
        module.register_forward_hook(_apply_attention)
        module._attn_zoo_injected = True
    return model, list(targets)
