"""The LightningModule: cross-entropy classification, validation top-1/top-5 accuracy (torchmetrics)
and a running training top-1.

Optional: label smoothing, channels_last inputs, an exponential moving average (EMA) of the weights
evaluated beside the raw weights. The optimiser and its parameter groups come from ``attn_zoo.optim``.
A non-finite training loss stops the run and is recorded as divergence, with the exact step.

Per-step work is kept free of host-device synchronisation, since a sync per step serialises the
CPU's kernel launches with the GPU's work (the step then costs their sum, not their maximum), and
to a few kernels, since at small batches launching them is what bounds the step.
"""
from __future__ import annotations

import math
from typing import Any, Callable

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torchmetrics.aggregation import MeanMetric
from torchmetrics.classification import MulticlassAccuracy

from attn_zoo.checkpoints import epoch_cut_short


def accuracy(num_classes: int, top_k: int) -> MulticlassAccuracy:
    """Top-k accuracy over all samples. Its argument checks are off: they call ``torch.unique``, a
    host-device sync per batch (labels come from the dataset and logits from the model, both sound)."""
    return MulticlassAccuracy(num_classes, top_k=top_k, average="micro", validate_args=False)


class WeightEMA(AveragedModel):
    """An exponential moving average of a model's parameters and buffers, as ``AveragedModel`` with
    ``get_ema_multi_avg_fn(decay)`` and ``use_buffers=True`` computes it (same state, same numbers),
    but whose update never waits for the device: ``AveragedModel`` tests its device-side counter on
    the host twice per update. Whether the average has started is read once, at the first update
    (after a checkpoint restore it has), and kept on the host."""

    def __init__(self, model: nn.Module, decay: float):
        super().__init__(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)
        # the average is no parameter to train: DDP would wait for gradients it never gets
        self.requires_grad_(False)
        self._started: bool | None = None

    @torch.no_grad()
    def update_parameters(self, model: nn.Module) -> None:
        if self._started is None:
            self._started = bool(self.n_averaged > 0)
        averaged = [*self.module.parameters(), *self.module.buffers()]
        current = [tensor.detach() for tensor in (*model.parameters(), *model.buffers())]
        if not self._started:
            for average, tensor in zip(averaged, current, strict=True):
                average.detach().copy_(tensor)
        else:
            groups: dict[tuple[torch.device, torch.dtype], tuple[list, list]] = {}
            for average, tensor in zip(averaged, current, strict=True):
                pair = groups.setdefault((average.device, average.dtype), ([], []))
                pair[0].append(average.detach())
                pair[1].append(tensor.to(average.device))
            for average_group, tensor_group in groups.values():
                self.multi_avg_fn(average_group, tensor_group, self.n_averaged)
        self.n_averaged += 1
        self._started = True


class Classifier(L.LightningModule):
    """Trains ``model``; ``optimizer`` takes the model (``attn_zoo.optim.OptimizerFactory``), ``scheduler``
    an optimizer and step counts."""

    def __init__(
        self,
        model: nn.Module,
        num_classes: int,
        optimizer: Callable[[nn.Module], torch.optim.Optimizer],
        scheduler: Callable[..., torch.optim.lr_scheduler.LRScheduler] | None = None,
        *,
        label_smoothing: float = 0.0,
        channels_last: bool = False,
        ema_decay: float | None = None,
        finite_check_every: int | None = None,
        compile: bool = False,
        compile_mode: str | None = None,
    ):
        super().__init__()
        self.model = model
        # compiled outside the module tree, so checkpoints keep the plain `model.*` keys either way;
        # static shapes: a short last batch gets its own graph instead of turning every graph dynamic
        compiled = torch.compile(model, mode=compile_mode, dynamic=False) if compile else model
        object.__setattr__(self, "_run_model", compiled)
        self.compiled = compile
        self.make_optimizer = optimizer
        self.make_scheduler = scheduler
        self.label_smoothing = label_smoothing
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.ema = (
            WeightEMA(model, ema_decay)
            if ema_decay
            else None
        )
        top5 = min(5, num_classes)
        self.val_top1, self.val_top5 = accuracy(num_classes, 1), accuracy(num_classes, top5)
        # the mean over every validation image, also under DDP (a logged mean per rank, averaged, weighs
        # a rank's 50 images like another's 51)
        # a NaN image's loss makes the mean NaN (recorded as no loss): torchmetrics' default drops it with a
        # warning, and checks every batch for it (a host-device sync)
        self.val_loss = MeanMetric(nan_strategy="disable")
        if self.ema is not None:
            self.ema_top1, self.ema_top5 = accuracy(num_classes, 1), accuracy(num_classes, top5)
        self.history: list[dict[str, float]] = []
        self.diverged_at_step: int | None = None
        # None: every step on CPU (a check is free there), every 25 steps on an accelerator
        self.finite_check_every = finite_check_every
        self._recent_losses: torch.Tensor | None = None  # slot step % interval: that step's loss
        self._last_checked_step = -1
        self._last_recorded_step = -1
        self._train_correct: torch.Tensor | None = None
        self._train_seen = 0
        self._val_seen = 0  # images scored in this validation epoch, on this process

    def __setattr__(self, name: str, value: Any) -> None:
        # Lightning sets this plain string around every hook, ~40 times per step; nn.Module's
        # __setattr__ (parameter, buffer and submodule bookkeeping) is needless host time for it
        if name == "_current_fx_name":
            object.__setattr__(self, name, value)
        else:
            super().__setattr__(name, value)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.compiled:
            # under CUDA graphs (reduce-overhead) each call is a new step: the previous step's
            # outputs may be overwritten, which is safe because they are consumed by then
            torch.compiler.cudagraph_mark_step_begin()
        return self._run_model(images.contiguous(memory_format=self.memory_format))

    def training_step(self, batch, batch_index):
        images, labels = batch
        logits = self(images)
        loss = F.cross_entropy(logits, labels, label_smoothing=self.label_smoothing)
        self._record_loss(loss)
        if self._check_due() and self._diverged():
            # no optimiser step with a non-finite loss: alone, no backward either; under DDP every rank
            # must return a loss (Lightning raises on None), and on_before_optimizer_step drops its gradients
            return None if self.trainer.world_size == 1 else loss
        self._count_correct(logits, labels)
        every = self.trainer.log_every_n_steps
        if every and (self.global_step + 1) % every == 0:
            # the steps where Lightning writes step metrics: a value logged at another step waited
            # for the next write and went out under that step's number. Not on the progress bar:
            # Lightning turns a progress-bar value into a Python number after every step, which waits
            # for the device each step
            self.log("train/loss", loss)
        return loss

    def _count_correct(self, logits: torch.Tensor, labels: torch.Tensor) -> None:
        """Training top-1 as a device-side count: 4 kernels a step where torchmetrics' update takes 14
        (the training step at small batches is bound by the host's kernel launches). The validation
        metrics stay torchmetrics."""
        self._train_correct += (logits.detach().argmax(dim=1) == labels).sum()
        self._train_seen += len(labels)

    def on_train_epoch_end(self) -> None:
        self._diverged()
        if self._train_seen:
            # ranks hold equal shards, so the mean over ranks is the top-1 over all samples
            self.log("train/top1", self._train_correct / self._train_seen, sync_dist=True)
            self._train_correct.zero_()
            self._train_seen = 0

    def on_train_start(self) -> None:
        # the per-step buffers, made once on the training device rather than checked every step
        interval = self.finite_check_every or (1 if self.device.type == "cpu" else 25)
        self._recent_losses = torch.zeros(interval, device=self.device)
        self._train_correct = torch.zeros((), dtype=torch.long, device=self.device)
        if getattr(self, "_restored_counts", None):
            self._train_correct += self._restored_counts[0]
            self._train_seen = self._restored_counts[1]
            self._restored_counts = None

    def _record_loss(self, loss: torch.Tensor) -> None:
        """Keep the loss of each step since the last check on the device (one kernel, no sync). Under
        gradient accumulation the step's micro-batches add up: a non-finite one makes the sum so."""
        slot = self.global_step % len(self._recent_losses)
        if self.global_step == self._last_recorded_step:
            self._recent_losses[slot] += loss.detach()
        else:
            self._recent_losses[slot] = loss.detach()
        self._last_recorded_step = self.global_step

    def on_before_optimizer_step(self, optimizer) -> None:
        if self.diverged_at_step is not None:  # the step of a non-finite loss under DDP changes nothing
            optimizer.zero_grad(set_to_none=True)

    def _check_due(self) -> bool:
        return self.global_step % len(self._recent_losses) == 0  # the buffer spans one interval

    def _diverged(self) -> bool:
        """Sync once: stop the run at the first non-finite loss since the last check."""
        if self.diverged_at_step is not None or self._recent_losses is None:
            return self.diverged_at_step is not None
        recent = self._recent_losses
        if self.trainer.world_size > 1:
            # every rank stops at the same step: one that stopped alone left the others waiting in
            # their next all-reduce. A non-finite loss on any rank makes the sum non-finite
            recent = self.trainer.strategy.reduce(recent.clone(), reduce_op="sum")
        losses, interval, last = recent.tolist(), len(self._recent_losses), self._last_recorded_step
        steps = range(max(self._last_checked_step + 1, last - interval + 1), last + 1)
        # the step under way again at its next micro-batch's check: under accumulation each adds to its loss
        self._last_checked_step = last - 1
        bad = [step for step in steps if not math.isfinite(losses[step % interval])]
        if not bad:
            return False
        self.diverged_at_step = bad[0]
        self.trainer.should_stop = True
        # Lightning validates a run that stops early; this one's weights or BatchNorm statistics may
        # hold NaN, so its result is the last epoch that ended finite
        self.trainer.limit_val_batches = 0
        return True

    def optimizer_step(self, *args, **kwargs) -> None:
        """The optimiser step, then the EMA update: inside the step, so a checkpoint saved at the
        batch's end (Ctrl-C/SIGTERM, before this module's own batch-end hook runs) holds it."""
        super().optimizer_step(*args, **kwargs)
        if self.ema is not None:
            self.ema.update_parameters(self.model)

    def on_validation_epoch_start(self) -> None:
        self._val_seen = 0

    def validation_step(self, batch, batch_index):
        images, labels = batch
        logits = self(images)
        self._val_seen += len(labels)
        self.val_top1(logits, labels)
        self.val_top5(logits, labels)
        self.val_loss.update(F.cross_entropy(logits, labels, reduction="none"))  # no per-batch value needed
        self.log("val/loss", self.val_loss, on_epoch=True)
        self.log("val/top1", self.val_top1, on_epoch=True, prog_bar=True)
        self.log("val/top5", self.val_top5, on_epoch=True)
        if self.ema is not None:
            ema_logits = self.ema(images.contiguous(memory_format=self.memory_format))
            self.ema_top1(ema_logits, labels)
            self.ema_top5(ema_logits, labels)
            self.log("val/ema_top1", self.ema_top1, on_epoch=True)
            self.log("val/ema_top5", self.ema_top5, on_epoch=True)

    def on_validation_start(self) -> None:
        if not self.trainer.sanity_checking:
            self._diverged()  # between two checks (every 25 steps on a GPU) the epoch's end may lie

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking or self.diverged_at_step is not None:
            return
        metrics = self.trainer.callback_metrics
        row = {"epoch": self.current_epoch, "step": self.global_step, "val_images": self._val_images()}
        if epoch_cut_short(self.trainer):  # validated at a stop inside the epoch: no checkpoint holds these weights
            row["partial_epoch"] = True
        for key in ("top1", "top5", "ema_top1", "ema_top5"):
            if f"val/{key}" in metrics:
                row[key] = float(metrics[f"val/{key}"]) * 100
        loss = float(metrics["val/loss"])
        row["loss"] = loss if math.isfinite(loss) else None  # results.json stays strict JSON
        self.history.append(row)

    def _val_images(self) -> int:
        """Images scored in this validation epoch on all processes: fewer than the validation set under
        ``trainer.limit_val_batches``, where ``data.eval_batch_size`` decides how many (one sync an epoch)."""
        if self.trainer.world_size == 1:
            return self._val_seen
        seen = torch.tensor(self._val_seen, device=self.device)
        return int(self.trainer.strategy.reduce(seen, reduce_op="sum"))

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["attn_zoo_history"] = self.history
        # a mid-epoch checkpoint carries the epoch's training top-1 so far (one sync per checkpoint)
        correct = int(self._train_correct) if self._train_correct is not None else 0
        checkpoint["attn_zoo_train_counts"] = [correct, self._train_seen]

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.history = list(checkpoint.get("attn_zoo_history", []))
        self._restored_counts = checkpoint.get("attn_zoo_train_counts")

    def _optimizer_steps_per_epoch(self) -> int | None:
        """The optimiser steps of one epoch (a warm-up's unit), whatever ``max_steps`` cuts the run to;
        None for a loader without a length."""
        batches = self.trainer.num_training_batches
        if not math.isfinite(batches):
            return None
        return max(1, math.ceil(batches / self.trainer.accumulate_grad_batches))

    def configure_optimizers(self):
        optimizer = self.make_optimizer(self.model)
        if self.make_scheduler is None:
            return optimizer
        total_steps = int(self.trainer.estimated_stepping_batches)  # sets num_training_batches too
        steps_per_epoch = (self._optimizer_steps_per_epoch()
                           or max(1, total_steps // max(1, self.trainer.max_epochs or 1)))
        scheduler = self.make_scheduler(optimizer, total_steps=total_steps, steps_per_epoch=steps_per_epoch)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
