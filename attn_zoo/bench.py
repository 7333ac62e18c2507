"""Throughput benchmark of (backbone, attention) pairs: ``python -m attn_zoo.bench``.

    python -m attn_zoo.bench                                   # tiny CPU preset (conf/bench/tiny.yaml)
    python -m attn_zoo.bench bench=resnet50 timm=true          # ResNet-50 x {none, se, eca, cbam}, and timm's
    python -m attn_zoo.bench bench=cifar attentions=[none,se] modes=[compiled] iters=50 out=cifar.csv
    python -m attn_zoo.bench bench=resnet50 attentions=[none,se,eca] fused_tail=true   # + fused-tail rows

Arguments are Hydra overrides of ``conf/bench.yaml`` (a preset from ``conf/bench/`` first). For each
pair and each mode, ``eager`` or ``compiled`` (``torch.compile`` of the model), it measures:

- params, and forward FLOPs and MACs for one image (``attn_zoo.profile.count_flops``:
  torch.utils.flop_counter, FLOPs = 2 x MACs, convolutions and matrix products only);
- training images/s: forward, cross-entropy loss, backward and an SGD-momentum step, in train mode;
- inference images/s: forward in eval mode under ``torch.no_grad``;
- peak GPU memory of each (``torch.cuda.max_memory_allocated``; empty on CPU). The training peak holds
  weights, gradients, momentum buffers and activations; the optimizer is freed before inference.

Data: one random batch, made once on the device and reused (no loader, no host-to-device copy).
Timing: ``warmup`` untimed steps (in compiled mode they include compilation), then ``windows`` windows
of ``iters`` steps; a window is timed with CUDA events on a GPU, ``time.perf_counter`` on a CPU, and
the reported images/s is the median over the windows. Precision: bf16 autocast on CUDA and float32 on
CPU by default (``dtype``); ``channels_last`` puts the model and the batch in that memory format.
Only the model is compiled; the loss and the optimizer step run eagerly.

``measure=[train]`` (or ``[infer]``) times one of the two only. ``profile=true`` also writes, per model
and mode, ``<out>.<model>.<mode>.profile.txt``: torch.profiler over ``iters`` training steps, with the
wall time per step, the device's busy (kernel) time per step and the operators by device time.

``fused_tail=true`` adds, after each of our models whose attention has a fused block tail (se, eca),
the same model built with ``backbone.fused_tail=true`` (``attn_zoo.fused.bn_se_tail``), as model
``<backbone>+<attention>+fused_tail``, relative to the same plain ``none`` baseline; ``fused_tail=triton``
the model with Triton reductions (``+fused_tail_triton``); ``fused_tail=[true,triton]`` both.

Output: a markdown table on stdout and a CSV (``out``, default ``bench.csv`` in the current
directory), one row per (model, mode), with throughput relative to the ``none`` attention of the
same implementation, backbone and mode. A model that fails to build, compile or run gets a row with
empty rates and the exception in ``error``; the rows after it still run, and the exit status is 1.

``compile_jobs=N`` (compiled mode) first compiles each (backbone, attention) pair, with its fused-tail
and timm variants, in N parallel processes whose timings are discarded; the timed run then finds the
compiled code in Inductor's on-disk caches. On an H200, 8 compiled ResNet-50s (train and infer) were
timed in 5 minutes this way, where compiling each takes about a minute (BENCHMARKS.md). Timing is
unchanged: one model at a time, nothing else running.
"""
from __future__ import annotations

import argparse
import csv
import importlib.util
import math
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

import attn_zoo
from attn_zoo import step_profile
from attn_zoo.profile import count_flops, count_params
from attn_zoo.registry import ATTENTION, BACKBONES
from attn_zoo.throughput import synchronize

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"
MODES = ("eager", "compiled")
MEASURES = ("train", "infer")
DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}
LEARNING_RATE, MOMENTUM, WEIGHT_DECAY = 0.01, 0.9, 1e-4
COLUMNS = (
    "implementation", "model", "backbone", "attention", "mode", "params", "flops", "macs",
    "train_images_per_s", "train_vs_none", "infer_images_per_s", "infer_vs_none",
    "train_peak_mib", "infer_peak_mib", "train_warmup_s", "infer_warmup_s", "batch_size", "image_size", "dtype",
    "channels_last", "timing", "device", "torch", "date", "note", "error",
)

# timm's ResNet builds its blocks' attention from block_args=dict(attn_layer=...), placed as ours:
# after the block's last BatchNorm, before the residual addition. The same construction serves every
# attention (for se it is exactly timm's 'seresnet50'); ecaresnet50d is not used because its deep
# stem and average-pool shortcuts make it a different network.
TIMM_BACKBONES = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")
TIMM_ATTENTIONS = ("none", "se", "eca", "cbam")
TIMM_NOTES = {"cbam": "timm's CbamModule has no MLP biases (ours: mlp_bias=true)"}


@dataclass(frozen=True)
class Settings:
    backbones: tuple[str, ...]
    attentions: tuple[str, ...]
    batch_size: int
    image_size: int
    modes: tuple[str, ...]
    measure: tuple[str, ...]
    compile_mode: str | None
    dtype: str
    channels_last: bool
    device: str
    warmup: int
    iters: int
    windows: int
    timm: bool
    fused_tail: bool | str | tuple
    profile: bool
    compile_jobs: int
    out: str

    @classmethod
    def from_config(cls, cfg: Any) -> "Settings":
        values = {name: cfg[name] for name in cls.__dataclass_fields__}
        for name in ("backbones", "attentions", "modes", "measure"):
            values[name] = tuple(values[name])
        if not isinstance(values["fused_tail"], (bool, str)):
            values["fused_tail"] = tuple(values["fused_tail"])
        settings = cls(**values)
        settings.check()
        return settings

    def check(self) -> None:
        for name in self.backbones:
            BACKBONES.get(name)
        for name in self.attentions:
            ATTENTION.get(name)
        if not set(self.modes) <= set(MODES):
            raise ValueError(f"modes must be among {', '.join(MODES)}; got {list(self.modes)}")
        if not self.measure or not set(self.measure) <= set(MEASURES):
            raise ValueError(f"measure must be a non-empty list among {', '.join(MEASURES)}; got {list(self.measure)}")
        if self.dtype not in ("auto", *DTYPES):
            raise ValueError(f"dtype must be auto, {' or '.join(DTYPES)}; got {self.dtype}")
        for name in ("batch_size", "image_size", "iters", "windows"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        fused_tail_options(self.fused_tail)
        if self.warmup < 0:
            raise ValueError(f"warmup must be >= 0, got {self.warmup}")
        if self.compile_jobs < 0:
            raise ValueError(f"compile_jobs must be >= 0, got {self.compile_jobs}")

    def torch_device(self) -> torch.device:
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return torch.device(self.device)

    def torch_dtype(self, device: torch.device) -> torch.dtype:
        if self.dtype == "auto":
            return torch.bfloat16 if device.type == "cuda" else torch.float32
        return DTYPES[self.dtype]

    def timing(self) -> str:
        return f"median of {self.windows} windows x {self.iters} steps after {self.warmup} warm-up"


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


def fused_tail_options(setting: Any) -> list[bool | str]:
    """The ``backbone.fused_tail`` values a bench's ``fused_tail`` asks for: false, true, triton or a list."""
    from attn_zoo.fused.bn_se_tail import tail_kernels

    options = [] if setting is False else list(setting) if isinstance(setting, (list, tuple)) else [setting]
    for option in options:
        tail_kernels(option)  # raises ValueError for anything else
    return [option for option in options if option is not False]


def fused_tail_candidate(backbone: str, attention: str, option: bool | str = True) -> Candidate | None:
    """Ours with ``backbone.fused_tail=<option>``, for an attention the fused tail computes."""
    from attn_zoo.fused.bn_se_tail import fuses

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


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_mib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None


def window_seconds(step: Callable[[], None], count: int, device: torch.device) -> float:
    """Seconds that ``count`` steps take: CUDA events on a GPU, wall clock on a CPU."""
    synchronize(device)
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(count):
            step()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1000
    begin = time.perf_counter()
    for _ in range(count):
        step()
    return time.perf_counter() - begin


def images_per_second(step: Callable[[], None], settings: Settings, device: torch.device) -> tuple[float, float]:
    """(median images/s over the timed windows, wall seconds of the warm-up)."""
    begin = time.perf_counter()
    for _ in range(settings.warmup):
        step()
    synchronize(device)
    warmup_s = time.perf_counter() - begin
    rates = [
        settings.batch_size * settings.iters / window_seconds(step, settings.iters, device)
        for _ in range(settings.windows)
    ]
    return statistics.median(rates), warmup_s


@dataclass
class Workload:
    """The model as it is run (maybe compiled) and its one synthetic batch, on the device."""

    model: nn.Module
    runner: nn.Module
    images: torch.Tensor
    labels: torch.Tensor
    dtype: torch.dtype

    def autocast(self):
        return torch.autocast(self.images.device.type, dtype=self.dtype, enabled=self.dtype != torch.float32)


def output_classes(model: nn.Module, image_size: int, device: torch.device) -> int:
    model.eval()
    with torch.no_grad():
        return model(torch.zeros(2, 3, image_size, image_size, device=device)).shape[1]


def workload(model: nn.Module, mode: str, settings: Settings, device: torch.device) -> Workload:
    memory_format = torch.channels_last if settings.channels_last else torch.contiguous_format
    model = model.to(device=device, memory_format=memory_format)
    classes = output_classes(model, settings.image_size, device)
    shape = (settings.batch_size, 3, settings.image_size, settings.image_size)
    images = torch.randn(shape, device=device).contiguous(memory_format=memory_format)
    labels = torch.randint(classes, (settings.batch_size,), device=device)
    runner = model
    if mode == "compiled":
        torch._dynamo.reset()  # every model of a class shares forward's code: start each with a clean cache
        runner = torch.compile(model, mode=settings.compile_mode)
    return Workload(model, runner, images, labels, settings.torch_dtype(device))


def training_step(work: Workload) -> Callable[[], None]:
    """One training step of ``work``'s model: forward, cross-entropy, backward, SGD-momentum step."""
    optimizer = torch.optim.SGD(work.model.parameters(), lr=LEARNING_RATE, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)
    work.model.train()

    def step() -> None:
        with work.autocast():
            loss = F.cross_entropy(work.runner(work.images), work.labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def train_throughput(work: Workload, settings: Settings, device: torch.device) -> tuple[float, float, float | None]:
    """(images/s, warm-up seconds, peak MiB) of forward + cross-entropy + backward + SGD step."""
    step = training_step(work)
    reset_peak_memory(device)
    rate, warmup_s = images_per_second(step, settings, device)
    return rate, warmup_s, peak_memory_mib(device)


def profile_training(work: Workload, settings: Settings, device: torch.device, path: Path) -> None:
    """torch.profiler over ``iters`` warm training steps, summarised into ``path``
    (``attn_zoo.step_profile``: wall and device-busy time per step, operators by device and host time)."""
    step = training_step(work)
    for _ in range(max(1, settings.warmup)):
        step()
    synchronize(device)
    begin = time.perf_counter()
    with step_profile.profiler(device) as finished:
        for _ in range(settings.iters):
            step()
        synchronize(device)
    wall = time.perf_counter() - begin
    step_profile.write_summary(path, step_profile.summary(finished, device, settings.iters, settings.batch_size, wall))


def profile_path(settings: Settings, model: str, mode: str) -> Path:
    """``<out without .csv>.<model>.<mode>.profile.txt``, in letters, digits, '.', '_' and '-' only."""
    safe_model = "".join(c if c.isalnum() or c in "._-" else "_" for c in model)
    out = Path(settings.out)
    return out.with_name(f"{out.stem}.{safe_model}.{mode}.profile.txt")


def infer_throughput(work: Workload, settings: Settings, device: torch.device) -> tuple[float, float, float | None]:
    """(images/s, warm-up seconds, peak MiB) of the eval-mode forward under no_grad."""
    work.model.eval()

    def step() -> None:
        with torch.no_grad(), work.autocast():
            work.runner(work.images)

    reset_peak_memory(device)
    rate, warmup_s = images_per_second(step, settings, device)
    return rate, warmup_s, peak_memory_mib(device)


def measure(candidate: Candidate, mode: str, settings: Settings, device: torch.device) -> dict[str, Any]:
    torch.manual_seed(0)
    work = workload(candidate.build(), mode, settings, device)
    skipped = (None, None, None)
    train_rate, train_warmup_s, train_peak = (
        train_throughput(work, settings, device) if "train" in settings.measure else skipped
    )
    infer_rate, infer_warmup_s, infer_peak = (
        infer_throughput(work, settings, device) if "infer" in settings.measure else skipped
    )
    if settings.profile:
        profile_training(work, settings, device, profile_path(settings, candidate.model, mode))
    del work
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return {
        "train_images_per_s": train_rate, "infer_images_per_s": infer_rate,
        "train_peak_mib": train_peak, "infer_peak_mib": infer_peak,
        "train_warmup_s": train_warmup_s, "infer_warmup_s": infer_warmup_s,
    }


def measure_or_error(candidate: Candidate, mode: str, settings: Settings, device: torch.device) -> dict[str, Any]:
    """``measure``, or, when the model fails to build, compile or run, a row that says why with empty
    rates: one broken fast path must not cost the rows after it (a device-time budget buys one try)."""
    try:
        return {**measure(candidate, mode, settings, device), "error": None}
    except Exception as error:  # noqa: BLE001 - recorded in the row and printed, then the next row runs
        traceback.print_exc()
        if device.type == "cuda":
            torch.cuda.empty_cache()
        message = " ".join(f"{type(error).__name__}: {error}".split())[:300]
        empty = dict.fromkeys(("train_images_per_s", "infer_images_per_s", "train_peak_mib", "infer_peak_mib",
                               "train_warmup_s", "infer_warmup_s"))
        return {**empty, "error": message}


def model_cost(candidate: Candidate, image_size: int) -> dict[str, int]:
    """Parameters and one-image forward FLOPs/MACs, counted in float32 on the CPU."""
    model = candidate.build()
    flops = count_flops(model, (3, image_size, image_size))
    return {"params": count_params(model), "flops": flops, "macs": flops // 2}


def environment(settings: Settings, device: torch.device) -> dict[str, Any]:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
    dtype = str(settings.torch_dtype(device)).removeprefix("torch.")
    return {
        "batch_size": settings.batch_size, "image_size": settings.image_size, "dtype": dtype,
        "channels_last": settings.channels_last, "timing": settings.timing(), "device": name,
        "torch": torch.__version__, "date": datetime.now().isoformat(timespec="seconds"),
    }


def add_relative(rows: list[dict[str, Any]]) -> None:
    """Throughput over that of the ``none`` row with the same implementation, backbone and mode."""
    key = lambda row: (row["implementation"], row["backbone"], row["mode"])  # noqa: E731
    baselines = {key(row): row for row in rows if row["attention"] == "none" and row["model"].endswith("+none")}
    for row in rows:
        base = baselines.get(key(row))
        for column in ("train", "infer"):
            rate = f"{column}_images_per_s"
            row[f"{column}_vs_none"] = row[rate] / base[rate] if base and row[rate] and base[rate] else None


# what a cache-warming job sets itself; the caller's values for these keys are dropped
WARMING_KEYS = ("backbones", "attentions", "modes", "warmup", "iters", "windows", "profile", "compile_jobs", "out")


def warming_command(overrides: Sequence[str], backbone: str, attention: str, out: Path) -> list[str]:
    """The bench for one (backbone, attention) and its variants, compiled, one step each."""
    kept = [item for item in overrides if item.split("=", 1)[0].lstrip("+~") not in WARMING_KEYS]
    return [
        sys.executable, "-m", "attn_zoo.bench", *kept, f"backbones=[{backbone}]", f"attentions=[{attention}]",
        "modes=[compiled]", "warmup=1", "iters=1", "windows=1", "profile=false", "compile_jobs=0", f"out={out}",
    ]


def warm_compile_caches(settings: Settings, overrides: Sequence[str]) -> int:
    """Compile every (backbone, attention) pair in ``compile_jobs`` parallel processes first, timings
    discarded, so that Inductor's on-disk caches hold the compiled code and the timed run, one model
    at a time, compiles from them in seconds. Compilation is mostly single-threaded Python, so this
    turns minutes of idle accelerator per model into one parallel pass. Returns the failed jobs."""
    if settings.compile_jobs < 1 or "compiled" not in settings.modes:
        return 0
    pairs = [(backbone, attention) for backbone in settings.backbones for attention in settings.attentions]
    started = time.perf_counter()
    # a thread per running job: the next job starts when any one finishes, not the oldest
    with tempfile.TemporaryDirectory(prefix="attn_zoo_warm_") as folder, \
            ThreadPoolExecutor(settings.compile_jobs) as pool:
        succeeded = list(pool.map(lambda pair: _warm_one(overrides, Path(folder), *pair), pairs))
    failed = succeeded.count(False)
    print(f"warmed compile caches: {len(pairs)} jobs, {settings.compile_jobs} at a time, {failed} failed, "
          f"{time.perf_counter() - started:.0f} s", file=sys.stderr)
    return failed


def _warm_one(overrides: Sequence[str], folder: Path, backbone: str, attention: str) -> bool:
    """One warming job in a process of its own; its output goes to stderr if it fails."""
    log = folder / f"{backbone}_{attention}.log"
    command = warming_command(overrides, backbone, attention, log.with_suffix(".csv"))
    with log.open("w") as handle:  # a file: a full pipe would stall the job
        code = subprocess.run(command, stdout=handle, stderr=subprocess.STDOUT).returncode
    if code != 0:
        print(f"warming job failed ({' '.join(command[3:])}):\n{log.read_text()[-2000:]}", file=sys.stderr)
    return code == 0


def run(settings: Settings) -> list[dict[str, Any]]:
    """Time every candidate in every mode; the CSV is rewritten after each row, so a run stopped
    part-way (a job's time limit) keeps the rows it finished."""
    device = settings.torch_device()
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick its fastest kernels
    shared = environment(settings, device)
    rows = []
    for candidate in candidates(settings):
        cost = model_cost(candidate, settings.image_size)
        for mode in settings.modes:
            print(f"timing {candidate.implementation} {candidate.model} {mode}", file=sys.stderr)
            rows.append({
                "implementation": candidate.implementation, "model": candidate.model,
                "backbone": candidate.backbone, "attention": candidate.attention, "mode": mode,
                **cost, **measure_or_error(candidate, mode, settings, device), **shared, "note": candidate.note,
            })
            add_relative(rows)
            write_csv(rows, Path(settings.out))
    return rows


def _number(value: Any, digits: int) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return f"{value:,.{digits}f}"


def header_line(row: dict[str, Any]) -> str:
    return (
        f"{row['device']}, torch {row['torch']}, batch {row['batch_size']}, {row['image_size']}x{row['image_size']}, "
        f"{row['dtype']}, channels_last={row['channels_last']}, {row['timing']}, {row['date']}"
    )


def markdown_table(rows: list[dict[str, Any]]) -> str:
    header = ("impl", "model", "mode", "params (M)", "GFLOPs", "GMACs", "train img/s", "train x none",
              "infer img/s", "infer x none", "train peak MiB", "infer peak MiB", "warm-up s (train/infer)")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = (
            row["implementation"], row["model"], row["mode"], _number(row["params"] / 1e6, 2),
            _number(row["flops"] / 1e9, 3), _number(row["macs"] / 1e9, 3),
            _number(row["train_images_per_s"], 1), _number(row["train_vs_none"], 3),
            _number(row["infer_images_per_s"], 1), _number(row["infer_vs_none"], 3),
            _number(row["train_peak_mib"], 0), _number(row["infer_peak_mib"], 0),
            f"{_number(row['train_warmup_s'], 1)} / {_number(row['infer_warmup_s'], 1)}",
        )
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_csv(rows: list[dict[str, Any]], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows({k: "" if row[k] is None else row[k] for k in COLUMNS} for row in rows)


def compose(overrides: Sequence[str]) -> Any:
    from hydra import compose as hydra_compose, initialize_config_dir

    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        return hydra_compose("bench", overrides=list(overrides))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m attn_zoo.bench", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "overrides", nargs="*",
        help="Hydra overrides of conf/bench.yaml, e.g. bench=resnet50 attentions=[none,se] modes=[eager] timm=true",
    )
    args = parser.parse_args(argv)
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    try:
        settings = Settings.from_config(compose(args.overrides))
    except (HydraException, OmegaConfBaseException, ValueError, TypeError, KeyError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    warm_compile_caches(settings, args.overrides)
    rows = run(settings)
    if rows:
        print(header_line(rows[0]))
    print(markdown_table(rows))
    failed = [row for row in rows if row["error"]]
    for row in failed:
        print(f"failed: {row['implementation']} {row['model']} {row['mode']}: {row['error']}")
    print(f"wrote {len(rows)} rows to {settings.out}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
