"""Timing windows (``torch.utils.benchmark``): images/s as the median over windows of steps, and peak
device memory."""
from __future__ import annotations

import statistics
import time
from typing import Callable

import torch
from torch.utils import benchmark

from attn_zoo.bench.settings import Settings
from attn_zoo.throughput import synchronize


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_mib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None


def window_seconds(step: Callable[[], None], count: int) -> float:
    """Seconds that ``count`` steps take, by ``torch.utils.benchmark.Timer``: it synchronises the
    accelerator before and after the window and runs max(count // 100, 2) untimed steps first (on top
    of the bench's own warm-up), with the process's thread count rather than its default of one thread."""
    timer = benchmark.Timer(stmt="step()", globals={"step": step}, num_threads=torch.get_num_threads())
    return timer.timeit(count).mean * count


def images_per_second(step: Callable[[], None], settings: Settings, device: torch.device) -> tuple[float, float]:
    """(median images/s over the timed windows, wall seconds of the warm-up)."""
    begin = time.perf_counter()
    for _ in range(settings.warmup):
        step()
    synchronize(device)
    warmup_s = time.perf_counter() - begin
    rates = [
        settings.batch_size * settings.iters / window_seconds(step, settings.iters)
        for _ in range(settings.windows)
    ]
    return statistics.median(rates), warmup_s
