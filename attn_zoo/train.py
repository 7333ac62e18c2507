"""One training run from a resolved config: config → model → trainer → results.json."""
from __future__ import annotations

import configparser
import contextlib
import datetime
import logging
import math
import os
import platform
import signal
import socket
import sys
import threading
import traceback
import urllib.parse
import uuid
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from lightning.pytorch.callbacks import Timer
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf

import attn_zoo
from attn_zoo import checkpoints, config_check, cost, provenance, run_folder
from attn_zoo.backbones.placement import attention_modules
from attn_zoo.config import build_datamodule, build_model, container, options
from attn_zoo.callbacks import (GracefulStop, LoaderPosition, RandomStateCheckpoint, RunInterrupted, StepProfiler,
                                TrainingDataCheck, ValidateAtMaxSteps, _StopRequested, no_training_batch)
from attn_zoo.config_check import ConfigError, one_line
from attn_zoo.lit import Classifier
from attn_zoo.registry import UnknownNameError
from attn_zoo.throughput import SweepLoad, TrainThroughput
from attn_zoo.results import FILENAME, SCHEMA, WANDB_SUMMARY_KEYS, redact, variant_label, write_json_atomic

log = logging.getLogger(__name__)


def _log_lightning_once() -> None:
    """Lightning adds its own console handler; route its records through the app's logging only."""
    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True


def _describe(cfg: DictConfig, model: torch.nn.Module, image_shape) -> dict[str, Any]:
    attention_options = options(cfg.attention)
    flops = cost.count_flops(model, image_shape)
    return {
        "attention_options": attention_options,
        "attention_variant": _attention_variant(cfg),
        "params": cost.count_params(model),
        "attention_params": cost.count_attention_params(model),
        "flops": flops,
        "macs": flops // 2,
        "flops_convention": cost.FLOP_CONVENTION,
        "image_shape": list(image_shape),
        "channels_last": config_check.channels_last(cfg),
        # ECA's k (and CBAM's spatial k) mean different things across codebases: record what ran
        "attention_kernel_sizes": [
            module.kernel_size for module in attention_modules(model).values()
            if isinstance(getattr(module, "kernel_size", None), int)
        ],
    }


def _attention_variant(cfg: DictConfig) -> str:
    """``se[reduction=8]``: the attention name and the options that differ from its defaults."""
    return variant_label(cfg.attention.name, options(cfg.attention), attn_zoo.attention_defaults(cfg.attention.name))


def _metrics(history: list[dict[str, float]]) -> dict[str, Any]:
    if not history:
        return {"epochs": 0}
    # best.ckpt is taken at epoch ends only: a validation within an epoch (a stop) is no candidate
    best = max([row for row in history if not row.get("partial_epoch")] or history, key=lambda row: row["top1"])
    metrics = {
        "epochs": history[-1]["epoch"] + 1,  # not len(history): validation may run every n epochs or mid-epoch
        "top1": history[-1]["top1"],
        "top5": history[-1]["top5"],
        "best_top1": best["top1"],
        "best_top5": best["top5"],
        "best_epoch": best["epoch"],
        "history": history,
    }
    if "ema_top1" in history[-1]:
        metrics.update(ema_top1=history[-1]["ema_top1"], ema_top5=history[-1]["ema_top5"])
    if "val_images" in history[-1]:  # absent from epochs a checkpoint of an older version logged
        metrics["val_images"] = history[-1]["val_images"]
    return metrics


def _data_record(datamodule) -> dict[str, Any]:
    """What the data module says it trained and validated on (``train_images``, ``data_fingerprint``),
    once it has listed its images; nothing before that (a run that failed early) or for a module
    without ``data_record``."""
    if getattr(datamodule, "train_set", None) is None or not hasattr(datamodule, "data_record"):
        return {}
    return datamodule.data_record()


def _resume_candidates(cfg: DictConfig, output_dir: Path) -> tuple[list[checkpoints.Candidate], bool]:
    """The checkpoints a run may resume from, loaded, and whether the user named them
    (``resume=<checkpoint or run folder>``) or they are the output folder's own."""
    if not cfg.get("resume"):
        return [checkpoints.load(path) for path in checkpoints.own_candidates(output_dir / "checkpoints")], False
    path = Path(cfg.resume)
    _refuse_a_diverged_run(path)
    paths = checkpoints.own_candidates(path / "checkpoints") if path.is_dir() else [path] if path.is_file() else []
    if not paths:
        raise FileNotFoundError(f"resume: no checkpoint at {path}")
    loaded = [checkpoints.load(path) for path in paths]
    problems = [checkpoints.named_problem(candidate, _model_record(cfg)) for candidate in loaded]
    if all(problems):
        raise ConfigError(f"resume: {loaded[0].path} {problems[0]}")
    usable = next(candidate for candidate, problem in zip(loaded, problems) if not problem)
    recorded = (usable.checkpoint.get(checkpoints.RUN_RECORD) or {}).get("config")
    run_folder.check_named_resume(usable.path, recorded, container(cfg))
    return loaded, True


def _refuse_a_diverged_run(path: Path) -> None:
    """``resume=`` a run that diverged (its folder, or a checkpoint in its ``checkpoints/``) is refused
    as a rerun in its own folder is: its last.ckpt is the last finite state, and resumed it came back
    ``completed``."""
    folder = path if path.is_dir() else path.parent.parent if path.parent.name == "checkpoints" else None
    previous = run_folder.previous_results(folder / FILENAME) if folder is not None else None
    if previous and previous.get("status") == "diverged":
        raise ConfigError(
            f"resume: {folder} holds a run that diverged at step {previous.get('diverged_at_step')} (non-finite "
            f"loss); it is not resumed: start a new run (another seed or learning rate)"
        )


def _model_record(cfg: DictConfig) -> dict[str, str]:
    return {"backbone": str(cfg.backbone.name), "attention": str(cfg.attention.name)}


def _run_record(cfg: DictConfig, schedule: list[list], versions: list[str], paired: bool,
                wandb_id: str | None) -> dict[str, Any]:
    record = {"config": redact(container(cfg)), "attention_variant": _attention_variant(cfg),
              "max_epochs_history": schedule, "code_versions": versions, "paired_by_seed": paired}
    return record if wandb_id is None else {**record, "wandb_run_id": wandb_id}


def _run_record_of(chosen) -> dict[str, Any]:
    """The run record of the checkpoint a run resumes from; empty for a fresh start or an old checkpoint."""
    return (chosen.checkpoint.get(checkpoints.RUN_RECORD) or {}) if chosen is not None else {}


def _wandb_run_id(cfg: DictConfig, chosen, output_dir: Path, offline: bool) -> str | None:
    """The wandb run an online run logs into: a run resumed from a checkpoint of its own folder
    continues the one that checkpoint names (a kill and a rerun made two runs, the first left crashed
    and read back by ``summarize --wandb`` as a failed seed); a fresh start, or a run branched from
    another folder's checkpoint (``resume=<other>``), gets a new one. None without the wandb logger or
    offline: wandb cannot resume an offline run (syncing a second offline folder of one id replaces the
    first's history), so there each attempt stays a run of its own. From the OS's randomness, not
    torch's, so the seeded streams are untouched."""
    logger_cfg = (cfg.get("logger") or {}).get("wandb")
    if logger_cfg is None or offline:
        return None
    if logger_cfg.get("id"):
        return str(logger_cfg.id)
    own = chosen is not None and Path(chosen.path).resolve().is_relative_to(output_dir.resolve())
    return (_run_record_of(chosen).get("wandb_run_id") if own else None) or uuid.uuid4().hex[:12]


def _paired_by_seed(chosen, loader: str | None = None) -> bool:
    """Whether this run began with attention modules drawing from streams of their own
    (backbones/placement.py), so that it shares its backbone's starting weights and its data order
    with the other modules' runs of its seed: a fresh run does; a resumed one as its checkpoint says
    (one begun before did not, whatever code resumes it), except a DALI run resumed inside an epoch:
    DALI's generators are not checkpointed, so the rest of that epoch's crops and flips are its own."""
    if chosen is None:
        return True
    resumed_inside_dali_epoch = loader == "dali" and LoaderPosition.KEY in chosen.checkpoint
    return _run_record_of(chosen).get("paired_by_seed") is True and not resumed_inside_dali_epoch


def _code_versions(chosen) -> list[str]:
    """The code that trained this run so far, the resumed checkpoint's versions first."""
    earlier = _run_record_of(chosen).get("code_versions")
    versions = provenance.versions_after_resume(earlier, resumed=chosen is not None)
    if chosen is not None and earlier and versions[-1] != earlier[-1] and _is_rank_zero():
        log.warning("resuming under code %s, the checkpoint was trained by %s: one result of both "
                    "(code_versions in results.json; summarize names such runs)", versions[-1], " → ".join(earlier))
    return versions


def _max_epochs_history(cfg: DictConfig, chosen) -> list[list]:
    """[[global step, trainer.max_epochs], ...]: each length the LR schedule was built for and the step
    from which it ran. A fresh run has one pair, and so has a run resumed with its checkpoint's
    max_epochs (the same run, continued); a resume with another max_epochs (an extended run) adds a
    pair, so the summary never takes it for a run scheduled for that length from the start. A
    checkpoint saved before this was recorded stands for its own config's max_epochs (null: unknown)."""
    max_epochs = cfg.trainer.get("max_epochs")
    if chosen is None:
        return [[0, max_epochs]]
    run = _run_record_of(chosen)
    first = ((run.get("config") or {}).get("trainer") or {}).get("max_epochs")
    schedule = [list(pair) for pair in run.get("max_epochs_history") or [[0, first]]]
    if schedule[-1][1] != max_epochs:
        schedule.append([chosen.step, max_epochs])
    return schedule


def _choose_checkpoint(candidates, named: bool, model: torch.nn.Module):
    """The candidate to resume (or None) and the lines saying which files were skipped and why.
    Nothing usable among checkpoints that exist is an error, not a silent fresh start."""
    chosen, skipped = checkpoints.choose(candidates, model)
    for line in skipped:
        log.warning("not resuming from %s", line)
    if candidates and chosen is None:
        hint = "check the resume path" if named else f"delete {candidates[0].path.parent} to start again"
        raise ConfigError(f"no checkpoint can be resumed: {skipped[0]}; {hint}")
    return chosen, skipped


def _loggers(cfg: DictConfig, wandb_id: str | None = None, wandb_offline: bool = False) -> list:
    loggers = []
    for name, logger_cfg in (cfg.get("logger") or {}).items():
        if name == "wandb":
            # partial: the run fields go to wandb.init as plain Python values, not through OmegaConf
            # never Lightning's offline=True, which refuses log_model (wandb keeps offline artifacts for `wandb
            # sync`) and sets WANDB_MODE in os.environ for every later job: wandb.init's own mode, as decided
            fields = {**_wandb_run_fields(cfg, logger_cfg), "offline": False}
            if wandb_offline:
                fields["mode"] = "offline"
            if wandb_id is not None:  # "allow": the run continues where this id exists, else starts
                fields.update(id=wandb_id, resume="allow")
            loggers.append(instantiate(logger_cfg, _partial_=True)(**fields))
        else:
            loggers.append(instantiate(logger_cfg))
    return loggers


def _wandb_run_fields(cfg: DictConfig, logger_cfg: DictConfig) -> dict[str, Any]:
    """What a dashboard filters and groups by: the resolved config flattened to dotted keys
    (``attention.name``, ``backbone.placement``, ``seed``; secrets redacted) as the run config, the
    sweep as the group and the attention variant as the job type and in the name (a reduction sweep's
    runs were all ``resnet20-se-s0``), unless the config names them. The run config records the name,
    group and job type the run got, not the config's nulls."""
    fields = {
        "name": logger_cfg.get("name") or f"{cfg.backbone.name}-{_attention_variant(cfg)}-s{cfg.seed}",
        "group": logger_cfg.get("group") or _sweep_dir(),
        "job_type": logger_cfg.get("job_type") or _attention_variant(cfg),
    }
    config = flat_config(container(cfg))
    config.update({f"logger.wandb.{key}": value for key, value in fields.items() if f"logger.wandb.{key}" in config})
    return {**fields, "config": redact(config)}


def flat_config(node: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"attention": {"name": "se"}}`` -> ``{"attention.name": "se"}``; lists and empty dicts stay values.

    Not ``pandas.json_normalize(node, sep=".")``: that drops keys whose value is an empty dict
    (``sched=none`` composes ``sched: {}``, which would vanish from the run config) and puts the
    nested keys after the top-level ones, out of the config's order (pandas 3.1).
    """
    flat: dict[str, Any] = {}
    for key, value in node.items():
        if isinstance(value, dict) and value:
            flat.update(flat_config(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _task_overrides() -> list[str] | None:
    """The command line's overrides of this run (a sweep job's own values: ``seed=1``, not ``seed=0,1``),
    None outside Hydra: with ``code_versions``, what made the run, also where a copy lost ``.hydra/``
    (``cp -r run/*`` leaves hidden folders behind)."""
    from hydra.core.hydra_config import HydraConfig

    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else None


def _multirun_hydra():
    """Hydra's config of this job when it is a job of a multirun, else None (a single run, or no Hydra)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return None
    return HydraConfig.get()


def _sweep_dir() -> str | None:
    """The Hydra multirun's sweep folder as configured (``multirun/<date>/<time>``), None for a single
    run or outside Hydra: every job of one sweep lands in one wandb group."""
    hydra = _multirun_hydra()
    return str(hydra.sweep.dir) if hydra is not None else None


def _parallel_jobs() -> int:
    """How many jobs of this multirun its launcher runs at once on this machine (``hydra/launcher=parallel``:
    ``hydra.launcher.n_jobs``, -1 for one per core); 1 outside a multirun or for a launcher that places
    each job on its own machine (SLURM)."""
    hydra = _multirun_hydra()
    return run_folder.parallel_jobs(hydra.launcher) if hydra is not None else 1


def _absolute_sweep_dir() -> Path:
    """The sweep folder as an absolute path: with ``hydra.job.chdir=true`` a job runs in its own
    folder, where the configured (relative) sweep folder would be another one per job."""
    hydra = _multirun_hydra()
    return Path(hydra.runtime.cwd) / str(hydra.sweep.dir)


def _wandb_offline(cfg: DictConfig) -> bool:
    """Whether the wandb logger logs offline: without an API key or a login, or with them on a machine
    that cannot reach the wandb server (a cluster's compute node), rather than fail, prompt, or wait
    out wandb's init timeout and fail the run before its first step. ``WANDB_MODE`` set, or
    ``logger.wandb.offline``, decides alone. False without the wandb logger."""
    logger_cfg = (cfg.get("logger") or {}).get("wandb")
    if logger_cfg is None:
        return False
    if mode := os.environ.get("WANDB_MODE"):
        return mode in ("offline", "dryrun")
    if logger_cfg.get("offline"):
        return True
    host, port = _wandb_server()
    netrc = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    if not os.environ.get("WANDB_API_KEY") and not (netrc.is_file() and host in netrc.read_text(encoding="utf-8", errors="replace")):
        log.warning("wandb: no API key or login found; logging offline (sync later with `wandb sync`)")
        return True
    if not _behind_a_proxy() and not _reachable(host, port):
        log.warning("wandb: %s:%d cannot be reached from here; logging offline (sync later with `wandb sync`)", host, port)
        return True
    return False


def _wandb_server() -> tuple[str, int]:
    """The wandb server's host and port: ``WANDB_BASE_URL``, else the ``base_url`` that ``wandb login
    --host`` wrote into wandb's settings file, else wandb's cloud."""
    base_url = os.environ.get("WANDB_BASE_URL")
    if not base_url:
        settings = configparser.ConfigParser()
        folder = Path(os.environ.get("WANDB_CONFIG_DIR") or Path.home() / ".config" / "wandb")
        with contextlib.suppress(configparser.Error, OSError):
            settings.read(folder / "settings")
        base_url = settings.get("default", "base_url", fallback=None)
    url = urllib.parse.urlparse(base_url or "https://api.wandb.ai")
    if not url.hostname:
        url = urllib.parse.urlparse("https://api.wandb.ai")
    return url.hostname, url.port or (80 if url.scheme == "http" else 443)


def _behind_a_proxy() -> bool:
    """An HTTP(S) proxy is set: a direct connection would test nothing."""
    return any(os.environ.get(name) for name in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy",
                                                 "ALL_PROXY", "all_proxy"))


def _reachable(host: str, port: int, timeout_s: float = 5.0) -> bool:
    """A TCP connection to ``host:port`` within ``timeout_s`` in all, the name lookup included (which the
    socket's own timeout does not bound: a broken resolver retries for longer)."""
    outcome: list[bool] = []

    def connect() -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout_s):
                outcome.append(True)
        except OSError:
            outcome.append(False)

    attempt = threading.Thread(target=connect, daemon=True)
    attempt.start()
    attempt.join(timeout_s)
    return bool(outcome and outcome[0])


def _finish_loggers(loggers: list, results: dict[str, Any]) -> None:
    if not _is_rank_zero():  # a DDP rank's wandb experiment is Lightning's stand-in, with no summary
        return
    for logger in loggers:
        if isinstance(logger, WandbLogger):  # the class imports wandb only when a run is made
            _finish_wandb(logger, results)


def _finish_wandb(logger: WandbLogger, results: dict[str, Any]) -> None:
    """Write the run's summary and close it. A dashboard's failure (a dead wandb service, a failed
    init) is a warning: it must not turn a finished training into a failed run in results.json, and
    the run is closed whatever happened, or the sweep's next job in this process logs into it."""
    import wandb

    ending = _as_ended(results)
    try:
        run = logger.experiment
        summary = {key: ending[key] for key in WANDB_SUMMARY_KEYS if key in ending}
        # a resumed wandb run keeps its summary's keys: the earlier attempt's reason must not outlive it
        summary.update({key: None for key in ("error", "diverged_at_step", "interrupted_by") if key not in summary})
        run.summary.update(redact(summary))  # an error message may quote a secret's value
        results.update(wandb_run_id=run.id, wandb_url=run.url)  # None offline
    except Exception as error:
        log.warning("wandb: the run's summary was not written (%s: %s); results.json is unaffected",
                    type(error).__name__, error)
    finally:  # each job of a Hydra multirun must close its run, or the next job logs into it
        try:
            wandb.finish(exit_code=0 if ending["status"] in ("completed", "diverged") else 1)
        except Exception as error:
            log.warning("wandb: closing the run failed (%s: %s)", type(error).__name__, error)


ENDED = ("completed", "diverged", "interrupted")  # what training records before the loggers close


class _LoggersInterrupted(KeyboardInterrupt):
    """A Ctrl-C while the loggers closed, after results.json recorded how the run ended."""


def _as_ended(results: dict[str, Any]) -> dict[str, Any]:
    """``results`` with how the run ended: still "running" inside a ``finally`` that an exception passes
    through, which says how (``_run_accepted`` records it once the exception reaches it)."""
    return results if results.get("status") != "running" else {**results, **_ending(sys.exc_info()[1])}


def _stamp_finished(results: dict[str, Any]) -> None:
    """When the run ended (UTC), once: the loggers finish a moment before results.json is written."""
    results.setdefault("finished_at", datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"))


def _ending(error: BaseException | None) -> dict[str, Any]:
    """What results.json records of a run that ``error`` ended: its status and why."""
    if isinstance(error, RunInterrupted):
        return {"status": "interrupted", "interrupted_by": signal.Signals(error.signum).name}
    if isinstance(error, KeyboardInterrupt):
        return {"status": "interrupted", "interrupted_by": "SIGINT"}
    if isinstance(error, ConfigError):
        return {"status": "failed", "error": f"ConfigError: {one_line(error)}"}
    return {"status": "failed", "error": f"{type(error).__name__}: {error}"}


def _callbacks(cfg: DictConfig, output_dir: Path, schedule: list[list], versions: list[str],
               paired: bool, wandb_id: str | None) -> list[L.Callback]:
    callbacks: list[L.Callback] = [
        TrainingDataCheck(), ValidateAtMaxSteps(), RandomStateCheckpoint(), LoaderPosition(),
        checkpoints.MetricsLogOffset(),
        checkpoints.ModelRecord(_model_record(cfg), _run_record(cfg, schedule, versions, paired, wandb_id)),
    ]
    if cfg.trainer.get("enable_checkpointing", True):
        callbacks.append(
            checkpoints.AtomicModelCheckpoint(
                dirpath=output_dir / "checkpoints", filename="best", monitor="val/top1", mode="max",
                save_top_k=1, save_last=False, auto_insert_metric_name=False, enable_version_counter=False,
            )
        )
        callbacks.append(checkpoints.LastCheckpoint(output_dir / "checkpoints"))
    profile = cfg.get("profile") or {}
    if profile.get("steps"):
        callbacks.append(StepProfiler(output_dir / "profile.txt", profile.steps, profile.get("start_step", 0)))
    return callbacks + _extra_callbacks(cfg)


def _extra_callbacks(cfg: DictConfig) -> list[L.Callback]:
    """The user's ``callbacks.<name>`` (``_target_`` and options), in the order given."""
    extra = []
    for name, spec in (cfg.get("callbacks") or {}).items():
        callback = instantiate(spec)
        if not isinstance(callback, L.Callback):
            raise ConfigError(f"callbacks.{name}: {spec._target_} made a {type(callback).__name__}, "
                              "not a Lightning Callback")
        extra.append(callback)
    return extra


def _basics(cfg: DictConfig) -> dict[str, Any]:
    """What a results.json says even when the run fails before its model exists."""
    try:
        config = container(cfg)
    except Exception:  # noqa: BLE001  (an interpolation that cannot resolve: keep the config as written)
        config = OmegaConf.to_container(cfg, resolve=False)
    return {
        "schema": SCHEMA,
        "status": "running",
        "data": cfg.data.get("name"),
        "backbone": cfg.backbone.get("name"),
        "attention": cfg.attention.get("name"),
        "attention_variant": cfg.attention.get("name"),
        "seed": cfg.get("seed"),
        "torch_version": torch.__version__,
        "code_versions": [provenance.code_version()],  # with a resumed checkpoint's, once it is chosen
        "overrides": _task_overrides(),
        "host": platform.node(),
        "pid": os.getpid(),
        "config": config,
    }


def _check_ddp_launch(trainer: L.Trainer) -> None:
    """A sweep cannot start its own DDP processes: Lightning starts each further rank by running the
    command line again (with ``hydra.run.dir`` added), and with ``-m`` in it that is the whole sweep,
    every job of it, in every rank. SLURM and torchrun start the ranks themselves and are fine."""
    from lightning.pytorch.strategies.launchers.subprocess_script import _SubprocessScriptLauncher

    launcher = getattr(trainer.strategy, "launcher", None)
    if (_multirun_hydra() is not None and isinstance(launcher, _SubprocessScriptLauncher)
            and launcher.num_processes > 1 and not launcher.cluster_environment.creates_processes_externally):
        raise ConfigError(
            f"a sweep (-m) cannot start DDP's {launcher.num_processes} processes: Lightning starts each rank "
            "by rerunning the command line, which reruns the whole sweep; run each job as a single run "
            "(python run.py trainer=ddp ...), under torchrun, or sweep with hydra/launcher=slurm")


def _cluster_plugins(trainer_cfg: DictConfig) -> dict[str, Any]:
    """Under SLURM, Lightning's own requeue off: its SIGUSR1 handler saves ``hpc_ckpt_<n>.ckpt`` in
    the middle of a step and requeues the job (submitit, our launcher, requeues it too), and a run
    given no checkpoint starts from the newest such file it finds, another run's included, past every
    check of ``run_folder``. A preempted run resumes from its own last.ckpt instead."""
    from lightning.fabric.plugins.environments import SLURMEnvironment

    if trainer_cfg.get("plugins") is not None or not SLURMEnvironment.detect():
        return {}
    return {"plugins": [SLURMEnvironment(auto_requeue=False)]}


# what each launcher sets for a process's rank: Lightning's own (LOCAL_RANK, NODE_RANK), torchrun
# (RANK) and srun (SLURM_PROCID, the only one a SLURM task gets: submitit sets no LOCAL_RANK)
RANK_VARIABLES = ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID")


def _is_rank_zero() -> bool:
    """The process that holds the run folder: rank 0 by every launcher's variable it has."""
    return all(int(os.environ.get(name, 0)) == 0 for name in RANK_VARIABLES)


@contextlib.contextmanager
def _config_errors(context: str = ""):
    """Errors of building the run from its config (names, options, paths) become ``ConfigError``."""
    try:
        yield
    except ConfigError:
        raise
    except (InstantiationException, UnknownNameError, TypeError, ValueError, FileNotFoundError) as error:
        raise ConfigError(context + one_line(error)) from error


@contextlib.contextmanager
def _sigterm_raises():
    """Until training starts, SIGTERM stops the run like Ctrl-C (recorded, not killed silently)."""
    def interrupt(signum, frame):
        raise RunInterrupted(signum)

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run(cfg: DictConfig) -> dict[str, Any]:
    """Train one model as ``cfg`` says and write ``results.json`` into ``cfg.paths.output_dir``.

    results.json is written at the start (status ``running``) and at the end: ``completed``,
    ``diverged`` (non-finite loss, with the step), ``interrupted`` (SIGINT/SIGTERM: a checkpoint is
    saved and a rerun resumes; raises ``RunInterrupted``) or ``failed`` (with the error, also for
    errors before training starts, so a sweep's table shows every job). Bad config raises
    ``ConfigError`` before any data loads. The folder is locked for the run before anything is
    written (``run_folder.claimed``); a folder that holds a completed run is left alone, one that
    holds another config's or a diverged run's checkpoints is refused (``run_folder.check_rerun``).
    """
    output_dir = Path(cfg.paths.output_dir)
    if run_folder.sweep_stopped():
        run_folder.discard_unbegun(output_dir)
        raise RunInterrupted(signal.SIGTERM)  # before anything is written: the job never began
    _log_lightning_once()
    if not _is_rank_zero():  # a further DDP rank: rank 0 holds the folder and decides as this rank does
        # (torchrun and srun start every rank: one that trained where rank 0 did not waited 30 min for it)
        run_folder.check_not_held_by_another_job(output_dir)
        return _completed_run_kept(cfg, output_dir) or _run_accepted(cfg, output_dir)
    with run_folder.claimed(output_dir):
        if completed := _completed_run_kept(cfg, output_dir):
            log.warning("%s already holds a completed run; not overwriting it (choose another hydra.run.dir)", output_dir)
            return completed
        run_folder.write_hydra_record(output_dir, cfg)
        return _run_accepted(cfg, output_dir)


def _completed_run_kept(cfg: DictConfig, output_dir: Path) -> dict[str, Any] | None:
    """The folder's completed run, left as it is (unless ``resume`` asks to extend it); None where this
    config may train there. Raises ``ConfigError`` where it may not (another config, a diverged run)."""
    previous = run_folder.previous_results(output_dir / FILENAME)
    config = _basics(cfg)["config"]
    if previous and previous.get("status") == "completed" and not cfg.get("resume"):
        run_folder.check_completed(output_dir, previous, config)
        return previous
    own = checkpoints.own_candidates(output_dir / "checkpoints")
    if own and not isinstance((previous or {}).get("config"), dict):
        previous = {**(previous or {}), "config": _config_in_checkpoints(own)}
    run_folder.check_rerun(output_dir, previous, config, bool(own))
    return None


def _config_in_checkpoints(paths: list[Path]) -> dict[str, Any] | None:
    """The config the newest of a folder's checkpoints that records one was trained with: what a
    rerun is checked against where results.json is gone (checkpoints copied without it), which
    let a rerun with another learning rate or seed continue the run."""
    for path in paths:
        candidate = checkpoints.load(path)
        recorded = ((candidate.checkpoint or {}).get(checkpoints.RUN_RECORD) or {}).get("config")
        if isinstance(recorded, dict):
            return recorded
    return None


def _run_accepted(cfg: DictConfig, output_dir: Path) -> dict[str, Any]:
    """Train in a folder this process may write; results.json says how the run ended."""
    results_path = output_dir / FILENAME
    results = _basics(cfg)
    try:
        _train(cfg, output_dir, results)
    except BaseException as error:
        if isinstance(error, _LoggersInterrupted) and results.get("status") in ENDED:
            # a Ctrl-C while the loggers closed (a wandb upload takes minutes): the run had ended as recorded
            log.warning("interrupted while the loggers closed; the run had ended: %s", results["status"])
        else:
            results.update(_ending(error))
        if not isinstance(error, (KeyboardInterrupt, ConfigError)):  # a bug, not bad input or a stop
            results["traceback"] = traceback.format_exc()
        if isinstance(error, KeyboardInterrupt) and not isinstance(error, RunInterrupted):
            raise RunInterrupted(signal.SIGINT) from error
        raise
    finally:
        _stamp_finished(results)
        if _is_rank_zero():
            write_json_atomic(results_path, results)
    log.info(
        "%s + %s: %s, top-1 %s (best %s), %d params, results in %s",
        results["backbone"], results["attention_variant"], results["status"], _percent(results.get("top1")),
        _percent(results.get("best_top1")), results.get("params", 0), results_path,
    )
    return results


def prepare(cfg: DictConfig, output_dir: Path):
    """(resume checkpoint and skipped files, data module, model), checked before any data loads:
    bad input raises ``ConfigError`` here, in one line."""
    with _config_errors():
        config_check.validate(cfg)
        candidates, named = _resume_candidates(cfg, output_dir)
        datamodule = build_datamodule(cfg.data)
        config_check.check_image_size(cfg.backbone.name, options(cfg.backbone), datamodule.image_shape)
        L.seed_everything(cfg.seed, workers=True)
    with _config_errors(context=f"{cfg.backbone.name} with attention {cfg.attention.name}: "):
        model = build_model(cfg, datamodule.num_classes)
    return _choose_checkpoint(candidates, named, model), datamodule, model


def _record_resume(results: dict[str, Any], chosen, skipped: list[str]) -> Path | None:
    """Say which checkpoint the run resumes from (and which it skipped, why): log and results.json."""
    if chosen is None:
        return None
    results.update(resumed_from=str(chosen.path), resume_skipped=skipped)
    log.info("resuming from %s (global step %d)", chosen.path, chosen.step)
    return chosen.path


def _train(cfg: DictConfig, output_dir: Path, results: dict[str, Any]) -> None:
    with _sigterm_raises():
        (chosen, skipped), datamodule, model = prepare(cfg, output_dir)
        results.update(_describe(cfg, model, datamodule.image_shape))
        checkpoint = _record_resume(results, chosen, skipped)
        schedule = _max_epochs_history(cfg, chosen)
        results["max_epochs_history"] = schedule
        versions = results["code_versions"] = _code_versions(chosen)
        paired = results["paired_by_seed"] = _paired_by_seed(chosen, cfg.data.get("loader"))
        if _is_rank_zero():
            write_json_atomic(output_dir / FILENAME, results)

        channels_last = config_check.channels_last(cfg)
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        with _config_errors():
            optimizer = config_check.optimizer_factory(cfg.optim)
            optimizer.check(model)
            module = Classifier(
                model,
                datamodule.num_classes,
                optimizer,
                instantiate(cfg.sched) if cfg.get("sched") else None,
                label_smoothing=cfg.get("label_smoothing", 0.0),
                channels_last=channels_last,
                ema_decay=cfg.get("ema_decay"),
                compile=bool(cfg.get("compile")),
                compile_mode=cfg.get("compile_mode"),
            )
            wandb_offline = _wandb_offline(cfg)
            wandb_id = _wandb_run_id(cfg, chosen, output_dir, wandb_offline)
            loggers = _loggers(cfg, wandb_id, wandb_offline)
            if chosen is not None and _is_rank_zero():
                checkpoints.resume_metrics_logs(loggers, chosen.checkpoint)
            chosen = None  # the loaded tensors are no longer needed
            checkpointing = cfg.trainer.get("enable_checkpointing", True)
            graceful = GracefulStop(output_dir / "checkpoints" / "last.ckpt" if checkpointing else None)
            parallel_jobs = _parallel_jobs()
            # how many of the sweep's jobs share the machine, measured each epoch: not always n_jobs
            load = SweepLoad(_absolute_sweep_dir()) if parallel_jobs > 1 and _is_rank_zero() else None
            throughput = TrainThroughput(parallel_jobs, cfg.data.get("num_workers"), load)
            trainer = instantiate(
                cfg.trainer, logger=loggers or False,
                callbacks=[*_callbacks(cfg, output_dir, schedule, versions, paired, wandb_id), graceful, throughput],
                default_root_dir=output_dir, **_cluster_plugins(cfg.trainer),
            )
            _check_ddp_launch(trainer)
            results["world_size"] = trainer.world_size  # trainer.devices=-1 says nothing of how many
    try:
        with load or contextlib.nullcontext():
            _fit(trainer, module, datamodule, checkpoint, graceful)
        if module.diverged_at_step is not None:
            results.update(status="diverged", diverged_at_step=module.diverged_at_step)
        elif (stopped_by := stopped_before_schedule(trainer)) is not None:
            log.warning("%s stopped training in epoch %d of %d: recorded as interrupted (never averaged)",
                        stopped_by, trainer.fit_loop.epoch_progress.current.processed, trainer.max_epochs)
            results.update(status="interrupted", interrupted_by=stopped_by)
        else:
            results["status"] = "completed"
    finally:
        results["wall_time_s"] = throughput.wall_time_s()  # with the time before a resume, from the checkpoint
        results.update(_metrics(module.history), **_data_record(datamodule), **throughput.summary())
        if _is_rank_zero():  # how it ended, before the loggers finish (wandb takes seconds; Lightning kills this
            # process once a DDP rank that ended first exits non-zero): written again with their ids after
            _stamp_finished(results)  # also for the wandb summary: summarize's repeated-seed tie-break reads it
            write_json_atomic(output_dir / FILENAME, _as_ended(results))
        try:
            _finish_loggers(loggers, results)
        except KeyboardInterrupt as stop:  # the run's ending is recorded, with its metrics: it stands
            raise _LoggersInterrupted() from stop


def _percent(value: float | None) -> str:
    """``87.16 %``, or ``none`` where no finite accuracy exists (a run that diverged in its first epoch)."""
    return f"{value:.2f} %" if isinstance(value, (int, float)) and math.isfinite(value) else "none"


def stopped_before_schedule(trainer: L.Trainer) -> str | None:
    """What ended ``fit`` before its steps (``max_epochs`` of them, or ``max_steps``) were trained, or
    None: Lightning returns normally when ``trainer.max_time`` runs out (or a callback sets
    ``should_stop``), and such a run, part of its schedule trained, is no result to average with
    completed ones. Counted in optimizer steps: Lightning counts an epoch cut short, even one the stop
    left without a batch, as an epoch processed."""
    if trainer.global_step >= trainer.estimated_stepping_batches:
        return None
    timer = next((callback for callback in trainer.callbacks if isinstance(callback, Timer)), None)
    if timer is not None and (timer.time_remaining() or 0) <= 0:
        return "trainer.max_time"
    return "trainer.should_stop"


def _check_some_work(trainer: L.Trainer, datamodule) -> None:
    """The same error after ``fit`` for a loader that yielded no batch though ``TrainingDataCheck``
    saw enough images (a data module without a ``train_set``, or a loader of its own)."""
    if trainer.num_training_batches == 0:
        raise no_training_batch(len(getattr(datamodule, "train_set", ()) or ()), datamodule.batch_size)


def _fit(trainer: L.Trainer, module: Classifier, datamodule, checkpoint: Path | None, graceful: GracefulStop) -> None:
    """``trainer.fit``; a stop by SIGINT/SIGTERM raises ``RunInterrupted`` (naming the checkpoint)."""
    # single process: SIGTERM while the data loads stops at once; from the first batch on, GracefulStop
    single = contextlib.nullcontext() if trainer.world_size > 1 else _sigterm_raises()
    try:
        with single:
            trainer.fit(module, datamodule=datamodule, ckpt_path=checkpoint, weights_only=True)
    except _StopRequested:
        raise RunInterrupted(graceful.received, graceful.resume_point(), then=graceful.requeue_handler(),
                             shared=True) from None
    except (KeyboardInterrupt, SystemExit) as stop:
        # before GracefulStop is in place, Lightning turns Ctrl-C into sys.exit(1) and SIGTERM (under
        # DDP) into SIGTERMException
        if not trainer.interrupted:
            raise
        signum = signal.SIGTERM if isinstance(stop, SIGTERMException) else signal.SIGINT
        raise RunInterrupted(getattr(stop.__context__, "signum", signum), graceful.resume_point(), saved_now=False) from stop
    _check_some_work(trainer, datamodule)
    if graceful.received is not None and module.diverged_at_step is None:  # after the last batch: complete anyway
        log.info("received %s after the last training batch; the run completed", signal.Signals(graceful.received).name)
