"""Excitation statistics of a trained model: the mean channel weight of each attention module, per
class and over all classes (the SE paper's Figures 6–7: Hu et al., "Squeeze-and-Excitation
Networks", CVPR 2018 / TPAMI 2020, §7.2).

    python analysis/excitation.py <run>/checkpoints/last.ckpt [--blocks stages.2.0 -1] [--classes 3 dog]
                                  [--out DIR] [--limit-batches N] [--batch-size B] [--device cpu]

The checkpoint is a Lightning checkpoint whose ``state_dict`` keys are ``model.<parameter>``, loaded
with ``weights_only=True``; the run's resolved config that every run stores in its checkpoints
(``attn_zoo_run``) says how to rebuild the model and which data to read, so the file alone suffices,
wherever it was copied. A checkpoint written before runs stored it takes its run's results.json
(``--results``). A checkpoint may come from anywhere, so its config is read as data, never as code: the model is ``attn_zoo.create_model`` of the registered backbone
and attention names in its config with their options, the data is the project's own datamodule for
its ``data.name`` (``DATAMODULES``) with the options that class takes. A ``_target_`` other than that
class, any other Hydra key (``_partial_``, ...), an option that is not a plain value or an unknown name
is refused with one ``error:`` line (exit code 2); nothing named in the config is imported or called.
The validation set is run through the model in eval mode and each attention module's channel
weights are averaged per class. Classes are chosen by name (the embedded data's ``airplane`` ...
``truck``) or label index.

How the channel weights are captured (forward hooks, nothing in the model is changed). A block is
a submodule named ``attention``; its label is its parent's name (``stages.2.0``). Inside it:

1. the gate: every submodule named ``gate`` or of a gate activation type (``nn.Sigmoid``,
   ``nn.Hardsigmoid``, ``nn.Tanh``, ``nn.Softmax``) is hooked, and of the outputs that are one
   weight per (image, channel) — shape (N, C, 1, 1) or (N, C) for the module's (N, C, H, W)
   input — the last one computed in the module's forward is taken. For SE that is the sigmoid
   ``e`` of ``y = x ⊙ e``; for a module with a channel and then a spatial gate (CBAM) it is the
   channel gate, since the spatial gate's output has another shape.
2. Where no such submodule exists (a gate written as ``torch.sigmoid`` in ``forward``), the module
   is treated as a per-channel scaling ``y = g ⊙ x`` and g is fitted by least squares over the
   spatial positions, g = Σ_hw x·y / Σ_hw x² (exact for a channel gate, unlike the mean of y / x,
   which zeros in x break). If the fit leaves more than 0.1 % of ‖y‖ unexplained the module is not
   a channel gate and the block is skipped with a message.

Outputs in ``--out`` (default: ``<run>/excitation``): ``excitation.csv`` with columns ``block``,
``class``, ``channel``, ``mean_weight`` for every hooked block, every class seen and ``all`` (the
mean over all images, not the mean of the class means), and ``excitation.png``/``.svg``: one panel
per block, the mean weight per channel for the chosen classes and, in black, for all classes.
"""
from __future__ import annotations

import argparse
import inspect
import io
import sys
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from torch import nn

from analysis.summarize import fail, out_problem, read_results
from attn_zoo.attention._start import IdentityStart
from attn_zoo.backbones.placement import attention_modules
from attn_zoo.results import RUN_RECORD, write_atomic

GATE_NAME = "gate"
GATE_TYPES = (nn.Sigmoid, nn.Hardsigmoid, nn.Tanh, nn.Softmax)
FIT_TOLERANCE = 1e-3
ALL = "all"


# ---------------------------------------------------------------- model and data from a run


def run_record(saved: dict, checkpoint: Path, results: Path | None) -> dict:
    """``{"config": ..., "attention_variant": ...}`` of the run: the checkpoint's own record, or (for
    a checkpoint written before runs stored one) the results.json named by ``--results``."""
    if results is not None:
        record, problem = read_results(results)
        if problem:
            raise ValueError(f"{results}: {problem}")
        return record
    record = saved.get(RUN_RECORD)
    if not isinstance(record, dict):
        raise ValueError(f"{checkpoint} holds no run config (written before runs stored it in their checkpoints); "
                         "name its run's results.json with --results")
    return record


# data names (conf/data/*.yaml) → the project's own datamodule classes (module, class). A run's config
# only chooses among these by name; its ``_target_`` is never imported or called.
DATAMODULES = {
    "embedded": ("attn_zoo.data", "EmbeddedCIFAR10"),
    "cifar10_jpg": ("attn_zoo.data", "EmbeddedCIFAR10"),
    "cifar10": ("attn_zoo.data", "CIFAR10"),
    "cifar100": ("attn_zoo.data", "CIFAR100"),
    "imagefolder": ("attn_zoo.data", "ImageFolder"),
    "synthetic": ("attn_zoo.data", "Synthetic"),
}
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
PLAIN_TYPES = (str, int, float, bool, type(None))


class UnsafeConfig(ValueError):
    """A config section that names something other than the project's registries and options."""


def _plain(value) -> bool:
    """Scalars and lists of scalars: the only option values a run folder may hand to a constructor."""
    return isinstance(value, PLAIN_TYPES) or (isinstance(value, list) and all(isinstance(v, PLAIN_TYPES) for v in value))


def _brief(value) -> str:
    """A value as an error message shows it: its repr, cut short (the folder may hold anything)."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _section(config: dict, name: str) -> dict:
    section = config.get(name) if isinstance(config, dict) else None
    if not isinstance(section, dict) or not isinstance(section.get("name"), str):
        raise UnsafeConfig(f"config.{name} has no name")
    return section


def safe_options(config: dict, name: str, allowed_target: str | None = None) -> dict:
    """The options of ``config[name]`` without its name, refused (``UnsafeConfig``) if any is a Hydra
    instruction (``_target_`` other than ``allowed_target``, ``_partial_``, ...) or not a plain value,
    because analysis reads a run folder as data and never builds what it names."""
    options = {}
    for key, value in _section(config, name).items():
        if key == "name" or (key == "_target_" and value == allowed_target):
            continue
        if not isinstance(key, str) or key.startswith("_"):
            raise UnsafeConfig(f"config.{name}.{key} = {_brief(value)} is refused: analysis never "
                               "instantiates what a run's config names; it builds only registered names")
        if not _plain(value):
            raise UnsafeConfig(f"config.{name}.{key} = {_brief(value)} is refused: not a plain option value")
        options[key] = value
    return options


def load_model(saved: dict, num_classes: int, config: dict) -> nn.Module:
    """The attn_zoo model of ``config`` with the ``model.*`` weights of the loaded checkpoint ``saved``, built by registry
    names and checked options only (``safe_options``). A run trained with ``backbone.fused_tail=true``
    is rebuilt with the plain tail (the same function and parameters), because the fused op calls no
    attention module whose gate a hook could record. ``backbone.weights`` (the pretrained file a fine-tuned
    run started from) is not read: the checkpoint's weights replace it, and it need not exist here."""
    import attn_zoo

    backbone_options, attention_options = safe_options(config, "backbone"), safe_options(config, "attention")
    if backbone_options.get("fused_tail"):
        backbone_options["fused_tail"] = False
    backbone_options.pop("weights", None)
    model = attn_zoo.create_model(
        config["backbone"]["name"], attention=config["attention"]["name"], num_classes=num_classes,
        backbone_options=backbone_options, **attention_options,
    )
    state = saved.get("state_dict", saved)
    weights = {key[len("model."):]: value for key, value in state.items() if key.startswith("model.")}
    if not weights:
        raise ValueError("no 'model.*' keys in its state_dict")
    model.load_state_dict(weights)
    return model.eval()


LOCATION_OPTIONS = ("root", "archive", "download")


def datamodule_class(name: str) -> type:
    """The project's datamodule for a data name, from ``DATAMODULES`` (UnsafeConfig for other names)."""
    import importlib

    if name not in DATAMODULES:
        raise UnsafeConfig(f"unknown data '{name}' in the config; analysis rebuilds only: {', '.join(DATAMODULES)}")
    module, attribute = DATAMODULES[name]
    return getattr(importlib.import_module(module), attribute)


def _keyword_options(cls: type) -> dict[str, object]:
    """Keyword options of a datamodule's constructor, through ``**loader_options`` to its base, each
    with its default (the most derived one; ``inspect.Parameter.empty`` where it has none)."""
    options: dict[str, object] = {}
    for klass in cls.__mro__:
        parameters = inspect.signature(klass.__init__).parameters.values() if "__init__" in vars(klass) else []
        for parameter in parameters:
            if parameter.kind is parameter.KEYWORD_ONLY:
                options.setdefault(parameter.name, parameter.default)
        if "__init__" in vars(klass) and not any(p.kind is p.VAR_KEYWORD for p in parameters):
            break
    return options


def _accepted(cls: type) -> set[str]:
    return set(_keyword_options(cls))


def _located(cls: type, options: dict, location: dict[str, str]) -> dict:
    """``options`` with where the data lie from the person running the analysis, never from the run
    folder: a path a foreign config names could hold anything, and torchvision reads CIFAR's python
    batches with pickle (with its checksums off, as the project's CIFAR module turns them). A run
    that read its data elsewhere than the class's default is refused with the path to pass."""
    kept = {key: value for key, value in options.items() if key not in LOCATION_OPTIONS}
    defaults = _keyword_options(cls)
    for key in ("root", "archive"):
        if location.get(key) is not None:
            kept[key] = str(location[key])
        elif key in options and options[key] != defaults.get(key):
            raise UnsafeConfig(
                f"the run read its data at data.{key}={options[key]}; analysis does not take where data lie from "
                f"a run folder (files there are read as pickles): check that path, then pass --data-{key} <path>")
    if "download" in defaults:
        kept["download"] = False
    return kept


def load_data(config: dict, batch_size: int | None, location: dict[str, str] | None = None):
    """The run's datamodule, set up for validation: the project's class for ``config.data.name``
    with the options its constructor accepts; anything else in the section is refused, and where the
    data lie comes from ``location`` (``--data-root``, ``--data-archive``; ``_located``). A run that
    loaded its data on the device (``data.loader=gpu|dali``) is read through the host path: the same
    validation images (evaluation draws nothing at random), as tensors."""
    name = _section(config, "data")["name"]
    cls = datamodule_class(name)
    options = safe_options(config, "data", allowed_target=".".join(DATAMODULES[name]))
    unknown = sorted(set(options) - _accepted(cls))
    if unknown:
        raise UnsafeConfig(f"config.data has options {', '.join(unknown)} that data '{name}' "
                           f"does not take; valid: {', '.join(sorted(_accepted(cls)))}")
    options = _located(cls, options, location or {})
    if batch_size:  # validation batches come in eval_batch_size where the run set one
        options["batch_size"] = batch_size
        if "eval_batch_size" in _accepted(cls):
            options["eval_batch_size"] = batch_size
    if "loader" in options:  # the host path: the same validation images, as tensors (a device loader's
        options["loader"] = "cpu"  # batches are JPEG bytes or need a Trainer's device to decode them)
    datamodule = cls(**options)
    datamodule.setup("validate")
    return datamodule


def validation_batches(datamodule, limit: int | None, seed: int = 0):
    """The validation loader; with ``limit``, a seeded shuffle so a few batches still hold every class."""
    loader = datamodule.val_dataloader()
    if limit is None:
        yield from loader
        return
    dataset = loader.dataset
    if hasattr(dataset, "__len__") and hasattr(dataset, "__getitem__"):
        loader = torch.utils.data.DataLoader(
            dataset, batch_size=loader.batch_size, shuffle=True, collate_fn=loader.collate_fn,
            generator=torch.Generator().manual_seed(seed),
        )
    for index, batch in enumerate(loader):
        if index >= limit:
            break
        yield batch


# ---------------------------------------------------------------- capturing the channel weights


def attention_blocks(model: nn.Module) -> dict[str, nn.Module]:
    """``{block label: attention module}`` in the model's order; the label is the parent's name."""
    return {
        name.rsplit(".", 1)[0] if "." in name else name: module
        for name, module in attention_modules(model).items()
    }


def gate_candidates(attention: nn.Module) -> list[nn.Module]:
    return [
        module for name, module in attention.named_modules()
        if name and (name.split(".")[-1] == GATE_NAME or isinstance(module, GATE_TYPES))
    ]


def fit_channel_scale(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor | None:
    """g of shape (N, C) minimising ‖y − g·x‖ over h, w; None when y is not a channel scaling of x."""
    x, y = x.flatten(2).double(), y.flatten(2).double()
    gate = (x * y).sum(-1) / (x * x).sum(-1).clamp_min(1e-30)
    residual = torch.linalg.vector_norm(y - gate.unsqueeze(-1) * x)
    if residual > FIT_TOLERANCE * torch.linalg.vector_norm(y).clamp_min(1e-30):
        return None
    return gate.float()


@dataclass
class BlockRecorder:
    """Hooks on one attention module; ``weights`` collects an (N, C) tensor per forward."""

    label: str
    module: nn.Module
    weights: list[torch.Tensor] = field(default_factory=list)
    failed: bool = False
    _state: dict = field(default_factory=dict)
    _handles: list = field(default_factory=list)

    def attach(self) -> None:
        # a module started as the identity scales by 1 + α·(gate − 1), not by its inner gate: fitted
        candidates = [] if isinstance(self.module, IdentityStart) else gate_candidates(self.module)
        self._handles.append(self.module.register_forward_pre_hook(self._before))
        self._handles.append(self.module.register_forward_hook(self._after))
        for candidate in candidates:
            self._handles.append(candidate.register_forward_hook(self._gate))
        self._state["fit"] = not candidates

    def detach(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _before(self, module, args) -> None:
        x = args[0]
        self._state.update(shape=tuple(x.shape[:2]), gate=None)
        # the input is kept only for the fallback fit; cloned in case the module rescales in place
        self._state["input"] = x.detach().clone() if self._state["fit"] else None

    def _gate(self, module, args, output) -> None:
        if not isinstance(output, torch.Tensor) or "shape" not in self._state:
            return
        n, c = self._state["shape"]
        if output.shape in ((n, c, 1, 1), (n, c)):
            self._state["gate"] = output.detach().float().reshape(n, c).clone()

    def _after(self, module, args, output) -> None:
        gate = self._state.pop("gate", None)
        if gate is None:
            x = self._state.get("input")
            gate = fit_channel_scale(x, output) if x is not None and x.shape == output.shape else None
        if gate is None:
            self.failed = True
            return
        self.weights.append(gate.cpu())


def record_excitations(model: nn.Module, batches, blocks: list[str], device: str = "cpu"):
    """Per block, the sum of channel weights per class and the image count per class."""
    available = attention_blocks(model)
    recorders = [BlockRecorder(label, available[label]) for label in blocks]
    for recorder in recorders:
        recorder.attach()
    sums: dict[str, torch.Tensor] = {}
    counts: torch.Tensor | None = None
    model.to(device)
    try:
        with torch.inference_mode():
            for images, labels in batches:
                model(images.to(device))
                labels = labels.cpu().long()
                for recorder in recorders:
                    if recorder.failed or not recorder.weights:
                        continue
                    weights = recorder.weights.pop()
                    recorder.weights.clear()
                    total = sums.setdefault(recorder.label, torch.zeros(0, weights.shape[1], dtype=torch.float64))
                    sums[recorder.label] = _add_by_class(total, weights.double(), labels)
                batch_counts = torch.bincount(labels)
                counts = batch_counts if counts is None else _pad_add(counts, batch_counts)
    finally:
        for recorder in recorders:
            recorder.detach()
    skipped = [recorder.label for recorder in recorders if recorder.failed]
    for label in skipped:  # a gate that stopped fitting part-way: its sums cover only some of the images
        sums.pop(label, None)
    return sums, counts, skipped


def _pad_add(total: torch.Tensor, part: torch.Tensor) -> torch.Tensor:
    size = max(len(total), len(part))
    padded = torch.zeros(size, *total.shape[1:], dtype=total.dtype)
    padded[: len(total)] += total
    padded[: len(part)] += part.to(total.dtype)
    return padded


def _add_by_class(total: torch.Tensor, weights: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    by_class = torch.zeros(int(labels.max()) + 1, weights.shape[1], dtype=torch.float64)
    by_class.index_add_(0, labels, weights)
    return _pad_add(total, by_class)


def mean_table(sums: dict[str, torch.Tensor], counts: torch.Tensor, class_names: list[str]) -> pd.DataFrame:
    """Columns block, class, channel, mean_weight: every class seen, then ``all``."""
    rows = []
    for block, total in sums.items():
        seen = [index for index in range(len(total)) if index < len(counts) and counts[index] > 0]
        means = {class_names[index]: total[index] / counts[index] for index in seen}
        means[ALL] = total[seen].sum(0) / counts[seen].sum()
        for name, mean in means.items():
            rows += [(block, name, channel, float(value)) for channel, value in enumerate(mean)]
    return pd.DataFrame(rows, columns=["block", "class", "channel", "mean_weight"])


# ---------------------------------------------------------------- picture


def plot_excitations(table: pd.DataFrame, classes: list[str]) -> plt.Figure:
    blocks = list(dict.fromkeys(table["block"]))
    columns = min(3, len(blocks))
    rows = -(-len(blocks) // columns)
    figure, grid = plt.subplots(rows, columns, figsize=(5 * columns, 3.4 * rows), squeeze=False)
    for axes, block in zip(grid.flat, blocks):
        subset = table[table["block"] == block]
        for name in classes:
            line = subset[subset["class"] == name]
            if not line.empty:
                axes.plot(line["channel"], line["mean_weight"], linewidth=0.9, label=str(name))
        overall = subset[subset["class"] == ALL]
        axes.plot(overall["channel"], overall["mean_weight"], color="black", linewidth=1.6, label="all")
        axes.set_title(block)
        axes.set_xlabel("channel index")
        axes.set_ylabel("mean activation of the gate")
        axes.grid(alpha=0.3)
    for axes in list(grid.flat)[len(blocks):]:
        axes.set_visible(False)
    grid.flat[0].legend(fontsize=7, title="class")
    figure.suptitle("Excitation per channel: per-class means and the mean over all classes")
    figure.tight_layout()
    return figure


def _save(figure: plt.Figure, out: Path, stem: str) -> list[Path]:
    paths = []
    for fmt in ("png", "svg"):
        buffer = io.BytesIO()
        figure.savefig(buffer, format=fmt, dpi=150, bbox_inches="tight")
        write_atomic(out / f"{stem}.{fmt}", buffer.getvalue())
        paths.append(out / f"{stem}.{fmt}")
    plt.close(figure)
    return paths


# ---------------------------------------------------------------- command line


def load_run(checkpoint: Path, batch_size: int | None, results: Path | None = None,
             location: dict[str, str] | None = None):
    """(the run's record, the datamodule, the model with the checkpoint's weights), read as data: the
    config is checked option by option, then only registry names are built."""
    saved = torch.load(checkpoint, map_location="cpu", weights_only=True)
    source = results or checkpoint
    record = run_record(saved, checkpoint, results)
    config = record.get("config")
    if not isinstance(config, dict):
        raise ValueError(f"{source} holds no resolved config")
    try:
        if _section(config, "attention")["name"] == "none":
            raise ValueError("trained without attention: no excitations to record")
        datamodule = load_data(config, batch_size, location)
        model = load_model(saved, datamodule.num_classes, config)
    except (UnsafeConfig, ValueError) as error:
        raise type(error)(f"{source}: {error}") from None
    return record, datamodule, model


def dataset_classes(datamodule) -> list[str]:
    """Class names in label order: the folder names of an image archive or tree (the embedded data:
    airplane ... truck), CIFAR-10's names for torchvision's CIFAR-10, else the label indices."""
    from attn_zoo.data import CIFAR10, EmbeddedCIFAR10
    from attn_zoo.data.embedded import load_image_archive

    if isinstance(datamodule, EmbeddedCIFAR10):
        names = load_image_archive(datamodule.archive.resolve())["test"][2]
    elif isinstance(datamodule, CIFAR10):
        names = CIFAR10_CLASSES
    else:
        names = getattr(datamodule, "_classes", lambda: None)() or range(datamodule.num_classes)
    return [str(name) for name in names]


def choose_blocks(requested: list[str] | None, available: list[str]) -> list[str]:
    """Block labels from names or (negative) indices into the model's list of blocks."""
    if not requested:
        return available
    chosen = []
    for token in requested:
        if token in available:
            chosen.append(token)
        elif token.lstrip("-").isdigit() and -len(available) <= int(token) < len(available):
            chosen.append(available[int(token)])
        else:
            raise ValueError(f"unknown block '{token}'; blocks: {', '.join(available)} (or their indices)")
    return list(dict.fromkeys(chosen))


def choose_classes(requested: list[str] | None, class_names: list[str]) -> list[str]:
    """Class names from names or indices; by default four classes spread over the label range."""
    if not requested:
        picks = np.unique(np.linspace(0, len(class_names) - 1, min(4, len(class_names))).round().astype(int))
        return [class_names[index] for index in picks]
    chosen = []
    for token in requested:
        if token in class_names:
            chosen.append(token)
        elif token.isdigit() and int(token) < len(class_names):
            chosen.append(class_names[int(token)])
        else:
            raise ValueError(f"unknown class '{token}'; classes: {', '.join(class_names)}")
    return chosen


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", type=Path, help="Lightning checkpoint (<run>/checkpoints/*.ckpt)")
    parser.add_argument("--blocks", nargs="+", help="block names (e.g. stages.2.0) or indices; default: all")
    parser.add_argument("--classes", nargs="+", help="classes to draw (names or indices); default: four")
    parser.add_argument("--out", type=Path, help="output folder (default: <run>/excitation, beside checkpoints/)")
    parser.add_argument("--results", type=Path, help="the run's results.json, for a checkpoint that holds no config")
    parser.add_argument("--limit-batches", type=int, help="read only this many validation batches")
    parser.add_argument("--batch-size", type=int, help="validation batch size (default: the run's)")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cuda")
    parser.add_argument("--data-root", help="where the run's data lie on this machine (never read from the run)")
    parser.add_argument("--data-archive", help="the run's data archive on this machine (never read from the run)")
    args = parser.parse_args(argv)
    if not args.checkpoint.is_file():
        parser.error(f"no such checkpoint: {args.checkpoint}")

    try:
        location = {"root": args.data_root, "archive": args.data_archive}
        record, datamodule, model = load_run(args.checkpoint, args.batch_size, args.results, location)
    except (UnsafeConfig, OSError, ValueError, TypeError, KeyError) as error:  # one line, no traceback
        return fail(str(error).strip("'\""))
    folder = args.checkpoint.parent
    out = args.out or (folder.parent if folder.name == "checkpoints" else folder) / "excitation"
    if problem := out_problem(out):
        return fail(problem)
    class_names = dataset_classes(datamodule)
    try:
        blocks = choose_blocks(args.blocks, list(attention_blocks(model)))
        classes = choose_classes(args.classes, class_names)
    except ValueError as error:
        parser.error(str(error))

    sums, counts, skipped = record_excitations(
        model, validation_batches(datamodule, args.limit_batches), blocks, args.device
    )
    for label in skipped:
        print(f"block {label}: its attention is not a per-channel gate; skipped", file=sys.stderr)
    if not sums:
        print("no channel weights recorded", file=sys.stderr)
        return 1
    table = mean_table(sums, counts, class_names)
    write_atomic(out / "excitation.csv", table.to_csv(index=False))
    written = [out / "excitation.csv", *_save(plot_excitations(table, classes), out, "excitation")]
    print(f"{int(counts.sum())} images, {len(sums)} blocks ({record.get('attention_variant')} in "
          f"{record['config']['backbone']['name']}):")
    for path in written:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
