"""Measured training speed: images per second over each training epoch, validation excluded (at the
epoch's end or mid-way, ``trainer.val_check_interval`` < 1), summed over all processes under DDP.

FLOPs do not predict the speed of attention (pooling and rescaling are memory-bound), so every
run records what it measured. The first epoch includes warm-up (cuDNN autotuning, torch.compile)
and is reported separately from the later ones. The wall time of each whole epoch (training and
its validation) is recorded too, and the run's training wall time.

A resumed run continues these records from its checkpoint. An epoch resumed mid-way is timed from
the resumed process's first batch (Lightning does not call ``on_train_epoch_start`` for it): its
rate and seconds cover the batches it ran after the resume, warm-up of the new process included.

A speed means nothing without the machine that gave it: ``hardware`` lists what each process of the
run trained on (the device's model, processes, CPU threads, and how many jobs its launcher ran at
once), one entry per change, so a run resumed elsewhere says so and the summary never compares it.

Jobs a launcher runs at once (``hydra/launcher=parallel``) do not always share the machine with as
many others as the launcher allows: a sweep shorter than ``n_jobs``, its last jobs, a job beside
others that failed at once. Each epoch's load is measured (``SweepLoad``: the sweep's jobs training
at the epoch's start and end), the speed is the median of the later epochs at the load most of them
ran at, and that load, not the launcher's setting, is the ``parallel_jobs`` of the speed's hardware.
"""
from __future__ import annotations

import contextlib
import logging
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch

log = logging.getLogger(__name__)


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work, so that a wall clock read after it is honest."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def cpu_model(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """The CPU's model name as the OS reports it (``AMD EPYC 7763 64-Core Processor``); a name without
    a model number, as virtual machines report it (``AMD EPYC``), gets the family and model numbers
    (``AMD EPYC (family 25, model 17)``): two generations under one name ran at different speeds, with
    different float32 results, and speeds are compared only on one hardware name."""
    if cpuinfo.is_file():
        fields: dict[str, str] = {}
        for line in cpuinfo.read_text(encoding="utf-8", errors="replace").splitlines():
            key, _, value = line.partition(":")
            if not line.strip():
                break  # the first processor's block is enough
            fields.setdefault(key.strip(), value.strip())
        name = fields.get("model name")
        if name and not any(character.isdigit() for character in name) and "cpu family" in fields:
            return f"{name} (family {fields['cpu family']}, model {fields.get('model', '?')})"
        if name:
            return name
    return platform.processor() or platform.machine() or "unknown CPU"


def hardware(device: torch.device, processes: int, parallel_jobs: int = 1,
             loader_workers: int | None = None) -> dict[str, Any]:
    """What one process trains on: the accelerator's model (the CPU's on the CPU, with its torch
    threads), the number of processes (DDP), above 1 the jobs its launcher runs at once on the
    machine (they share it, so each job's speed is lower than alone), and the loader's worker
    processes (``data.num_workers``: the same batches at another speed), and torch's version."""
    if device.type == "cuda":
        record: dict[str, Any] = {"device": torch.cuda.get_device_name(device)}
    elif device.type == "cpu":
        record = {"device": cpu_model(), "threads": torch.get_num_threads()}
    else:
        record = {"device": device.type}
    record["processes"] = processes
    # kernels change between releases: a resume under another adds an entry. A str, not TorchVersion,
    # which a weights_only load refuses
    record["torch"] = str(torch.__version__)
    if parallel_jobs > 1:
        record["parallel_jobs"] = parallel_jobs
    if loader_workers is not None:
        record["loader_workers"] = loader_workers
    return record


def same_hardware(entry: dict[str, Any], earlier: dict[str, Any]) -> bool:
    """Whether a process's hardware is that of the checkpoint's last entry (a change adds an entry). The
    torch version counts only where both record it: entries saved before it was recorded lack it."""
    keys = set(entry) | set(earlier)
    if "torch" not in entry or "torch" not in earlier:
        keys.discard("torch")
    return all(entry.get(key) == earlier.get(key) for key in keys)


class SweepLoad:
    """How many jobs of a parallel sweep are training now: each job's process marks itself with a file
    ``<sweep>/.running/<pid>`` while it trains (a worker process runs one job at a time); a marker
    whose process is gone (killed before it could remove it) does not count."""

    FOLDER = ".running"

    def __init__(self, sweep_dir: Path):
        self.folder = Path(sweep_dir) / self.FOLDER
        self.marker = self.folder / str(os.getpid())

    def __enter__(self) -> SweepLoad:
        while True:  # the last job to leave removes the folder: it may vanish between the two calls
            self.folder.mkdir(parents=True, exist_ok=True)
            try:
                self.marker.touch()
                return self
            except FileNotFoundError:
                continue

    def __exit__(self, *exc_info) -> None:
        self.marker.unlink(missing_ok=True)
        with contextlib.suppress(OSError):  # others still train (or a stale marker): the folder stays
            self.folder.rmdir()

    def _markers(self) -> dict[Path, bool]:
        """Each job's marker and whether its process lives (raises OSError where the folder cannot be read)."""
        return {Path(entry.path): _alive(int(entry.name)) for entry in os.scandir(self.folder) if entry.name.isdigit()}

    def __call__(self) -> int | None:
        """The jobs training now (this one included); None where the folder cannot be read."""
        try:
            return max(1, sum(self._markers().values()))
        except OSError:
            return None

    def forget_the_dead(self) -> None:
        """Remove the markers of processes that are gone (a sweep killed outright): a rerun's process
        that gets one of their numbers would count them."""
        with contextlib.suppress(OSError):
            for marker, alive in self._markers().items():
                if not alive:
                    marker.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process of that number: alive
        return True
    return True


def _speed_epochs(rates: list[float], loads: list[int | None]) -> tuple[list[float], int | None]:
    """The later epochs' rates at the load most of them ran at (ties: the higher load, the sweep's
    fuller one), and that load; epochs whose load changed while they ran (None) are left out, and
    where every one did, there is no speed."""
    later, later_loads = (rates[1:], loads[1:]) if len(rates) > 1 else (rates, loads)
    if all(load is None for load in later_loads):
        return [], None
    counts = {load: later_loads.count(load) for load in set(later_loads) if load is not None}
    load = max(counts, key=lambda value: (counts[value], value))
    return [rate for rate, each in zip(later, later_loads) if each == load], load


class TrainThroughput(L.Callback):
    """Per-epoch training rate and seconds, and the run's wall time: this process's from the
    callback's making (with the trainer, just before ``fit``) on, plus the earlier processes' up to
    the checkpoint this one resumed from. All three are saved in each checkpoint's callback state,
    with the ``hardware`` each process trained on (``parallel_jobs``: jobs its launcher runs at once;
    ``loader_workers``: the data loader's worker processes)."""

    def __init__(self, parallel_jobs: int = 1, loader_workers: int | None = None, load=None):
        self.parallel_jobs, self.loader_workers = parallel_jobs, loader_workers
        self.load = load  # a SweepLoad (jobs training now) in a parallel sweep, else None
        self.hardware: list[dict[str, Any]] = []
        self.epoch_rates: list[float] = []
        self.epoch_loads: list[int | None] = []  # beside epoch_rates: the jobs at once, None where it changed
        self._loads: set[int | None] = set()
        self.epoch_seconds: list[float] = []
        self.earlier_wall_time_s = 0.0
        self._process_started = time.perf_counter()
        self._images = 0
        self._training_s = 0.0  # the current epoch's training time so far, validations left out
        self._started: float | None = None  # the current epoch's clock in this process
        self._segment_started: float | None = None  # the training clock, None while paused

    def state_dict(self) -> dict[str, Any]:
        # keep only whole epochs (a rate with its seconds)
        return {"epoch_rates": self.epoch_rates[: len(self.epoch_seconds)], "epoch_seconds": self.epoch_seconds,
                "epoch_loads": self.epoch_loads[: len(self.epoch_seconds)],
                "wall_time_s": self.wall_time_s(), "hardware": self.hardware}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.epoch_rates, self.epoch_seconds = list(state_dict["epoch_rates"]), list(state_dict["epoch_seconds"])
        self.earlier_wall_time_s = state_dict["wall_time_s"]
        # before this was recorded: unknown, which the summary treats as another machine than any known one
        earlier = list(state_dict.get("hardware") or [{"device": "unknown"}])
        # saved before loads were measured: the setting of the launcher that trained them, as its entry says
        self.epoch_loads = list(state_dict.get("epoch_loads")
                                or [earlier[-1].get("parallel_jobs", 1)] * len(self.epoch_rates))
        self.hardware = earlier + [entry for entry in self.hardware if not same_hardware(entry, earlier[-1])]

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        # Lightning loads a checkpoint's callback states after this hook: load_state_dict puts them first
        this_process = hardware(trainer.strategy.root_device, trainer.world_size, self.parallel_jobs,
                                self.loader_workers)
        self.hardware = [this_process]

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        if self.state_key not in (checkpoint.get("callbacks") or {}):
            log.warning("the checkpoint holds no training time records (saved by an older attn_zoo): "
                        "wall_time_s and the per-epoch speeds count from this resume on")

    def wall_time_s(self) -> float:
        return self.earlier_wall_time_s + time.perf_counter() - self._process_started

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start_clock(trainer)

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_index) -> None:
        if self._started is None:  # an epoch resumed mid-way
            self._start_clock(trainer)

    def _start_clock(self, trainer: L.Trainer) -> None:
        synchronize(trainer.strategy.root_device)
        self._images, self._training_s = 0, 0.0
        self._loads = {self.load()} if self.load is not None else set()
        self._started = self._segment_started = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_index) -> None:
        self._images += len(batch[1])

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # validation runs inside the training epoch (at its end, or mid-way with val_check_interval < 1):
        # the rate's clock pauses at the last training batch before it
        if not trainer.sanity_checking:
            self._pause(trainer)

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking and not trainer.is_last_batch and self._started is not None:
            self._segment_started = time.perf_counter()  # a validation mid-epoch: training goes on

    def _pause(self, trainer: L.Trainer) -> None:
        if self._segment_started is not None:
            synchronize(trainer.strategy.root_device)
            self._training_s += time.perf_counter() - self._segment_started
            self._segment_started = None

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._started is None:  # resumed after the epoch's last batch: nothing ran in this process
            return
        self._pause(trainer)  # epochs without validation
        if self._images:
            self.epoch_rates.append(self._images * trainer.world_size / self._training_s)
            if self.load is not None:
                self._loads.add(self.load())
            # one load from start to end; None where it changed, or could not be read
            self.epoch_loads.append(next(iter(self._loads)) if len(self._loads) == 1 else
                                    None if self._loads else self.parallel_jobs)
        # Lightning runs the epoch's validation before this hook
        self.epoch_seconds.append(time.perf_counter() - self._started)
        self._started = None

    def summary(self) -> dict[str, Any]:
        if not self.epoch_rates:
            return {}
        timed, load = _speed_epochs(self.epoch_rates, self.epoch_loads)
        hardware = [dict(entry) for entry in self.hardware]
        if load is not None and self.parallel_jobs > 1:
            # the jobs that shared the machine, as measured: a run alone at a sweep's end was alone
            hardware[-1] = {key: load if key == "parallel_jobs" else value for key, value in hardware[-1].items()
                            if key != "parallel_jobs" or load > 1}
        return {
            "hardware": hardware,
            "train_images_per_s": statistics.median(timed) if timed else None,
            **({"parallel_jobs_by_epoch": self.epoch_loads} if self.parallel_jobs > 1 else {}),
            "train_images_per_s_first_epoch": self.epoch_rates[0],
            "train_images_per_s_by_epoch": self.epoch_rates,
            "epoch_seconds_by_epoch": self.epoch_seconds,
        }
