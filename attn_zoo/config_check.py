"""Start-up checks of a run's config: bad input fails in one line, before data loads or training starts.

``validate(cfg)`` looks only at the config (names, numbers, paths, the device), so it costs nothing;
placements and stages are checked by the backbone itself when the model is built, still before data;
``check_image_size`` compares the data's images with the backbone's total stride once the data
module says how large they are. Both raise ``ConfigError``; ``run.py`` prints it as one line
``error: <message>`` and exits with code 2 (``HYDRA_FULL_ERROR=1`` shows the traceback instead).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Iterator

from omegaconf import DictConfig, OmegaConf


class ConfigError(ValueError):
    """Bad input the user can fix: a config value, a data path, a data file. ``every_rank``: found alike
    by every DDP rank at the same point of ``fit`` (the split sizes), so the others leave it to rank 0."""

    def __init__(self, message: str = "", every_rank: bool = False):
        super().__init__(message)
        self.every_rank = every_rank


COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def validate(cfg: DictConfig) -> None:
    """Raise ``ConfigError`` for the first thing in ``cfg`` that cannot work."""
    _no_missing_values(cfg)
    for check in (_names, _numbers, _work, _last_epoch_validated, _optimizer, _schedule, _device, _data_paths,
                  _extra_callbacks):
        check(cfg)


def validate_data(cfg: DictConfig) -> None:
    """The checks a run makes of its data group (``summary`` reads that group too, and trains nothing)."""
    _refuse_missing(list(OmegaConf.missing_keys(cfg.data)))  # full keys: data.root
    _data_paths(cfg)


def _no_missing_values(cfg: DictConfig) -> None:
    _refuse_missing([key for key in OmegaConf.missing_keys(cfg) if not key.startswith("hydra")])


def _refuse_missing(missing: list[str]) -> None:
    if missing:
        raise ConfigError(f"{', '.join(sorted(missing))} must be set (no default): add e.g. {missing[0]}=<value>")


def _names(cfg: DictConfig) -> None:
    from attn_zoo.registry import ATTENTION, BACKBONES

    try:
        BACKBONES.get(cfg.backbone.name)
        ATTENTION.check_options(cfg.attention.name, [key for key in cfg.attention if key != "name"])
    except (KeyError, TypeError) as error:
        raise ConfigError(str(error)) from None


def _positive(value: Any, key: str, *, strict: bool = True, integer: bool = False) -> None:
    is_number = isinstance(value, int if integer else (int, float)) and not isinstance(value, bool)
    if not is_number or not math.isfinite(value) or (value <= 0 if strict else value < 0):
        bound = (">= 1" if strict else ">= 0") if integer else ("> 0" if strict else ">= 0")
        raise ConfigError(f"{key} must be {'an integer ' if integer else ''}{bound}, got {value!r}")


def _present(node: DictConfig, *keys: str) -> Iterator[tuple[str, Any]]:
    for key in keys:
        if key in node and node[key] is not None:
            yield key, node[key]


def _numbers(cfg: DictConfig) -> None:
    for key, value in _present(cfg.data, "batch_size", "eval_batch_size", "num_classes", "num_samples", "image_size"):
        _positive(value, f"data.{key}", integer=True)
    for key, value in _present(cfg.data, "num_workers"):
        _positive(value, f"data.{key}", strict=False, integer=True)
    for key, value in _present(cfg.backbone, "num_classes"):
        _positive(value, f"backbone.{key}", integer=True)
    for key, value in _present(cfg.optim, "lr"):
        _positive(value, f"optim.{key}")
    for key, value in _present(cfg.optim, "weight_decay"):
        _positive(value, f"optim.{key}", strict=False)
    for key, value in _present(cfg.attention, "reduction"):
        _positive(value, "attention.reduction")
    for key, value in _present(cfg.attention, "divisor"):
        _positive(value, "attention.divisor", integer=True)
    seed = cfg.get("seed")
    if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < 2**32:
        raise ConfigError(f"seed must be an integer in [0, 2**32), got {seed!r}")
    epochs = cfg.trainer.get("max_epochs")
    if not isinstance(epochs, int) or isinstance(epochs, bool) or epochs < 1:
        raise ConfigError(f"trainer.max_epochs must be an integer >= 1, got {epochs!r}")
    smoothing = cfg.get("label_smoothing", 0.0)
    if not isinstance(smoothing, (int, float)) or not 0 <= smoothing < 1:
        raise ConfigError(f"label_smoothing must be in [0, 1), got {smoothing!r}")
    ema = cfg.get("ema_decay")
    if ema is not None and (not isinstance(ema, (int, float)) or not 0 < ema < 1):
        raise ConfigError(f"ema_decay must be null or in (0, 1), got {ema!r}")
    profile = cfg.get("profile") or {}
    for key, value in _present(profile, "steps", "start_step"):
        _positive(value, f"profile.{key}", strict=False, integer=True)
    mode = cfg.get("compile_mode")
    if mode is not None and mode not in COMPILE_MODES:
        raise ConfigError(f"compile_mode must be null or one of {', '.join(COMPILE_MODES)}; got {mode!r}")
    if cfg.get("channels_last", "auto") not in (True, False, "auto"):
        raise ConfigError(f"channels_last must be true, false or auto, got {cfg.channels_last!r}")


def channels_last(cfg: DictConfig) -> bool:
    """The ``channels_last`` setting: true, false, or ``auto`` = on when the run trains on CUDA, where
    cuDNN's convolutions and our fused kernels are fastest in that memory format (off on the CPU)."""
    setting = cfg.get("channels_last", "auto")
    if setting != "auto":
        return bool(setting)
    import torch

    accelerator = str(cfg.trainer.get("accelerator", "auto"))
    return accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())


def _work(cfg: DictConfig) -> None:
    """A run that would train or validate on no batch at all is a config error, not a result."""
    for key, verb in (("limit_train_batches", "train"), ("limit_val_batches", "validate")):
        value = cfg.trainer.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value <= 0:
            raise ConfigError(
                f"trainer.{key}={value} would {verb} on nothing; use a fraction in (0, 1] or a number of batches >= 1"
            )


def _last_epoch_validated(cfg: DictConfig) -> None:
    """results.json's ``top1`` is the last validation's: validating every n epochs where n does not
    divide the epochs would report an earlier epoch's weights as the run's (Lightning does not
    validate the last epoch unless the n-th falls on it)."""
    every, epochs = cfg.trainer.get("check_val_every_n_epoch", 1), cfg.trainer.max_epochs
    if every is None or isinstance(every, bool) or not isinstance(every, int) or every < 1:
        return  # null: validation by val_check_interval steps (Lightning's own checks apply)
    max_steps = cfg.trainer.get("max_steps")
    if isinstance(max_steps, int) and max_steps > 0:
        for key in ("min_steps", "min_epochs"):
            if cfg.trainer.get(key):  # Lightning trains on past max_steps, unvalidated, its last score stale
                raise ConfigError(f"trainer.{key} with trainer.max_steps: the steps end the run; leave {key} out")
        return  # the steps end the run, wherever they fall: max_epochs is a bound only
    if epochs % every:
        raise ConfigError(
            f"trainer.check_val_every_n_epoch={every} does not divide trainer.max_epochs={epochs}: the last "
            f"validation would follow epoch {epochs // every * every} of {epochs} and top1 would not be the "
            f"trained network's; take an n that divides {epochs}"
        )


def _in_range(value: Any, key: str, low: float, high: float, *, high_open: bool = True) -> None:
    """``value`` a number in [low, high) (or [low, high] if not ``high_open``)."""
    inside = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and low <= value
    inside = inside and (value < high if high_open else value <= high)
    if not inside:
        raise ConfigError(f"{key} must be in [{low}, {high}{')' if high_open else ']'}, got {value!r}")


def _optimizer(cfg: DictConfig) -> None:
    for key, value in _present(cfg.optim, "momentum"):
        _in_range(value, f"optim.{key}", 0, 1)
    for key, value in _present(cfg.optim, "betas"):
        if not OmegaConf.is_list(value) or len(value) != 2:
            raise ConfigError(f"optim.betas must be two numbers in [0, 1), got {value!r}")
        for index, beta in enumerate(value):
            _in_range(beta, f"optim.betas[{index}]", 0, 1)
    optimizer_factory(cfg.optim)


def optimizer_factory(optim: DictConfig):
    """The ``optim`` group instantiated: an ``attn_zoo.optim.OptimizerFactory`` (its class path and
    the learning-rate scale checked), or ``ConfigError``."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    from attn_zoo.optim import OptimizerFactory

    try:
        factory = instantiate(optim)
    except InstantiationException as error:
        raise ConfigError(one_line(error)) from error
    if not isinstance(factory, OptimizerFactory):
        raise ConfigError(f"optim: _target_ must be attn_zoo.optim.OptimizerFactory (the optimiser class goes in "
                          f"optim.optimizer, beside its arguments), got {optim.get('_target_')!r}")
    return factory


def _schedule(cfg: DictConfig) -> None:
    sched = cfg.get("sched") or {}
    for key, value in _present(sched, "gamma"):
        _positive(value, f"sched.{key}")
    for key, value in _present(sched, "min_factor"):
        _in_range(value, f"sched.{key}", 0, 1, high_open=False)
    for key, value in _present(sched, "warmup_epochs"):
        _in_range(value, f"sched.{key} (trainer.max_epochs={cfg.trainer.max_epochs})", 0, cfg.trainer.max_epochs,
                  high_open=False)
    for key, value in _present(sched, "milestones"):
        fractions = OmegaConf.is_list(value) and all(
            isinstance(m, (int, float)) and not isinstance(m, bool) and 0 < m < 1 for m in value)
        if not fractions:
            raise ConfigError(f"sched.milestones are fractions of the run in (0, 1), e.g. [0.5, 0.75]; got {value!r}")
    warmup, milestones = sched.get("warmup_epochs") or 0, sched.get("milestones")
    if milestones and warmup >= min(milestones) * cfg.trainer.max_epochs:
        # the warm-up ramps past the first drop, which it ignores: the lr climbs where it should have
        # fallen, then drops by more than one step at once when the warm-up ends
        raise ConfigError(
            f"sched.warmup_epochs={warmup} reaches the first milestone (epoch {min(milestones) * cfg.trainer.max_epochs:g} "
            f"of trainer.max_epochs={cfg.trainer.max_epochs}); warm up for fewer epochs"
        )


def _device(cfg: DictConfig) -> None:
    import torch

    accelerator = str(cfg.trainer.get("accelerator", "auto"))
    if accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        raise ConfigError(f"trainer.accelerator={accelerator} but no CUDA device is available; use trainer=cpu")
    devices = cfg.trainer.get("devices")
    if accelerator in ("gpu", "cuda") and isinstance(devices, int) and devices > torch.cuda.device_count():
        raise ConfigError(
            f"trainer.devices={devices} but only {torch.cuda.device_count()} CUDA device(s) are visible; "
            f"use trainer.devices=-1 for all of them"
        )


def _data_paths(cfg: DictConfig) -> None:
    data = cfg.data
    if "root" in data and not data.get("download", False):
        root = Path(str(data.root)).expanduser()
        if not root.is_dir():
            raise ConfigError(
                f"data.root {root.resolve()} does not exist (data={data.name}); point data.root "
                f"(or ATTN_ZOO_DATA) at the dataset folder" + (", or set data.download=true" if "download" in data else "")
            )
    if data.get("archive") is not None:
        archive = Path(str(data.archive)).expanduser()
        if not archive.is_file():
            raise ConfigError(f"data.archive {archive.resolve()} does not exist (data={data.name}); point data.archive "
                              "at the file (a relative path is read from the working directory)")


def _extra_callbacks(cfg: DictConfig) -> None:
    """Each ``callbacks.<name>`` names, by ``_target_``, a Lightning callback class or a function that
    makes one, importable before anything is built (instantiation is left to the run)."""
    import lightning as L
    from hydra.utils import get_method

    for name, spec in (cfg.get("callbacks") or {}).items():
        target = spec.get("_target_") if isinstance(spec, DictConfig) else None
        if not isinstance(target, str):
            raise ConfigError(f"callbacks.{name} needs a _target_ (the import path of a Lightning callback), "
                              f"e.g. +callbacks.{name}._target_=lightning.pytorch.callbacks.LearningRateMonitor")
        try:
            found = get_method(target)
        except (ImportError, ValueError) as error:
            raise ConfigError(f"callbacks.{name}: {one_line(error)}") from None
        if isinstance(found, type) and not issubclass(found, L.Callback):
            raise ConfigError(f"callbacks.{name}: {target} is not a Lightning Callback")


# ---------------------------------------------------------------- image size against the backbone


def total_stride(backbone: str, backbone_options: dict[str, Any], channels: int = 3) -> int:
    """How much ``backbone`` downsamples: input side / final feature map side.

    Measured on a shape-only (meta-device) copy built without attention, so it costs no memory
    or compute and holds for any backbone: the last 4-D output of a leaf module other than a
    global pool is the final feature map.
    """
    import torch
    from torch import nn

    import attn_zoo

    probe_side = 1024  # a multiple of any power-of-two stride a classifier uses
    options = {key: value for key, value in backbone_options.items() if key not in ("placement", "stages", "weights")}
    global_pools = (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)  # torchvision's models pool in a module
    with torch.device("meta"):
        model = attn_zoo.create_model(backbone, "none", backbone_options=options).eval()
    last_map: list[torch.Size] = []
    hooks = [
        module.register_forward_hook(lambda _m, _i, output: last_map.append(output.shape) if output.ndim == 4 else None)
        for module in model.modules()
        if not list(module.children()) and not isinstance(module, global_pools)
    ]
    try:
        with torch.no_grad():
            model(torch.empty(1, channels, probe_side, probe_side, device="meta"))
    finally:
        for hook in hooks:
            hook.remove()
    return max(1, round(probe_side / last_map[-1][-1]))


def check_image_size(backbone: str, backbone_options: dict[str, Any], image_shape) -> None:
    """Images smaller than the backbone's total stride reach its last stages as padding alone."""
    try:
        stride = total_stride(backbone, backbone_options, image_shape[0])
    except Exception:  # noqa: BLE001  (a backbone the meta device cannot trace is not checked)
        return
    height, width = image_shape[-2:]
    if min(height, width) < stride:
        hint = " or backbone.stem=cifar" if "stem" in backbone_options else ""
        raise ConfigError(
            f"images of {height}x{width} are too small for {backbone}"
            + (f" (stem={backbone_options['stem']})" if "stem" in backbone_options else "")
            + f": it downsamples by {stride}, so images must be at least {stride}x{stride}; "
            f"use larger images (e.g. data.image_size={stride}){hint}"
        )
    _refuse_a_one_pixel_map(backbone, backbone_options, stride, min(height, width))


def _refuse_a_one_pixel_map(backbone: str, backbone_options: dict[str, Any], stride: int, side: int) -> None:
    """An ImageNet stem on CIFAR-sized images leaves a 1x1 final map (attention's spatial parts and the
    last stages see one pixel): almost surely not meant, and the small-image stem exists for it."""
    if backbone_options.get("stem") == "imagenet" and side < 2 * stride:
        final = max(1, side // stride)
        raise ConfigError(
            f"images of {side}x{side} leave {backbone} with stem=imagenet (it downsamples by {stride}) a "
            f"{final}x{final} final feature map: set {' or '.join(_small_stems(backbone, backbone_options, side))} "
            f"for small images, or use images of at least {2 * stride}x{2 * stride}"
        )


def _small_stems(backbone: str, backbone_options: dict[str, Any], side: int) -> list[str]:
    """The small-image stems ``backbone`` takes, each with the final map it leaves at ``side``
    (a ResNet's cifar stem drops the max-pool too; MobileNetV2 has no max-pool but a cifar_4x4 stem)."""
    stems = []
    for stem in ("cifar", "cifar_4x4"):
        try:
            final = max(1, side // total_stride(backbone, {**backbone_options, "stem": stem}))
        except Exception:  # noqa: BLE001  (a stem this backbone does not have)
            continue
        stems.append(f"backbone.stem={stem} (a {final}x{final} final map)")
    return stems or ["backbone.stem=cifar"]


def one_line(error: BaseException) -> str:
    """The message of ``error`` as one line: for Hydra's "Error in call to target ..." wrapper, that of
    its cause (the constructor's own words); a DataLoader worker's error keeps its last line."""
    from hydra.errors import InstantiationException

    if isinstance(error, InstantiationException) and error.__cause__ is not None:
        error = error.__cause__
    text = str(error).strip()
    if "Original Traceback" in text:  # re-raised from a DataLoader worker: the last line is the error
        last = text.splitlines()[-1]
        text = last.split(": ", 1)[1] if ": " in last else last
    return " ".join(text.split())
