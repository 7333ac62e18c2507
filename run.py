"""Entry point: ``python run.py attention=se backbone=resnet20`` (``-m`` for a sweep).

Bad input ends a single run with one line ``error: <message>`` on stderr and exit code 2; in a
sweep the job is recorded as failed and the sweep goes on. A diverged run prints one line
``diverged: ...`` and exits with code 3 (a sweep records it, goes on and reports it at the end).
SIGINT/SIGTERM (and SIGUSR1/2 where submitit waits for them: its requeue is called after the save) save
a checkpoint and exit with 128 + the signal number; the message says how to resume
(the same command, into the same folder: ``hydra.run.dir=``/``hydra.sweep.dir=`` where the folder was
the default, new for every command). ``HYDRA_FULL_ERROR=1`` shows full tracebacks instead.
"""
import contextlib
import os
import signal
import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import CompactHydraException
from hydra.types import RunMode
from omegaconf import DictConfig

import attn_zoo.resolvers  # noqa: F401  (config resolvers such as ${linear_lr:...})

CONFIG_ERROR_EXIT_CODE = 2
DIVERGED_EXIT_CODE = 3
OUT_OF_TIME_EXIT_CODE = 124  # as timeout(1): trainer.max_time ran out before the last epoch


class JobConfigError(CompactHydraException):
    """A sweep job's bad input or divergence: Hydra reports it at the end of the sweep in one line,
    no traceback, and the sweep's exit code is non-zero."""


class JobInterrupted(CompactHydraException):
    """A job of a parallel sweep stopped by a signal, after saving: an exception joblib records, where
    ``sys.exit`` made it kill the other workers, mid-save too. The sweep exits 128 + the signal."""


def _rerun() -> str:
    """How to run again into this run's folder: the same command where it named the folder, else the
    same command with the folder named (the default folder is a new timestamp every time)."""
    hydra_config = HydraConfig.get()
    multirun = hydra_config.mode == RunMode.MULTIRUN
    key = "hydra.sweep.dir" if multirun else "hydra.run.dir"
    if any(override.startswith(f"{key}=") for override in hydra_config.overrides.hydra):
        return "rerun the same command"
    folder = os.path.abspath(hydra_config.sweep.dir if multirun else hydra_config.runtime.output_dir)
    return f"rerun the same command with {key}={folder}"


def _not_completed(results: dict) -> None:
    """A diverged run, or one ``trainer.max_time`` stopped, is not a success: one line, and exit 3 or
    124 (a sweep records it and goes on)."""
    if results.get("status") == "diverged":
        folder = results.get("config", {}).get("paths", {}).get("output_dir")
        message = (f"diverged: non-finite loss at step {results.get('diverged_at_step')}; "
                   f"results.json says diverged and a rerun into {folder} will not resume it")
        code = DIVERGED_EXIT_CODE
    else:
        stopped_by = results.get("interrupted_by")
        larger = " with a larger trainer.max_time" if stopped_by == "trainer.max_time" else ""
        message = (f"interrupted: {stopped_by} stopped training in epoch {results.get('epochs')} of "
                   f"{results.get('config', {}).get('trainer', {}).get('max_epochs')}; results.json says "
                   f"interrupted; {_rerun()}{larger} to resume from its last whole epoch")
        code = OUT_OF_TIME_EXIT_CODE
    if HydraConfig.get().mode == RunMode.MULTIRUN:
        raise JobConfigError(message)
    print(message, file=sys.stderr)
    sys.exit(code)


@contextlib.contextmanager
def _signals_of_a_worker_job():
    """In a parallel sweep's worker: SIGINT and SIGTERM act during a job as in a run of its own, and
    are ignored between jobs. An idle worker that took a Ctrl-C ended with a KeyboardInterrupt, and
    joblib then killed every other worker, mid-save too (a worker that has not run a job yet still
    does: it starts with Python's handlers)."""
    from attn_zoo.run_folder import in_worker_process

    if not in_worker_process():
        yield
        return
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float | None:
    with _signals_of_a_worker_job():
        return _job(cfg)


def _job(cfg: DictConfig) -> float | None:
    from attn_zoo.callbacks import RunInterrupted
    from attn_zoo.config_check import ConfigError, one_line
    from attn_zoo.results import redact
    from attn_zoo.train import _is_rank_zero, run

    full_error = os.environ.get("HYDRA_FULL_ERROR") == "1"
    try:
        results = run(cfg)
    except ConfigError as error:
        if error.every_rank and not _is_rank_zero():  # rank 0 found it too and reports it: one line, and a
            sys.exit(0)  # non-zero exit here made Lightning's launcher kill rank 0 as it wrote results.json
        if full_error:
            raise
        if HydraConfig.get().mode == RunMode.MULTIRUN:
            raise JobConfigError(redact(f"error: {one_line(error)}")) from None  # the sweep records it and goes on
        print(redact(f"error: {one_line(error)}"), file=sys.stderr)
        sys.exit(CONFIG_ERROR_EXIT_CODE)
    except RunInterrupted as interrupt:
        from attn_zoo.run_folder import in_worker_process

        if full_error:  # in a parallel sweep's worker as an Exception still (see JobInterrupted)
            if in_worker_process():
                raise JobInterrupted(str(interrupt)) from interrupt
            raise
        if int(os.environ.get("LOCAL_RANK", 0)) == 0:  # one line, not one per DDP process
            interrupt.rerun = _rerun()
            print(interrupt, file=sys.stderr)
        if interrupt.then is not None:  # submitit's requeue (SIGUSR2), now that the run has saved
            interrupt.then(interrupt.signum, None)
        if in_worker_process():
            raise JobInterrupted(str(interrupt)) from None
        # a further rank whose stop every rank shared leaves the report to rank 0 (its exit 143 made
        # Lightning's launcher kill rank 0 within 5 s, as it wrote its results); one stopped alone (before
        # training, say) must fail: rank 0 would wait for it in the next collective
        sys.exit(0 if interrupt.shared and not _is_rank_zero() else 128 + interrupt.signum)
    # diverged or stopped by trainer.max_time: every rank ended alike, and rank 0 reports it (exit 3 or 124)
    if results.get("status") in ("diverged", "interrupted") and _is_rank_zero():
        _not_completed(results)
    return results.get("best_top1")


def _exit_as_stopped(code) -> None:
    """A parallel sweep that a signal stopped ends with 128 + the signal, as a single run does (Hydra
    ends a sweep with failed jobs with 1)."""
    from attn_zoo.run_folder import parallel_sweep_stop

    signum = parallel_sweep_stop["signum"]
    sys.exit(128 + signum if signum is not None and code not in (None, 0) else code)


if __name__ == "__main__":
    try:
        main()
    except SystemExit as end:
        _exit_as_stopped(end.code)
