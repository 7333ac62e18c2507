"""One model in one mode on its synthetic batch: training and inference images/s, peak memory, profile."""
from __future__ import annotations

import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from attn_zoo import step_profile
from attn_zoo.bench.candidates import Candidate
from attn_zoo.bench.settings import Settings
from attn_zoo.bench.timing import images_per_second, peak_memory_mib, reset_peak_memory
from attn_zoo.throughput import synchronize

LEARNING_RATE, MOMENTUM, WEIGHT_DECAY = 0.01, 0.9, 1e-4


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


def profile_path(settings: Settings, candidate: Candidate, mode: str) -> Path:
    """``<out without .csv>.<model>.<mode>.profile.txt`` (timm's: ``<out without .csv>.timm.<model>...``, beside ours of
    the same name), in letters, digits, '.', '_' and '-' only."""
    implementation = "" if candidate.implementation == "attn_zoo" else f"{candidate.implementation}."
    safe_model = "".join(c if c.isalnum() or c in "._-" else "_" for c in implementation + candidate.model)
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
        profile_training(work, settings, device, profile_path(settings, candidate, mode))
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
        return unmeasured(error)


MEASURED = ("train_images_per_s", "infer_images_per_s", "train_peak_mib", "infer_peak_mib", "train_warmup_s",
            "infer_warmup_s")


def unmeasured(error: Exception) -> dict[str, Any]:
    """A row's measurements, empty, and why: the error's type and message on one line."""
    return {**dict.fromkeys(MEASURED), "error": " ".join(f"{type(error).__name__}: {error}".split())[:300]}
