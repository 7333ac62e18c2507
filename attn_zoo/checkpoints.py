"""Checkpoints that a rerun can always resume from.

``checkpoints/last.ckpt`` is the newest state: written after every validation (each epoch end)
and on SIGINT/SIGTERM, never skipped because top-1 did not improve. Every checkpoint is written to a
temporary file in its own folder, flushed to disk and renamed over the old one, so a crash or a
full disk leaves the previous file whole; the last.ckpt it replaces is kept as ``previous.ckpt``.
``best.ckpt`` (highest validation top-1) is written the same way.

On resume, ``choose`` takes the newest candidate that loads (``weights_only=True``), matches the
model and holds only finite numbers, and says why it skipped any other.
"""
from __future__ import annotations

import logging
import os
import shutil
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator
from weakref import proxy

import lightning as L
import torch
from lightning.pytorch.callbacks import Checkpoint, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger

from attn_zoo.config_check import ConfigError
from attn_zoo.results import RUN_RECORD

log = logging.getLogger(__name__)

LAST, PREVIOUS, BEST = "last.ckpt", "previous.ckpt", "best.ckpt"
CSV_ROWS = "attn_zoo_metrics_csv_rows"
MODEL_RECORD = "attn_zoo_model"
CSV_PENDING = "attn_zoo_metrics_csv_pending_row"
# training metrics the module logs in its epoch-end hook (attn_zoo.lit.Classifier.on_train_epoch_end)
EPOCH_END_METRICS = ("train/top1",)


def _fsync(path: Path) -> None:
    handle = os.open(path, os.O_RDONLY)
    try:
        os.fsync(handle)
    finally:
        os.close(handle)


def save_atomic(trainer: L.Trainer, path: Path, keep_previous: bool = False, weights_only: bool = False) -> None:
    """``trainer.save_checkpoint`` into a temporary file beside ``path``, flushed, then renamed over
    it (after moving the old file to ``previous.ckpt`` if ``keep_previous``). All ranks call it."""
    path = Path(path)
    temporary = path.with_name(f".{path.name}.tmp")
    try:
        trainer.save_checkpoint(temporary, weights_only=weights_only)
        if trainer.is_global_zero:
            _fsync(temporary)
    except BaseException:
        temporary.unlink(missing_ok=True)  # a full disk: free the partial file, keep the old checkpoint
        raise
    if not trainer.is_global_zero:
        return
    # a whole old file becomes previous.ckpt; a truncated one (torch's format is a zip archive, whose
    # directory is written last) must not replace a good previous.ckpt
    if keep_previous and path.is_file() and zipfile.is_zipfile(path):
        os.replace(path, path.with_name(PREVIOUS))
    os.replace(temporary, path)
    _fsync(path.parent)


def epoch_cut_short(trainer: L.Trainer) -> bool:
    """Whether the epoch ends early because training stops (``trainer.max_time`` ran out). Lightning
    counts such an epoch as trained, so a checkpoint taken in it resumes the rest of it as the next
    epoch and the run ends an epoch short; none is written there. ``should_stop`` is the same on every
    rank (the Timer broadcasts it), so DDP ranks agree. A stop at ``trainer.max_steps`` is no cut: it
    is the run's planned end (``max_steps`` cannot change on resume), and its checkpoints hold the
    network results.json reports."""
    at_max_steps = 0 < trainer.max_steps <= trainer.global_step
    return (trainer.should_stop and not at_max_steps
            and trainer.fit_loop.epoch_loop.batch_progress.current.ready < trainer.num_training_batches)


def _no_candidate(trainer: L.Trainer) -> bool:
    """A validation no checkpoint may hold: its top-1 was measured on non-finite weights or statistics,
    or after part of an epoch."""
    return getattr(trainer.lightning_module, "diverged_at_step", None) is not None or epoch_cut_short(trainer)


class AtomicModelCheckpoint(ModelCheckpoint):
    """Lightning's top-k checkpoint (here ``best.ckpt``), written through ``save_atomic``; never after
    the run diverged, nor in an epoch cut short (a resume candidate: it would be the newest)."""

    def _save_topk_checkpoint(self, trainer: L.Trainer, monitor_candidates: dict) -> None:
        if _no_candidate(trainer):  # before Lightning takes its score as the best (log_model's "best" metadata)
            return
        super()._save_topk_checkpoint(trainer, monitor_candidates)

    def _save_checkpoint(self, trainer: L.Trainer, filepath: str) -> None:
        if _no_candidate(trainer):
            return
        save_atomic(trainer, Path(filepath), weights_only=self.save_weights_only)
        self._last_global_step_saved = trainer.global_step
        self._last_checkpoint_saved = filepath
        if trainer.is_global_zero:  # as Lightning's own save: WandbLogger uploads only what it hears of (log_model)
            for logger in trainer.loggers:
                logger.after_save_checkpoint(proxy(self))

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """A run resumed in a moved folder, or by ``resume=`` into a new one, keeps its best score so
        far, its paths mapped into this folder. Lightning keeps them only in the same folder: the first
        validation after such a resume wrote best.ckpt whatever its top-1, so the file could hold
        another epoch than results.json's ``best_epoch``. A best.ckpt the new folder lacks is copied
        in from the run's folder at the start of training (``resume=`` into a new folder)."""
        self._inherited: dict[str, str] = {}
        old = state_dict.get("dirpath")
        if old and self.dirpath and old != self.dirpath:
            def here(path):
                return os.path.join(self.dirpath, os.path.relpath(path, old)) if path else path

            best = dict(state_dict.get("best_k_models") or {})
            self._inherited = {here(path): path for path in best}
            state_dict = {
                **state_dict, "dirpath": self.dirpath, "best_k_models": {here(path): score for path, score in best.items()},
                **{key: here(state_dict.get(key)) for key in ("best_model_path", "kth_best_model_path", "last_model_path")},
            }
        super().load_state_dict(state_dict)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        if not trainer.is_global_zero:
            return
        for here, there in getattr(self, "_inherited", {}).items():
            if not os.path.exists(here) and os.path.isfile(there):
                os.makedirs(os.path.dirname(here), exist_ok=True)
                shutil.copyfile(there, here + ".partial")
                os.replace(here + ".partial", here)


class LastCheckpoint(Checkpoint):
    """``last.ckpt`` at every epoch end, whatever its top-1 (Lightning's ``save_last`` beside a
    monitored top-k rewrites it only on improvement). A ``Checkpoint``, so Lightning runs it after the
    module's own epoch-end hook and after the best-checkpoint callback, whose updated state it then
    carries: the point where Lightning's ModelCheckpoint saves and from which it resumes exactly.
    After divergence it keeps the last finite state rather than saving the non-finite one, and after
    an epoch cut short (``epoch_cut_short``) the last whole epoch's: a resume from the cut ran the rest
    of that epoch as the next one and ended a whole epoch short, recorded as completed."""

    def __init__(self, folder: Path):
        self.path = Path(folder) / LAST

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if getattr(pl_module, "diverged_at_step", None) is None and not epoch_cut_short(trainer):
            save_atomic(trainer, self.path, keep_previous=True)


class MetricsLogOffset(L.Callback):
    """Each checkpoint records how many rows ``csv/metrics.csv`` held when it was saved (after
    flushing the CSV logger), so a resumed run cuts the log back to that point and appends to it: the
    rows of the lost work are logged again once, as an uninterrupted run logs them. Rows, not bytes:
    the logger rewrites the whole file with a wider header when a new metric appears.

    An epoch-end checkpoint is saved before Lightning hands the epoch's training metrics
    (``EPOCH_END_METRICS``) to the loggers, and a resumed run does not log them again: the checkpoint
    carries that row, and the resumed run logs it first.
    """

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        if not trainer.is_global_zero:  # rank 0 writes the log and the checkpoint
            return
        rows = {}
        for logger in trainer.loggers:
            if isinstance(logger, CSVLogger):
                logger.save()
                metrics = Path(logger.experiment.metrics_file_path)
                rows[logger.name] = max(0, len(metrics.read_text(encoding="utf-8").splitlines()) - 1) if metrics.is_file() else 0
        checkpoint[CSV_ROWS] = rows
        progress = trainer.fit_loop.epoch_progress.current
        if progress.processed > progress.completed:  # inside the epoch-end hooks
            pending = {key: float(trainer.callback_metrics[key]) for key in EPOCH_END_METRICS
                       if key in trainer.callback_metrics}
            checkpoint[CSV_PENDING] = [pending | {"epoch": trainer.current_epoch}, trainer.global_step - 1]


def _csv_lines(path: Path) -> list[str]:
    """The lines of ``path`` with their line endings as written (the csv module's CR LF; text mode
    would read them as LF, and the kept rows would end otherwise than the rows appended after them)."""
    if not path.is_file():
        return []
    with path.open(newline="", encoding="utf-8") as file:
        return file.read().splitlines(keepends=True)


def resume_metrics_logs(loggers: list, checkpoint: dict) -> None:
    """Keep each CSV log's header and its rows up to the resumed checkpoint, queue the row it had not
    logged yet, and let the logger append after them (Lightning's CSV writer deletes an existing file
    when it starts)."""
    rows, pending = checkpoint.get(CSV_ROWS), checkpoint.get(CSV_PENDING)
    for logger in loggers:
        if not isinstance(logger, CSVLogger):
            continue
        path = Path(logger.log_dir) / "metrics.csv"
        lines = _csv_lines(path)
        if rows is not None:
            lines = lines[: 1 + rows.get(logger.name, len(lines))]  # by logger name: the folder may have moved
        writer = logger.experiment  # deletes the file
        if lines:
            with path.open("w", newline="", encoding="utf-8") as file:  # untranslated, as read
                file.write("".join(lines))
            writer.metrics_keys = lines[0].strip().split(",")
        if pending and len(pending[0]) > 1:
            writer.log_metrics(*pending)


class ModelRecord(L.Callback):
    """Each checkpoint names the backbone and attention it holds, so a ``resume=`` file from another
    model is refused before any data loads (``named_problem``), not after the data scan; and it
    carries the run's resolved config (secrets redacted, plain values only: it loads with
    ``weights_only=True``) and variant label, so a tool rebuilds the model and its data from the
    checkpoint alone (``analysis/excitation.py``), wherever the file was copied."""

    def __init__(self, record: dict[str, str], run: dict[str, Any] | None = None):
        self.record, self.run = record, run
        self.data_fingerprint: str | None = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        # the data module has listed its images by now, and no checkpoint has been loaded yet
        datamodule = trainer.datamodule
        if getattr(datamodule, "train_set", None) is not None and hasattr(datamodule, "data_record"):
            self.data_fingerprint = datamodule.data_record().get("data_fingerprint")

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        checkpoint[MODEL_RECORD] = self.record
        if self.run is not None:
            checkpoint[RUN_RECORD] = {**self.run, "data_fingerprint": self.data_fingerprint,
                                      "world_size": trainer.world_size}

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        """A run resumes on the data it trained on: ``data.root`` and ``data.archive`` may change on
        resume (they say where the data lie), so the checkpoint's ``data_fingerprint`` says which data
        they were. Another data set under the same class names trained on silently, and the mixed
        run's results.json showed the second data set's fingerprint alone."""
        run = checkpoint.get(RUN_RECORD) or {}
        recorded = run.get("data_fingerprint")
        if recorded and self.data_fingerprint and recorded != self.data_fingerprint:
            raise ConfigError(
                f"the checkpoint was trained on other data (data_fingerprint {recorded}; the data now: "
                f"{self.data_fingerprint}); resume with the data it trained on, or start a new run"
            )
        _same_world_size(run.get("world_size"), trainer.world_size)


def _same_world_size(recorded: Any, now: int) -> None:
    """``data.batch_size`` is per process: under DDP with another number of processes (``trainer.devices=-1``
    on a machine with other GPUs visible: the config is the same) the global batch, the steps an epoch
    and the LR schedule's length would change mid-run."""
    if isinstance(recorded, int) and recorded != now:
        raise ConfigError(
            f"the checkpoint was trained by {recorded} process(es) (DDP world size), this run has {now}: the global "
            f"batch and the schedule's steps would change mid-run; resume where trainer.devices x trainer.num_nodes "
            f"come to {recorded} (with trainer.devices=-1: CUDA_VISIBLE_DEVICES naming that many GPUs), or start a new run"
        )


def named_problem(candidate: "Candidate", record: dict[str, str]) -> str | None:
    """Why ``candidate`` cannot resume a run of the model ``record`` names, from what it says alone."""
    if candidate.problem:
        return candidate.problem
    saved = candidate.checkpoint.get(MODEL_RECORD)
    if isinstance(saved, dict) and saved != record:
        return (f"holds another model ({saved.get('backbone')} + {saved.get('attention')}; "
                f"this run: {record['backbone']} + {record['attention']})")
    return None


# ---------------------------------------------------------------- choosing the checkpoint to resume


@dataclass
class Candidate:
    path: Path
    checkpoint: dict[str, Any] | None = None
    problem: str | None = None

    @property
    def step(self) -> int:
        return int((self.checkpoint or {}).get("global_step", -1))


def load(path: Path) -> Candidate:
    """Load ``path`` on the CPU (``weights_only=True``); a file that does not load is a candidate
    with its ``problem`` (truncated, not a checkpoint) rather than an exception."""
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001  (any unreadable file is skipped with its reason)
        return Candidate(path, problem=f"does not load ({' '.join(str(error).split())[:160]})")
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        return Candidate(path, problem="is not a Lightning checkpoint (no state_dict)")
    return Candidate(path, checkpoint)


def _tensors(node: Any) -> Iterator[torch.Tensor]:
    if isinstance(node, torch.Tensor):
        yield node
    elif isinstance(node, dict):
        for value in node.values():
            yield from _tensors(value)
    elif isinstance(node, (list, tuple)):
        for value in node:
            yield from _tensors(value)


def problem_with(candidate: Candidate, model: torch.nn.Module) -> str | None:
    """Why ``candidate`` cannot resume ``model``: unreadable, another model, non-finite numbers."""
    if candidate.problem:
        return candidate.problem
    saved = {key[len("model."):]: value for key, value in candidate.checkpoint["state_dict"].items()
             if key.startswith("model.")}
    expected = model.state_dict()
    missing, extra = sorted(expected.keys() - saved.keys()), sorted(saved.keys() - expected.keys())
    reshaped = sorted(key for key in expected.keys() & saved.keys() if expected[key].shape != saved[key].shape)
    if missing or extra or reshaped:
        first = (missing or extra or reshaped)[0]
        return (f"holds another model ({len(missing)} missing, {len(extra)} unexpected, "
                f"{len(reshaped)} reshaped tensors, e.g. {first})")
    state = [candidate.checkpoint["state_dict"], candidate.checkpoint.get("optimizer_states")]
    bad = sum(1 for tensor in _tensors(state) if tensor.is_floating_point() and not torch.isfinite(tensor).all())
    return f"holds non-finite numbers in {bad} tensors (the run diverged)" if bad else None


def own_candidates(folder: Path) -> list[Path]:
    """The run folder's checkpoints, newest first by construction: last, previous, best."""
    return [folder / name for name in (LAST, PREVIOUS, BEST) if (folder / name).is_file()]


def choose(candidates: list[Candidate], model: torch.nn.Module) -> tuple[Candidate | None, list[str]]:
    """The newest usable candidate (highest global step; on a tie the earlier one in the list) and
    one line per skipped file with its reason."""
    usable, skipped = [], []
    for candidate in candidates:
        problem = problem_with(candidate, model)
        if problem:
            skipped.append(f"{candidate.path} {problem}")
        else:
            usable.append(candidate)
    best = max(usable, key=lambda c: (c.step, -usable.index(c)), default=None)
    return best, skipped
