"""Where a training step's time goes: torch.profiler over a few warm steps, summarised per step.

The summary's first line gives the wall time per step and the time the device was busy with
kernels per step. A step far longer than its device time is bound by the host (Python, launches,
a framework's loop), and faster kernels will not help it; a step about as long is bound by the
kernels, and the operator table below it says which. Used by the benchmark (``profile=true``) and by
training runs (``profile.steps=N``, ``attn_zoo.callbacks.StepProfiler``).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch.profiler import ProfilerActivity, profile


def profiler(device: torch.device) -> profile:
    """A torch.profiler that records host operators, and kernels on a CUDA device."""
    on_cuda = device.type == "cuda"
    return profile(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if on_cuda else []))


def _kernel_microseconds(event: Any) -> float:
    """Device time of a kernel row; 0 for operator rows, whose kernels have rows of their own."""
    from torch.autograd import DeviceType

    return event.self_device_time_total if getattr(event, "device_type", None) == DeviceType.CUDA else 0.0


def summary(finished: profile, device: torch.device, steps: int, batch_size: int, wall_seconds: float) -> str:
    """The header line (wall and device-busy ms per step) and the 40 operators that took the most
    device time (on a CPU: host time)."""
    on_cuda = device.type == "cuda"
    averages = finished.key_averages()
    wall_ms = wall_seconds * 1000 / steps
    busy_ms = sum(_kernel_microseconds(event) for event in averages) / 1000 / steps
    header = f"profiled training steps: {steps} of batch {batch_size}, {wall_ms:.3f} ms per step, " + (
        f"device busy {busy_ms:.3f} ms per step ({busy_ms / wall_ms:.0%})" if on_cuda else "no device timeline (CPU)"
    )
    sort_key = "self_device_time_total" if on_cuda else "self_cpu_time_total"
    return header + "\n\n" + averages.table(sort_by=sort_key, row_limit=40) + "\n"


def write_summary(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
