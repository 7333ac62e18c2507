"""A run folder's life: who may write it, which config it belongs to, which checkpoint resumes it.

A folder holds one config and one history (DESIGN.md, "Rules of trust"):

- ``claimed(folder)``: an exclusive ``fcntl.flock`` on ``<folder>/.lock``, taken before anything is
  written. The kernel drops it when the process dies (SIGKILL, OOM, power loss), so a stale claim
  cannot outlive its run and a reused pid means nothing.
- ``check_rerun``: a rerun into a folder that holds a checkpoint must have the same resolved config,
  except the keys of ``RESUMABLE_KEYS``; a diverged run is not resumed. ``check_named_resume``: the
  same rule for ``resume=<checkpoint or run folder>`` into any folder.
- ``write_hydra_record``: ``.hydra/config.yaml`` (and ``hydra.yaml``, ``overrides.yaml``) written by
  the run once the folder is claimed and accepted, since Hydra's own writer (``hydra.output_subdir``,
  null in ``conf/config.yaml``) runs before any check and would rewrite a completed folder's record.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import platform
import signal
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

from omegaconf import OmegaConf

from attn_zoo.config_check import ConfigError
from attn_zoo.later_options import with_later_defaults
from attn_zoo.results import redact

log = logging.getLogger(__name__)

LOCK_NAME = ".lock"

# keys that may differ when a folder's run is resumed: they change how the run is executed or where
# its inputs live, not what is trained (a longer trainer.max_epochs extends the run; its schedule is
# rebuilt for the new length; trainer.max_time is a wall-clock budget: a run it stops is interrupted
# and resumes under a larger one). Listed in README ("When something goes wrong").
RESUMABLE_KEYS = (
    "trainer.max_epochs", "resume", "paths.output_dir", "data.root", "data.archive", "data.num_workers",
    "trainer.enable_progress_bar", "trainer.enable_model_summary", "trainer.max_time",
)


# set by ``tools/reproduce`` for its sweep: the file it creates when its time limit stops the sweep
SWEEP_STOP_ENV = "ATTN_ZOO_SWEEP_STOP_FILE"


# the signal that stopped a parallel sweep, seen by the process that launched its workers (None: none)
parallel_sweep_stop: dict[str, int | str | None] = {"signum": None, "file": None}


# set by the process that launches a parallel sweep: its pid (a job in another process is a worker's)
SWEEP_LAUNCHER_ENV = "ATTN_ZOO_SWEEP_LAUNCHER_PID"


def parallel_jobs(launcher) -> int:
    """How many jobs a launcher's config runs at once on this machine: ``n_jobs`` of the joblib
    launcher (``hydra/launcher=parallel``; a negative count as joblib reads it, of the CPUs this
    process may use), 1 for any other launcher (one job at a time, or each on its own machine)."""
    n_jobs = launcher.get("n_jobs") if "joblib" in str(launcher.get("_target_", "")).lower() else None
    if not isinstance(n_jobs, int) or n_jobs == 0:
        return 1
    if n_jobs > 0:
        return n_jobs
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, usable + 1 + n_jobs)


def in_worker_process() -> bool:
    """Whether this job runs in a worker process of a parallel sweep: there a job must end in an
    exception, never ``sys.exit``, which joblib answers by killing every other worker, mid-save too.
    (joblib runs an n_jobs of 1 in the launching process itself, where ``sys.exit`` ends the sweep.)"""
    launcher = os.environ.get(SWEEP_LAUNCHER_ENV)
    return bool(launcher) and launcher != str(os.getpid())


def stop_parallel_sweep_on_signal(sweep_dir: Path) -> None:
    """In the process that launches a parallel sweep: SIGINT and SIGTERM no longer end it at once (which
    killed the workers while they saved their runs). The first creates a stop file that every job not
    yet begun reads (``sweep_stopped``), and the launch waits for the running jobs: a Ctrl-C, or a
    SIGTERM to the process group, reached them too, and each saves and ends as interrupted; a SIGTERM
    to this process alone lets them finish; a second signal stops the launch at once (joblib then
    kills the workers). A worker ignores signals between jobs (run.py); one that has run no job yet
    (a sweep shorter than n_jobs) takes a Ctrl-C as a KeyboardInterrupt, and joblib then kills every
    worker: loky's.
    ``tools/reproduce`` stops its sweeps itself (it sets ``SWEEP_STOP_ENV``): left alone."""
    os.environ[SWEEP_LAUNCHER_ENV] = str(os.getpid())  # the workers, not started yet, inherit it
    if os.environ.get(SWEEP_STOP_ENV) not in (None, "", parallel_sweep_stop.get("file")):
        return  # reproduce's own stop (an earlier sweep of this process set the one it may hold)
    stop_file = Path(sweep_dir).absolute() / ".stop"
    stop_file.unlink(missing_ok=True)  # an earlier stop of this sweep: a rerun resumes it
    os.environ[SWEEP_STOP_ENV] = parallel_sweep_stop["file"] = str(stop_file)
    parallel_sweep_stop["signum"] = None

    def stop(signum, frame) -> None:
        if parallel_sweep_stop["signum"] is not None:
            raise KeyboardInterrupt  # a second signal: stop now, as a second Ctrl-C stops a run at once
        parallel_sweep_stop["signum"] = signum
        stop_file.parent.mkdir(parents=True, exist_ok=True)
        stop_file.touch()

    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, stop)


def sweep_stopped() -> bool:
    """Whether the sweep this job is part of was stopped before the job began: a launcher's worker
    takes queued jobs after the stop's SIGTERM, which they never see (they ran until the stop's
    grace period ended, then were killed)."""
    path = os.environ.get(SWEEP_STOP_ENV)
    return bool(path) and Path(path).exists()


def discard_unbegun(folder: Path) -> None:
    """Remove the folder Hydra made for a job of a stopped sweep that ends before it begins, when all
    it holds is the empty job log Hydra opened (``run.log``): left behind, it read as a run that had
    lost its results.json. Anything else in it keeps it; a folder that cannot be read or removed is
    left as it is (the job still ends as stopped)."""
    log = folder / "run.log"
    with contextlib.suppress(OSError):
        if [entry.name for entry in folder.iterdir()] == [log.name] and log.is_file() and log.stat().st_size == 0:
            log.unlink()
            folder.rmdir()


# the lock files this process holds open: a forked child (a data loader's worker) shares the lock with
# them, and a worker outliving its killed run (it notices within seconds) kept a rerun out of the folder
_held_locks: set[int] = set()


def _release_in_forked_child() -> None:
    for handle in _held_locks:
        with contextlib.suppress(OSError):
            os.close(handle)
    _held_locks.clear()


os.register_at_fork(after_in_child=_release_in_forked_child)


def _job_id() -> str | None:
    """The launcher's id of this job, the same on each of its DDP ranks: SLURM's, or torchrun's run id."""
    return os.environ.get("SLURM_JOB_ID") or os.environ.get("TORCHELASTIC_RUN_ID")


def check_not_held_by_another_job(folder: Path, settle_s: float = 1.0) -> None:
    """For a further DDP rank, which holds no lock: refuse (``ConfigError``) as rank 0 does where another
    job's rank 0 holds the folder. Rank 0 refused and left, and under srun the further ranks waited for it
    in the process group's start (30 min). A lock this job's rank 0 holds names this job; one read just
    as it took the lock, before it wrote its name, is read again after ``settle_s``."""
    job, path = _job_id(), folder / LOCK_NAME
    if job is None or not path.is_file():
        return
    for attempt in range(2):
        holder = _holder_if_held(path)
        if holder is None or holder.endswith(f" in job {job}"):
            return
        if attempt == 0:
            time.sleep(settle_s)
    raise _in_use(folder, holder)


def _holder_if_held(path: Path) -> str | None:
    """What the lock file says of its holder where a process holds it, else None."""
    try:
        handle = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
        fcntl.flock(handle, fcntl.LOCK_UN)
        return None
    except BlockingIOError:
        return _holder(handle)
    finally:
        os.close(handle)


def _holder(handle: int) -> str:
    return os.pread(handle, 200, 0).decode(errors="replace").strip() or "another process"


def _in_use(folder: Path, holder: str) -> ConfigError:
    return ConfigError(f"{folder} is in use by a running job ({holder}); choose another hydra.run.dir or wait for it to finish")


@contextlib.contextmanager
def claimed(folder: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``folder`` for the run; refuse (``ConfigError``) if another process
    holds it or the folder cannot be written."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
        handle = os.open(folder / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as error:
        raise ConfigError(f"cannot write to the run folder {folder}: {error.strerror or error}") from None
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise _in_use(folder, _holder(handle)) from None
        os.ftruncate(handle, 0)
        job = _job_id()
        os.pwrite(handle, f"pid {os.getpid()} on {platform.node()}{f' in job {job}' if job else ''}\n".encode(), 0)
        _held_locks.add(handle)
        yield
    finally:
        _held_locks.discard(handle)
        os.close(handle)  # releases the lock


def previous_results(path: Path) -> dict[str, Any] | None:
    """The folder's results.json, None if absent or unreadable; a results.json that is not a regular
    file (a folder, a pipe) cannot be replaced atomically and is a ``ConfigError``."""
    if path.exists() and not path.is_file():
        raise ConfigError(f"{path} exists but is not a regular file; remove it or choose another hydra.run.dir")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _flat(node: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(node, dict):
        flat: dict[str, Any] = {}
        for key, value in node.items():
            flat.update(_flat(value, f"{prefix}{key}."))
        return flat or {prefix[:-1]: {}}
    return {prefix[:-1]: node}


def config_differences(recorded: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """Dotted keys whose values differ between two resolved configs, other than ``RESUMABLE_KEYS``.
    Paths inside the run folder (``${paths.output_dir}/...``) follow the folder if it was moved; an
    option the recorded run's module gained since it was made is read as the value that built it before
    (``later_options``)."""
    old, new = _flat(with_later_defaults(recorded)), _flat(redact(current))
    old_dir, new_dir = old.get("paths.output_dir"), new.get("paths.output_dir")
    if isinstance(old_dir, str) and isinstance(new_dir, str) and old_dir != new_dir:
        old = {key: value.replace(old_dir, new_dir) if isinstance(value, str) else value for key, value in old.items()}
    return sorted(
        key for key in old.keys() | new.keys()
        if old.get(key, "<unset>") != new.get(key, "<unset>") and key not in RESUMABLE_KEYS
    )


def check_rerun(folder: Path, previous: dict[str, Any] | None, config: dict[str, Any], has_checkpoint: bool) -> None:
    """A rerun may continue the folder's run only with its config; a diverged run is final.
    A folder without a checkpoint holds no work to mix with, so any config may start there."""
    if previous and previous.get("status") == "diverged":
        raise ConfigError(
            f"{folder} holds a run that diverged at step {previous.get('diverged_at_step')} (non-finite loss); "
            f"it is not resumed: to train again choose another hydra.run.dir or delete the folder"
        )
    if not previous or not has_checkpoint:
        return
    recorded = previous.get("config")
    if not isinstance(recorded, dict):
        return
    _refuse_shortening(recorded, config, str(folder))
    differing = config_differences(recorded, config)
    if differing:
        raise ConfigError(
            f"{folder} holds a run with another config (differs in {_shown(differing)}); rerun with its config to "
            f"resume, or choose another hydra.run.dir (may change on resume: {', '.join(RESUMABLE_KEYS)})"
        )


def check_named_resume(path: Path, recorded: dict[str, Any] | None, config: dict[str, Any]) -> None:
    """``resume=<checkpoint or run folder>`` continues that run, into any folder: with its config, except
    ``RESUMABLE_KEYS`` (a longer ``trainer.max_epochs`` extends it). Another batch size, learning rate or
    seed would rebuild the schedule mid-run and record a config its first epochs never had; starting
    from trained weights with a new recipe is ``backbone.weights``. A checkpoint saved before configs were
    recorded in it (``recorded`` None) cannot be checked."""
    if not isinstance(recorded, dict):
        log.warning("resume: %s records no config (an older checkpoint); cannot check it is this run's", path)
        return
    _refuse_shortening(recorded, config, f"resume: {path}")
    differing = config_differences(recorded, config)
    if differing:
        raise ConfigError(
            f"resume: {path} holds a run with another config (differs in {_shown(differing)}); resume with its "
            f"config (may change on resume: {', '.join(RESUMABLE_KEYS)}), or start from its weights with a new "
            f"recipe: backbone.weights=<a state dict>"
        )


def _refuse_shortening(recorded: dict[str, Any], config: dict[str, Any], where: str) -> None:
    """``trainer.max_epochs`` may change on resume to extend a run, never to shorten it: a shorter
    schedule moved the learning-rate drops behind the step the run stood at (one resumed at epoch
    100 of 164 with 120 took both drops at once), or ended the run at once, recorded completed."""
    before, now = _flat(recorded).get("trainer.max_epochs"), _flat(config).get("trainer.max_epochs")
    if isinstance(before, int) and isinstance(now, int) and now < before:
        raise ConfigError(
            f"{where} holds a run of trainer.max_epochs={before}; it resumes with as many or more, not {now} "
            f"(to train fewer epochs, start a new run)"
        )


def check_completed(folder: Path, previous: dict[str, Any], config: dict[str, Any]) -> None:
    """A completed run is left as it is, so a rerun into its folder must ask for that run: any other
    config, a longer ``trainer.max_epochs`` included, is refused (with how to extend it instead)."""
    recorded = previous.get("config")
    if not isinstance(recorded, dict):
        return
    differing = config_differences(recorded, config)
    epochs = (_flat(recorded).get("trainer.max_epochs"), _flat(config).get("trainer.max_epochs"))
    if epochs[0] != epochs[1]:
        differing = sorted([*differing, "trainer.max_epochs"])
    if differing:
        extend = f" or extend it with resume={folder} trainer.max_epochs={epochs[1]}" if epochs[0] != epochs[1] else ""
        raise ConfigError(
            f"{folder} holds a completed run with another config (differs in {_shown(differing)}); "
            f"choose another hydra.run.dir{extend}"
        )


def _shown(keys: list[str]) -> str:
    """The first eight keys, a config group's choice (``attention.name``) before its options: another
    module differs in many options, and its name was cut off after the eighth."""
    keys = sorted(keys, key=lambda key: (not key.endswith(".name"), key))
    return ", ".join(keys[:8]) + (f" and {len(keys) - 8} more" if len(keys) > 8 else "")


def write_hydra_record(folder: Path, task_config) -> None:
    """Write ``.hydra/{config,hydra,overrides}.yaml`` as Hydra would, once the run is accepted.
    Outside a Hydra app (tests compose configs) there is no record to write."""
    from hydra.core.hydra_config import HydraConfig

    from attn_zoo.results import write_atomic

    if not HydraConfig.initialized():
        return
    hydra_config = HydraConfig.instance().cfg
    record = folder / ".hydra"
    write_atomic(record / "config.yaml", OmegaConf.to_yaml(task_config))
    write_atomic(record / "hydra.yaml", OmegaConf.to_yaml(hydra_config))
    write_atomic(record / "overrides.yaml", OmegaConf.to_yaml(hydra_config.hydra.overrides.task))


def unwritable_reason(folder: Path) -> str | None:
    """Why ``folder`` could not be created or written (a file in its path, a read-only parent), or
    None. Looks only: creates nothing."""
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        return f"{existing} is not a folder"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"{existing} is not writable"
    return None


def _exit_if_unwritable(kind: str, folder: str) -> None:
    import sys

    reason = unwritable_reason(Path(folder).expanduser().absolute())
    if reason:
        print(f"error: cannot write to the {kind} folder {folder}: {reason}", file=sys.stderr)
        sys.exit(2)


class RunFolderCheck:
    """Hydra callback (``hydra.callbacks`` in conf/config.yaml): a single run's folder or a sweep's
    folder that cannot be written is one ``error:`` line and exit 2 before Hydra itself makes the
    folder (which would fail with a traceback) and before any job starts. Each sweep job's own
    folder is checked again in ``claimed``."""

    def on_run_start(self, config, **kwargs) -> None:
        _exit_if_unwritable("run", str(config.hydra.run.dir))

    def on_multirun_start(self, config, **kwargs) -> None:
        _exit_if_unwritable("sweep", str(config.hydra.sweep.dir))
        if parallel_jobs(config.hydra.launcher) > 1:
            from attn_zoo.throughput import SweepLoad

            SweepLoad(Path(config.hydra.sweep.dir)).forget_the_dead()  # a killed sweep's markers
            stop_parallel_sweep_on_signal(Path(config.hydra.sweep.dir))

    def __getattr__(self, name: str):
        if name.startswith("on_"):  # Hydra calls every hook of its Callback interface
            return lambda *args, **kwargs: None
        raise AttributeError(name)
