"""Lightning callbacks of a training run."""
from __future__ import annotations

import random
import signal
import threading
import time
import warnings
from pathlib import Path
from typing import Any, Callable

import lightning as L
from lightning.pytorch.utilities.warnings import PossibleUserWarning
import numpy as np
import torch

from attn_zoo import step_profile
from attn_zoo.config_check import ConfigError
from attn_zoo.throughput import synchronize


def no_training_batch(images: int, batch_size: int) -> ConfigError:
    return ConfigError(
        f"no training batch: {images} training images in batches of data.batch_size={batch_size} "
        f"with the last partial batch dropped; lower data.batch_size", every_rank=True,
    )


class TrainingDataCheck(L.Callback):
    """A training set smaller than one batch (per process; the partial batch is dropped) is a config
    error once the data module has listed its images, before a checkpoint is restored, a sanity check
    runs or a step is taken: Lightning itself would validate and then end ``fit`` quietly."""

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        images = len(getattr(trainer.datamodule, "train_set", None) or ())
        if stage == "fit" and images and -(-images // trainer.world_size) < trainer.datamodule.batch_size:
            raise no_training_batch(images, trainer.datamodule.batch_size)


class ValidateAtMaxSteps(L.Callback):
    """``trainer.max_steps`` that ends a run inside an epoch: stop there, so Lightning validates the
    network the steps trained (it validates only at an epoch's end, or at a requested stop); results.json's
    ``top1`` was the last epoch end's otherwise. With ``max_steps`` set the config check lets
    ``trainer.check_val_every_n_epoch`` leave epochs out; where ``max_epochs`` ends the run first, its
    last epoch is validated all the same."""

    def on_train_epoch_start(self, trainer: L.Trainer, *args) -> None:
        if trainer.max_epochs is not None and trainer.current_epoch == trainer.max_epochs - 1:
            self._validate_this_epoch(trainer)

    def on_train_batch_end(self, trainer: L.Trainer, *args) -> None:
        if 0 < trainer.max_steps <= trainer.global_step:
            trainer.should_stop = True
            self._validate_this_epoch(trainer)  # also an epoch check_val_every_n_epoch skips: the run ends here

    @staticmethod
    def _validate_this_epoch(trainer: L.Trainer) -> None:
        # None validates every val_check_interval steps across epochs, the stop included: left as it is
        if trainer.check_val_every_n_epoch is not None:
            trainer.check_val_every_n_epoch = 1


class RandomStateCheckpoint(L.Callback):
    """Save the random generators' states in each checkpoint and restore them on resume.

    Lightning restores weights, optimiser, scheduler and loop counters but not the generators, so
    a resumed run would shuffle and augment differently from an uninterrupted one. The states are
    applied on restore and again at the end of the sanity-check validation (which draws from the
    generator too) and before the training data iterator is made, the point where the saving run
    stood; without a sanity check they are already in place from the restore.
    Stored as tensors and lists so the checkpoint loads with ``weights_only=True``.
    """

    def __init__(self):
        self.pending: dict[str, Any] | None = None

    def state_dict(self) -> dict[str, Any]:
        version, numpy_keys, position, has_gauss, cached = np.random.get_state()
        python_version, python_state, python_gauss = random.getstate()
        state = {
            "torch": torch.get_rng_state(),
            "numpy": [version, torch.from_numpy(numpy_keys.astype(np.int64)), position, has_gauss, cached],
            "python": [python_version, list(python_state), python_gauss],
        }
        if torch.cuda.is_available():  # this process's GPU only: a resume may see fewer GPUs (one state per
            # visible device failed there), and DDP ranks, seeded alike, draw alike on their own devices
            state["cuda"] = [torch.cuda.get_rng_state()]
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.pending = state_dict
        self._apply(state_dict)

    def on_sanity_check_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.pending is not None:
            self._apply(self.pending)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.pending = None

    @staticmethod
    def _apply(state: dict[str, Any]) -> None:
        torch.set_rng_state(state["torch"])
        version, keys, position, has_gauss, cached = state["numpy"]
        np.random.set_state((version, keys.numpy().astype(np.uint32), position, has_gauss, cached))
        python_version, python_state, python_gauss = state["python"]
        random.setstate((python_version, tuple(python_state), python_gauss))
        if state.get("cuda") and torch.cuda.is_available():  # older checkpoints list every device: device 0 first
            torch.cuda.set_rng_state(state["cuda"][0])


class LoaderPosition(L.Callback):
    """Save where the training loader stood (its epoch seed, the samples drawn) and the random state,
    and on a mid-epoch resume continue the same order after those samples, from that random state.

    Lightning resumes mid-epoch by counting the batches done but draws the rest of the epoch from a
    new shuffle; with the datamodule's ``ResumableRandomSampler`` (``train_sampler``) the order is
    the interrupted one. The position is handed to the sampler when the checkpoint loads, before the
    loader's iterator exists: worker processes take their first indices as that iterator is made.
    Augmentation is seeded per sample (``SeededSamples``), so workers draw the same crops as before.
    The random state is applied again once the resumed loader's iterator exists (for a loader whose
    iterator draws from the global generator; the host DataLoader draws from its own,
    ``shards.worker_seed_generator``). Only a checkpoint inside an epoch holds a position; one at an
    epoch's end (``limit_train_batches`` included) resumes with a new epoch.

    Under DDP each rank takes every ``world_size``-th sample of its own copy of the epoch order, drawn
    from its own (alike seeded) generator: a rank that drew another order would train on samples
    another rank also trains on, silently. At each epoch's first batch the ranks compare their epoch
    seeds (one all-reduce an epoch) and the run stops with an error if they differ.
    """

    KEY = "attn_zoo_loader_position"

    def __init__(self):
        self.pending: dict[str, Any] | None = None
        self._compared_epoch: int | None = None

    @staticmethod
    def _sampler(trainer: L.Trainer):
        from attn_zoo.data.resumable import ResumableRandomSampler

        sampler = getattr(trainer.datamodule, "train_sampler", None)
        return sampler if isinstance(sampler, ResumableRandomSampler) else None

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        sampler, loader = self._sampler(trainer), trainer.train_dataloader
        batches = trainer.fit_loop.epoch_loop.batch_progress.current.ready
        if sampler is not None and sampler.seed is not None and 0 < batches < trainer.num_training_batches:
            checkpoint[self.KEY] = {"seed": sampler.seed, "samples": batches * loader.batch_size,
                                    "random": RandomStateCheckpoint().state_dict()}

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        self.pending = checkpoint.get(self.KEY)
        if self.pending is not None and "samples" not in self.pending:  # an older format, saved at epoch ends too
            self.pending = None
        sampler = self._sampler(trainer)
        if self.pending is not None and sampler is not None:
            sampler.resume_at(self.pending["seed"], self.pending["samples"])  # under DDP: each rank's share
            # Lightning only knows loaders with a state_dict and would call this resume "unreliable"
            warnings.filterwarnings("ignore", "You're resuming from a checkpoint that ended before the epoch",
                                    PossibleUserWarning)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        pending, self.pending = self.pending, None
        if pending is not None and self._sampler(trainer) is not None:
            RandomStateCheckpoint._apply(pending["random"])

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_index) -> None:
        if trainer.world_size == 1 or self._compared_epoch == trainer.current_epoch:
            return
        sampler = self._sampler(trainer)
        if sampler is None or sampler.seed is None:
            return
        self._compared_epoch = trainer.current_epoch
        # the largest seed and the largest negated one: max and min in one all-reduce
        seeds = torch.tensor([sampler.seed, -sampler.seed], dtype=torch.int64, device=trainer.strategy.root_device)
        torch.distributed.all_reduce(seeds, op=torch.distributed.ReduceOp.MAX)
        largest, smallest = int(seeds[0]), -int(seeds[1])
        if largest != smallest:
            raise RuntimeError(
                f"DDP ranks drew different epoch orders in epoch {trainer.current_epoch} (seeds {smallest} to "
                f"{largest}): their shares would overlap; something drew from torch's CPU generator on some "
                "ranks only before the epoch began"
            )


class RunInterrupted(KeyboardInterrupt):
    """A run stopped by SIGINT or SIGTERM; its results.json says ``interrupted``.

    A KeyboardInterrupt, so it stops a Hydra sweep instead of moving on to the next job. ``rerun`` says
    how to run again into the same folder (``run.py`` names the folder where the command did not).
    """

    def __init__(self, signum: int, checkpoint: str | None = None, saved_now: bool = True,
                 then: Callable[[int, Any], None] | None = None, shared: bool = False):
        super().__init__(signum, checkpoint)
        self.signum, self.checkpoint, self.saved_now = signum, checkpoint, saved_now
        # every DDP rank stopped after the same batch (GracefulStop's all-reduce): the other ranks end too,
        # and rank 0 alone needs to report it
        self.shared = shared
        self.rerun = "rerun the same command"
        self.then = then  # the signal's own handler, called once the run has saved and recorded its stop

    def __str__(self) -> str:
        name = signal.Signals(self.signum).name
        if self.checkpoint and self.saved_now:
            return f"interrupted by {name}; checkpoint saved to {self.checkpoint}; {self.rerun} to resume"
        if self.checkpoint:  # stopped before the stop could save: an earlier checkpoint is the resume point
            return f"interrupted by {name}; {self.rerun} to resume from {self.checkpoint} (saved earlier)"
        return f"interrupted by {name}; {self.rerun} to start again"


class _StopRequested(Exception):
    """Raised from a batch end or an epoch start, after the checkpoint is saved, to leave ``trainer.fit`` at once."""


class GracefulStop(L.Callback):
    """On SIGINT or SIGTERM, finish the current training batch, save ``checkpoint`` and stop.

    In an epoch's last batch the stop waits for the epoch's end: its validation runs and last.ckpt is
    written at the epoch end as usual, and the run stops as the next epoch starts (a checkpoint taken
    between the last batch and the validation would resume past that validation, and the epoch would
    have no row in the history). In the run's last epoch the run then simply completes. Likewise a
    batch after which a mid-epoch validation runs (``val_check_interval`` < 1) stops one batch later,
    once (with a validation after every batch the stop saves after the next one, before its own).
    Under gradient accumulation it stops after the optimiser step that ends the accumulation: the
    accumulated gradients are not part of a checkpoint.

    The handlers are installed when training starts (after Lightning's own) and restored when it
    ends. A second SIGINT interrupts at once, as usual. Under DDP a signal often reaches one process
    only, and every rank must save and stop after the same batch (saving is collective): at each
    batch end the ranks take the largest signal any of them received (one all-reduce of one number;
    Lightning's own handling raised on each rank's own flag, at different batches, and hung).

    SIGUSR1/SIGUSR2 are taken only from submitit's handler, where it is installed for them (under
    hydra-submitit-launcher: SLURM sends SIGUSR2 before the time limit and submitit requeues the job and
    exits at once, losing the epoch since its end): the stop saves as for SIGTERM, and that handler
    (``requeue_handler``) is called afterwards, by ``run.py``, once results.json records the stop.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)
    HANDED_OVER = (signal.SIGUSR1, signal.SIGUSR2)

    def __init__(self, checkpoint: Path | None):
        self.checkpoint = checkpoint
        self.received: int | None = None
        self._previous: dict[int, Any] = {}
        self._handed_over: dict[int, Callable[[int, Any], None]] = {}
        self._requeue: Callable[[int, Any], None] | None = None  # kept when a SIGTERM follows
        self._stop_at_next_epoch = False
        self._deferred = False
        self._before_fit: dict[int, Any] = {}

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # the handlers from before Lightning installs its own (after this hook; its teardown restores them
        # before the callbacks' teardown): what the stop puts back, not Lightning's, found at on_train_start
        if threading.current_thread() is threading.main_thread():
            self._before_fit = {signum: signal.getsignal(signum) for signum in (*self.SIGNALS, *self.HANDED_OVER)}

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for signum in self.SIGNALS:
            self._previous[signum] = signal.signal(signum, self._request_stop)
        for signum in self.HANDED_OVER:
            handler = signal.getsignal(signum)
            # submitit's requeue only: another program's handler (a stack dump) must keep its signal
            if callable(handler) and getattr(handler, "__module__", "").startswith("submitit."):
                self._handed_over[signum] = handler
                self._previous[signum] = signal.signal(signum, self._request_stop)

    def requeue_handler(self) -> Callable[[int, Any], None] | None:
        """The handler a handed-over signal this process received had before training (submitit's
        requeue), to call after the stop; also when a SIGTERM came after it."""
        return self._requeue

    def _request_stop(self, signum: int, frame) -> None:
        if self.received == signal.SIGINT and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: stop now
        self.received = signum
        self._requeue = self._handed_over.get(signum, self._requeue)

    def resume_point(self) -> str | None:
        """The checkpoint a rerun resumes from, if one was written."""
        return str(self.checkpoint) if self.checkpoint is not None and self.checkpoint.is_file() else None

    def _received_by_any_rank(self, trainer: L.Trainer) -> int | None:
        if trainer.world_size == 1:
            return self.received
        flag = torch.tensor([self.received or 0], device=trainer.strategy.root_device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)  # not strategy.reduce: no barrier
        return int(flag.item()) or None

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_index) -> None:
        self.received = self._received_by_any_rank(trainer)
        if self.received is None:
            return
        if batch_index + 1 >= trainer.num_training_batches:
            self._stop_at_next_epoch = True
            return
        diverged = getattr(pl_module, "_diverged", None)
        if diverged is not None and diverged():  # a NaN loss since the last check: diverged, not stopped
            return  # the run ends as diverged runs do (no validation); its weights may hold NaN: no checkpoint
        if (batch_index + 1) % trainer.accumulate_grad_batches:
            return  # between the micro-batches of one step: .grad is not checkpointed; stop after the step
        if not self._deferred and _validation_follows(trainer):
            self._deferred = True  # once: with a validation after every batch the stop would wait for the epoch end
            return  # the next batch end saves, after it
        if self.checkpoint is not None:
            from attn_zoo.checkpoints import save_atomic

            save_atomic(trainer, self.checkpoint, keep_previous=True)
        raise _StopRequested

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._stop_at_next_epoch:
            raise _StopRequested  # the epoch that just ended wrote last.ckpt (checkpoints.LastCheckpoint)

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self._restore_handlers()

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._restore_handlers()

    def _restore_handlers(self) -> None:
        for signum, handler in self._previous.items():
            before = self._before_fit.get(signum)
            signal.signal(signum, before if before is not None else handler)
        self._previous.clear()


def _validation_follows(trainer: L.Trainer) -> bool:
    """Whether Lightning validates right after the training batch that just ended (its own test,
    which reads only the loop's state at this point)."""
    epoch_loop = trainer.fit_loop.epoch_loop
    return not epoch_loop._skip_next_val and epoch_loop._should_check_val_fx(trainer.fit_loop._data_fetcher)


class StepProfiler(L.Callback):
    """torch.profiler over ``steps`` training batches from global step ``start_step`` on; its summary
    (``attn_zoo.step_profile``: wall and device-busy ms per step, operators by device and host time)
    goes to ``path``. Start after the warm-up (compilation, cuDNN autotuning) so the steps are typical. A
    window that reaches the end of an epoch stops there, before validation, with the steps it has.
    """

    def __init__(self, path: Path, steps: int, start_step: int):
        self.path, self.steps, self.start_step = Path(path), steps, start_step
        self._profiler = None
        self._profiled = 0
        self._batch_size = 0
        self._begin = 0.0
        self.first_step: int | None = None
        self.done = False

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_index) -> None:
        if self.done or self._profiler is not None or trainer.global_step < self.start_step:
            return
        synchronize(trainer.strategy.root_device)
        self.first_step, self._batch_size = trainer.global_step, len(batch[1])
        self._profiler = step_profile.profiler(trainer.strategy.root_device)
        self._profiler.__enter__()
        self._begin = time.perf_counter()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_index) -> None:
        if self._profiler is None:
            return
        self._profiled += 1
        if self._profiled >= self.steps:
            self._finish(trainer)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._profiler is not None:
            self._finish(trainer)

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._profiler is not None and not trainer.sanity_checking:
            self._finish(trainer)

    def _finish(self, trainer: L.Trainer) -> None:
        device = trainer.strategy.root_device
        synchronize(device)
        wall = time.perf_counter() - self._begin
        self._profiler.__exit__(None, None, None)
        text = step_profile.summary(self._profiler, device, self._profiled, self._batch_size, wall)
        if trainer.is_global_zero:
            step_profile.write_summary(self.path, text)
        self._profiler, self.done = None, True
