"""Load a torchvision-format state dict into a backbone that may hold attention: ``backbone.weights=<path>``.

Our ImageNet ResNets, ResNeXt and MobileNetV2 are written here, with their own module names
(``stem``, ``stages``, ``head``); their non-attention ``state_dict`` entries come in the same order
and shapes as torchvision's model of the same architecture, so the translation of names is read off
a shape-free (meta-device) torchvision model, entry by entry, never written by hand. The
``torchvision`` backbone has torchvision's names already.

Every entry of the file must load, and every non-attention entry of the model must be in the file:
anything else is one ValueError naming the keys (the config layer prints it as ``error:``).
Attention entries are new and are logged as such; so is the classifier head when ``num_classes``
differs from the file's (it keeps its fresh initialisation). A module that replaces a conv (sk,
fusion) loads only with ``init=identity``: the replaced conv + BN then load into its branch built as
that unit (``ConvIdentityStart.replaced_unit``, at the replaced conv's place in the state dict), and
the model starts as the pretrained network; with ``init=default`` those weights would have nowhere to
go and the load is refused. Files are read with ``torch.load(weights_only=True)``: tensors only, no code.

The loaded parameters' names are kept on the model as ``pretrained_parameters``, so the optimiser can
give them their own learning rate (``optim.pretrained_lr_scale``).
"""
from __future__ import annotations

import logging
import pickle
from pathlib import Path

import torch
from torch import Tensor, nn

from attn_zoo.backbones.placement import is_attention_path

log = logging.getLogger(__name__)
SHOWN = 6  # keys named in one error before "(+N more)"


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """The tensors of a state dict file (also inside a ``{"state_dict": ...}`` or ``{"model": ...}``)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"backbone.weights: no file at {path}")
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as error:
        raise ValueError(f"backbone.weights {path} is not a state dict torch.load(weights_only=True) reads: "
                         f"{str(error).splitlines()[0]}") from None
    for key in ("state_dict", "model"):
        if isinstance(loaded, dict) and isinstance(loaded.get(key), dict):
            loaded = loaded[key]
    if not isinstance(loaded, dict) or not all(isinstance(v, Tensor) for v in loaded.values()):
        raise ValueError(f"backbone.weights {path} holds no state dict (a dict of name -> tensor)")
    return loaded


def replaced_units(model: nn.Module) -> tuple[str, ...]:
    """State-dict prefixes of the branches that stand for a replaced conv + BN (identity-start sk, fusion)."""
    return tuple(f"{name}.{module.replaced_unit}." for name, module in model.named_modules()
                 if isinstance(getattr(module, "replaced_unit", None), str))


def loadable_keys(model: nn.Module) -> list[str]:
    """``model``'s state-dict keys a plain network's fill, in order: every non-attention entry, and the
    entries of replaced units, which sit where the replaced conv + BN sat."""
    units = replaced_units(model)
    return [key for key in model.state_dict() if not is_attention_path(key) or key.startswith(units)]


def line_up(model: nn.Module, theirs: list[str], what: str) -> dict[str, str]:
    """Their name → ours, entry by entry in state-dict order (``theirs``: the keys of the same network
    without attention); RuntimeError where the two do not pair up leaf by leaf."""
    ours = loadable_keys(model)
    leaves = [(a.rsplit(".", 1)[-1], b.rsplit(".", 1)[-1]) for a, b in zip(theirs, ours)]
    if len(theirs) != len(ours) or any(a != b for a, b in leaves):  # a bug here, not in the user's file
        raise RuntimeError(f"our {what} no longer lines up with {what} without attention "
                           f"({len(ours)} vs {len(theirs)} entries)")
    return dict(zip(theirs, ours))


def torchvision_names(model: nn.Module, arch: str | None) -> dict[str, str]:
    """torchvision's name → ours, for every entry of ``model``'s state dict a torchvision file fills.

    ``arch=None``: the model is torchvision's own class (names already torchvision's) and replaces no conv.
    """
    if arch is None:
        return {key: key for key in loadable_keys(model)}
    import torchvision

    with torch.device("meta"):
        theirs = list(torchvision.models.get_model(arch, weights=None).state_dict())
    return line_up(model, theirs, arch)


def _listed(keys, what: str) -> str:
    keys = sorted(keys)
    more = f" (+{len(keys) - SHOWN} more)" if len(keys) > SHOWN else ""
    return f"{what} {', '.join(keys[:SHOWN])}{more}"


def _head_keys(model: nn.Module) -> set[str]:
    """Our state-dict keys of the classifier: the last ``nn.Linear``."""
    name = [name for name, module in model.named_modules() if isinstance(module, nn.Linear)][-1]
    return {f"{name}.{key}" for key in model.get_submodule(name).state_dict()}


def _new_head(model, names: dict[str, str], state: dict[str, Tensor], ours: dict[str, Tensor]) -> set[str]:
    """torchvision names of the head's entries when the file's head has another number of classes."""
    head = {theirs for theirs, mine in names.items() if mine in _head_keys(model)}
    weight = next(key for key in head if key.endswith("weight"))
    if weight in state and state[weight].shape[0] != ours[names[weight]].shape[0]:
        log.info("backbone.weights: new head for %d classes (the file's has %d)",
                 ours[names[weight]].shape[0], state[weight].shape[0])
        return head
    return set()


def check_fits(names: dict[str, str], state: dict[str, Tensor], ours: dict[str, Tensor], skip: set[str], where: str):
    """ValueError naming every key that is missing, unexpected or of another shape."""
    problems = []
    # BatchNorm's step counter, absent from older torchvision files (torchvision loads those too): stays 0
    missing = {key for key in set(names) - set(state) - skip if not key.endswith(".num_batches_tracked")}
    unexpected = set(state) - set(names)
    shapes = {key for key in set(names) & set(state) - skip if state[key].shape != ours[names[key]].shape}
    if missing:
        problems.append(_listed(missing, "missing"))
    if unexpected:
        problems.append(_listed(unexpected, "unexpected"))
    if shapes:
        key = sorted(shapes)[0]
        problems.append(_listed(shapes, "other shapes") + f" (e.g. {key}: file {tuple(state[key].shape)}, "
                        f"model {tuple(ours[names[key]].shape)})")
    if problems:
        raise ValueError(f"backbone.weights {where}: " + "; ".join(problems))


def _refuse_lost_convs(model: nn.Module) -> None:
    """A conv replacement without a branch that takes the replaced conv's weights (init=default) would drop them."""
    held = {name for name, module in model.named_modules() if hasattr(module, "replaced_unit")}
    lost = [name for name, module in model.named_modules()
            if getattr(module, "replaces_conv", False) and name.rsplit(".", 1)[0] not in held]
    if lost:
        raise ValueError(f"backbone.weights cannot load into {lost[0]} (attention that replaces convs: sk, fusion) "
                         "with attention.init=default: the replaced convs' weights would have nowhere to go; "
                         "set attention.init=identity to load them into its 3x3 branch")


def load_torchvision_weights(model: nn.Module, path: str | Path, arch: str | None = None) -> nn.Module:
    """Load the torchvision-format state dict at ``path`` into ``model`` (of torchvision's ``arch``: ours
    or torchvision's own class; ``arch=None``: torchvision's own, no conv replaced); attention and a
    re-sized head stay new."""
    _refuse_lost_convs(model)
    state = read_state_dict(path)
    names = torchvision_names(model, arch)
    ours = model.state_dict()
    skip = _new_head(model, names, state, ours)
    check_fits(names, state, ours, skip, f"{path} do not fit {arch or 'the torchvision model'}")
    model.load_state_dict({names[key]: value for key, value in state.items() if key not in skip}, strict=False)
    loaded = {names[key] for key in state if key not in skip}
    model.pretrained_parameters = frozenset(name for name, _ in model.named_parameters() if name in loaded)
    new = sorted(key for key in ours if is_attention_path(key) and key not in loaded)
    log.info("backbone.weights: loaded %d tensors from %s; new: %d attention tensors%s", len(loaded), path,
             len(new), f" ({new[0]}, ...)" if new else "")
    return model
