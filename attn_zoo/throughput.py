"""Measured training speed: images per second over each training epoch, validation excluded.

FLOPs do not predict the speed of attention (pooling and rescaling are memory-bound), so every
run records what it measured. The first epoch includes warm-up (cuDNN autotuning, torch.compile)
and is reported separately from the later ones. The wall time of each whole epoch (training and
its validation) is recorded too.
"""
from __future__ import annotations

import statistics
import time

import lightning as L
import torch


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work, so that a wall clock read after it is honest."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class TrainThroughput(L.Callback):
    def __init__(self):
        self.epoch_rates: list[float] = []
        self.epoch_seconds: list[float] = []
        self._images = 0
        self._started = 0.0

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        synchronize(trainer.strategy.root_device)
        self._images, self._started = 0, time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_index) -> None:
        self._images += len(batch[1])

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # validation runs inside the training epoch: stop the clock at the last training batch
        if not trainer.sanity_checking:
            self._record(trainer)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._record(trainer)  # epochs without validation
        # Lightning runs the epoch's validation before this hook
        self.epoch_seconds.append(time.perf_counter() - self._started)

    def _record(self, trainer: L.Trainer) -> None:
        if not self._images:
            return
        synchronize(trainer.strategy.root_device)
        elapsed = time.perf_counter() - self._started
        self.epoch_rates.append(self._images * trainer.world_size / elapsed)
        self._images = 0

    def summary(self) -> dict[str, float]:
        if not self.epoch_rates:
            return {}
        later = self.epoch_rates[1:] or self.epoch_rates
        return {
            "train_images_per_s": statistics.median(later),
            "train_images_per_s_first_epoch": self.epoch_rates[0],
            "train_images_per_s_by_epoch": self.epoch_rates,
            "epoch_seconds_by_epoch": self.epoch_seconds,
        }
