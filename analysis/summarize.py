"""Summarise finished runs: one row per experiment, mean ± std over seeds, and each variant's
difference from the baseline with a 95 % interval and Welch's t-test.

An experiment is (data, backbone, attention variant) and the value of every other resolved config
key that differs across the runs, except ``IGNORED_CONFIG_KEYS`` (the seed, paths, loggers, workers,
...), and of what the run recorded about the data it saw, the validation images it scored and an
extension of its schedule (``experiment_config``): runs average together only when all of these are
equal, and a seed counts once in each (``drop_repeated_seeds``). Differing attention/backbone options
join the variant label (``se[placement=pre]``); other keys become columns (``optim.lr``), in the
printed table, ``summary.csv`` and ``runs.csv`` alike (``label_experiments``).

    python analysis/summarize.py multirun/2026-11-26/10-00-00 [more folders...] [--baseline none] [--out DIR]

Reads every ``results.json`` beneath the folders (the contract written by training; this script
never imports the training code), prints a markdown table and writes ``summary.csv``,
``summary.md``, ``summary.tex`` and ``runs.csv`` (one row per run) into ``--out`` (default: the
first folder), each atomically.

Columns (``summary.csv``):

- ``n``: completed runs, one per seed; ``top1_mean``/``top1_std``: final-epoch validation top-1 in %,
  mean and sample standard deviation (ddof=1; empty for one seed); ``top5_mean`` (empty unless every
  run of the row recorded a top-5: a mean over fewer runs than ``n`` would not be the row's).
- ``diverged``: the row's seeds that stopped at a non-finite loss and never completed (not in ``n``);
  an experiment whose every seed diverged has no row, and ``diverged_only`` names it.
- ``delta_top1``: top-1 mean minus the mean of the baseline row of the same setting (data, backbone
  and every other key shown; a ``none`` baseline also serves a row that differs from it only in
  where attention goes, ``WHERE_ATTENTION_GOES``: SE-PRE and SE-POST against the one ResNet);
  ``delta_top1_low``/``delta_top1_high``: its 95 % Welch interval
  (Δ ± t₀.₉₇₅(ν)·√(s₁²/n₁ + s₂²/n₂), ν by Welch–Satterthwaite); ``p_value``: Welch's two-sided
  t-test (``scipy.stats.ttest_ind(equal_var=False)``). Both need two seeds on each side;
  ``delta_top1_df``: the interval's ν, and ``baseline_n`` the baseline row's runs. Printed, a Δ
  says "(one run: no CI)" or "(no spread: no CI)" where it has no interval, and an interval from
  fewer than three runs on a side ends in its ν ("ν=2.9": a std from two runs rests on one degree
  of freedom, so the interval is a rough one).
- ``pairs``, ``paired_delta_top1`` (+ ``_low``/``_high``), ``paired_p_value``: the same seed by seed
  (``ttest_rel`` over the seeds both rows ran), for runs that record ``paired_by_seed`` (``paired``).
- ``p_holm``, ``paired_p_holm``: the p-values adjusted by Holm's step-down method over the rows tested
  against the same baseline row (``comparisons``, ``paired_comparisons``: how many, Holm's m), so
  that "some module differs from none" holds at 5 % for the whole block, not for each row alone
  (``holm``); printed beside the p-value where a block tests two rows or more. The intervals are
  each row's own (unadjusted).
- ``params``, ``flops`` (2 × MACs per image), and, where runs measured them,
  ``train_images_per_s`` (mean over seeds); each with a
  ``*_delta_pct`` column: 100 · (variant / baseline − 1).
- ``speed_hardware``: what the row's speed was measured on (results.json's ``hardware``: device model,
  processes, CPU threads, jobs run at once, loader workers). A speed is averaged only over runs timed
  on one and the same hardware, a run resumed on other hardware or without a hardware record has
  none, and Δ img/s needs the baseline's hardware to be the same: speeds from different machines are
  never mixed or compared. ``speed_runs``: how many of the row's runs its speed averages (a run too
  short to time, one without a hardware record or one resumed on other hardware has none); printed
  beside the speed, "449 (1 of 3)", where fewer than ``n``.

Runs that are not ``completed`` (failed, still running) are listed apart and never averaged in; a
corrupt, empty, missing, unreadable or invalid ``results.json`` (wrong types, NaN/Inf, accuracy outside
0-100 %: ``record_problem``), or one that is not a regular file (a folder, a named pipe), is reported by
path with the reason and skipped. A ``--out`` that is a file or cannot be written is one ``error:``
line and exit code 2.

``--wandb ENTITY/PROJECT`` adds the runs of a wandb project (read with wandb's public API; see
``wandb_records`` for how a wandb run maps onto results.json's keys).
"""
from __future__ import annotations

import argparse
import fnmatch
import json
import math
import os
import stat
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
from scipy import stats

from attn_zoo.later_options import with_later_defaults
from attn_zoo.results import WANDB_SUMMARY_KEYS, write_atomic

GROUP_KEYS = ["data", "backbone", "attention"]
SPEED_KEYS = ["train_images_per_s"]
NETWORK_KEYS = ["params", "flops"]  # what the network is: equal in every run of one experiment
COST_KEYS = [*NETWORK_KEYS, *SPEED_KEYS]
RUN_COLUMNS = [
    *GROUP_KEYS, "attention_name", "seed", "status", "top1", "top5", "best_top1", "params", "flops",
    *SPEED_KEYS, "speed_hardware", "epochs", "wall_time_s", "code_versions", "error", "wandb_url", "path", "variant",
    "paired_by_seed", "speed_settings",
]
# below this many runs on a side, a Welch interval is printed with its degrees of freedom
FEW_SEEDS = 3
WELCH_COLUMNS = ["delta_top1", "delta_top1_low", "delta_top1_high", "p_value", "delta_top1_df"]
PAIRED_COLUMNS = ["pairs", "paired_delta_top1", "paired_delta_top1_low", "paired_delta_top1_high", "paired_p_value"]
# Holm's step-down adjustment of each p-value over the tests against one baseline row (m: how many)
HOLM_COLUMNS = ["p_holm", "comparisons", "paired_p_holm", "paired_comparisons"]
SUMMARY_COLUMNS = [
    *GROUP_KEYS, "n", "top1_mean", "top1_std", "top5_mean",
    "baseline_n", *WELCH_COLUMNS, *PAIRED_COLUMNS, *HOLM_COLUMNS,
    *[column for key in COST_KEYS for column in (key, f"{key}_delta_pct")], "speed_hardware", "speed_runs",
    "diverged", "wandb", "variant",
]
# Markers of a run folder that should hold a results.json (Hydra's job folder, the run log, the CSV log)
RUN_FOLDER_MARKERS = (".hydra", "run.log", "csv/metrics.csv")

# Resolved-config keys (dotted, fnmatch patterns) that do not change what a run trains or measures.
# Runs that differ only in these are one experiment (a row); any other key whose value differs
# across the runs splits the rows. The seed is what a row averages over; paths, output folders,
# loggers and Hydra's own settings say where things go; workers and the evaluation batch size give
# the same batches and the same metrics (but not the same images under trainer.limit_val_batches:
# ``val_images`` keys that); profiling and the progress bar only observe; resuming continues the same
# run to the same weights (an extension is keyed as ``extended``), and a run trainer.max_time stops
# is interrupted, not completed; data roots and archives say where the same data lie
# (``data_fingerprint`` keys which data they are).
IGNORED_CONFIG_KEYS = (
    "seed", "paths", "paths.*", "hydra", "hydra.*", "logger", "logger.*", "resume", "profile", "profile.*",
    "data.num_workers", "data.eval_batch_size", "data.root", "data.archive", "data.download",
    "trainer.profiler", "trainer.enable_progress_bar", "trainer.enable_model_summary",
    "trainer.log_every_n_steps", "trainer.enable_checkpointing", "trainer.max_time",
)
# results.json fields that say what a run trained and was scored on where its config cannot: the data
# found at data.root (or data.archive), and how many validation images were scored (data.eval_batch_size
# with trainer.limit_val_batches picks them). Keyed like config keys, so a run that lacks one (written
# before it was recorded) is a value of its own.
MEASURED_FIELDS = ("data_fingerprint", "val_images")
# sections whose differing options join the variant label (se[placement=pre]); other keys become columns
LABEL_SECTIONS = ("attention", "backbone")
# backbone keys that say only where attention goes (blocks.py): a network without attention is the same
# network at every value, so a ``none`` baseline at one value serves a variant at another
WHERE_ATTENTION_GOES = ("backbone.placement", "backbone.stages", "backbone.fused_tail")
NO_ATTENTION = "none"
ABSENT = "—"
# results.json fields that must be names, accuracies (%), and non-negative numbers when present
NAME_FIELDS = ("data", "backbone", "attention", "attention_variant", "status", "error", "wandb_url",
               "data_fingerprint", "finished_at")
INTEGER_FIELDS = ("seed", "epochs", "val_images", "train_images", "world_size")
ACCURACY_FIELDS = ("top1", "top5", "best_top1", "best_top5", "ema_top1", "ema_top5")
AMOUNT_FIELDS = ("params", "flops", "macs", "wall_time_s", *SPEED_KEYS)


@dataclass
class Scan:
    """What lies beneath the folders: one row per readable run, and the paths that could not be read."""

    runs: pd.DataFrame
    records: list[dict] = field(default_factory=list)
    problems: list[tuple[str, str]] = field(default_factory=list)


class NotRegularFile(OSError):
    """A results.json that is a folder, a named pipe or a device: never read (a pipe would block)."""


def _read_text(path: Path) -> str:
    """The text of a regular file. Opened without blocking and checked before reading, so a named
    pipe called results.json is refused instead of waited on."""
    descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    mode = os.fstat(descriptor).st_mode
    if not stat.S_ISREG(mode):
        os.close(descriptor)
        kind = "a folder" if stat.S_ISDIR(mode) else "a named pipe" if stat.S_ISFIFO(mode) else "a device or socket"
        raise NotRegularFile(f"not a regular file: {kind}")
    with os.fdopen(descriptor, "rb") as stream:
        return stream.read().decode("utf-8")


def read_results(path: Path) -> tuple[dict | None, str | None]:
    """(record, None) for a usable results.json, else (None, why not): only regular files are read,
    and a record with a wrong type, NaN/Inf or an impossible accuracy is refused (``record_problem``)."""
    try:
        text = _read_text(path)
    except NotRegularFile as error:
        return None, f"unusable results.json ({error})"
    except (OSError, UnicodeDecodeError) as error:
        return None, f"unreadable results.json ({error})"
    if not text.strip():
        return None, "empty results.json"
    try:
        record = json.loads(text)
    except (ValueError, RecursionError) as error:
        return None, f"unreadable results.json (corrupt JSON: {error})"
    if not isinstance(record, dict) or record.get("schema") != 1:
        return None, "unusable results.json (not schema 1)"
    problem = record_problem(record)
    return (None, f"invalid results.json ({problem})") if problem else (record, None)


def _shown(value) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= 60 else text[:57] + "..."


def _is_real(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _field_problem(key: str, value) -> str | None:
    """Why ``value`` cannot be results.json's ``key`` (None when it can or is absent)."""
    if value is None:
        return None
    if key in NAME_FIELDS and not isinstance(value, str):
        return f"{key} = {_shown(value)}: not a name"
    if key in INTEGER_FIELDS and not (isinstance(value, int) and not isinstance(value, bool)):
        return f"{key} = {_shown(value)}: not an integer"
    if key in ACCURACY_FIELDS and not (_is_real(value) and 0 <= value <= 100):
        return f"{key} = {_shown(value)}: not a finite accuracy in [0, 100] %"
    if key in AMOUNT_FIELDS and not (_is_real(value) and math.isfinite(value) and value >= 0):
        return f"{key} = {_shown(value)}: not a finite non-negative number"
    if key == "config" and not isinstance(value, dict):
        return f"config = {_shown(value)}: not a mapping"
    return None


def _versions_problem(versions) -> str | None:
    if versions is None or (isinstance(versions, list) and all(isinstance(version, str) for version in versions)):
        return None
    return f"code_versions = {_shown(versions)}: not a list of names"


def _hardware_problem(hardware) -> str | None:
    """``hardware`` must be a non-empty list of mappings, each naming its device."""
    if hardware is None:
        return None
    if isinstance(hardware, list) and hardware and all(
            isinstance(entry, dict) and isinstance(entry.get("device"), str) for entry in hardware):
        return None
    return f"hardware = {_shown(hardware)}: not a list of {{'device': name, ...}} entries"


def _history_problem(history) -> str | None:
    """Per-epoch rows must be mappings with an integer epoch and accuracies in [0, 100] %."""
    if history is None:
        return None
    if not isinstance(history, list):
        return f"history = {_shown(history)}: not a list"
    for row in history:
        if not isinstance(row, dict) or _field_problem("epochs", row.get("epoch")) or row.get("epoch") is None:
            return f"history row {_shown(row)}: no integer epoch"
        if problem := next(filter(None, (_field_problem(key, row.get(key)) for key in ACCURACY_FIELDS)), None):
            return f"history: {problem}"
    return None


def _schedule_problem(schedule) -> str | None:
    """``max_epochs_history`` must be a list of [step, epochs] integer pairs (epochs null when unknown)."""
    if schedule is None:
        return None
    pairs = isinstance(schedule, list) and schedule and all(
        isinstance(pair, list) and len(pair) == 2 and not _field_problem("epochs", pair[0])
        and not _field_problem("epochs", pair[1]) for pair in schedule)
    return None if pairs else f"max_epochs_history = {_shown(schedule)}: not a list of [step, epochs] pairs"


def record_problem(record: dict) -> str | None:
    """The first reason a schema-1 record cannot be used (wrong type, NaN/Inf, accuracy outside
    0-100 %), or None. Such a record is skipped, never averaged: one bad file must not bend a row."""
    keys = (*NAME_FIELDS, *INTEGER_FIELDS, *ACCURACY_FIELDS, *AMOUNT_FIELDS, "config")
    problems = (_field_problem(key, record.get(key)) for key in keys)
    return (next(filter(None, problems), None) or _history_problem(record.get("history"))
            or _schedule_problem(record.get("max_epochs_history")) or _hardware_problem(record.get("hardware"))
            or _versions_problem(record.get("code_versions")))


def _number(value) -> float:
    """A float, or NaN for anything that is not a finite-or-infinite real number."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return math.nan
    return float(value)


def speed_hardware(record: dict) -> str | None:
    """The hardware a run's speed was measured on, as one comparable string (``NVIDIA H200``,
    ``AMD EPYC 7763 64-Core Processor, 2 threads``, ``..., 2 processes, 4 jobs at once, 8 loader
    workers``); None, so no speed, for a run that did not record it (older results.json, or a wandb
    run without it: two such runs may come from two machines, or one under other work, and compared
    as one "unknown" machine gave a Δ img/s of nothing) or one resumed on other hardware (its epochs'
    speeds mix machines)."""
    hardware = record.get("hardware")
    if not hardware:
        return None
    if len(hardware) > 1:
        return None
    entry = hardware[0]
    parts = [entry["device"]]
    if isinstance(entry.get("threads"), int):
        parts.append(f"{entry['threads']} threads")
    if isinstance(entry.get("processes"), int) and entry["processes"] > 1:
        parts.append(f"{entry['processes']} processes")
    if isinstance(entry.get("parallel_jobs"), int) and entry["parallel_jobs"] > 1:
        parts.append(f"{entry['parallel_jobs']} jobs at once")
    if isinstance(entry.get("loader_workers"), int):  # the same batches, not the same speed
        parts.append(f"{entry['loader_workers']} loader workers")
    # not torch's version: runs recorded before it was would stop comparing with later ones
    return ", ".join(parts)


# ignored keys (one experiment) that change how fast a run trains: Lightning turns each logged value
# into a Python number, waiting for the device, every trainer.log_every_n_steps steps; the profiler
# runs inside the timed epochs
SPEED_SETTING_KEYS = ("trainer.log_every_n_steps", "profile.steps", "profile.start_step")


def speed_settings(record: dict) -> str:
    """The settings of ``SPEED_SETTING_KEYS`` a run's speed was measured with, as one comparable string:
    runs of one row average their speeds, and compare with the baseline's, only at equal settings."""
    config = record.get("config") if isinstance(record.get("config"), dict) else {}
    flat = flatten_config(config)
    return json.dumps({key: flat.get(key) for key in SPEED_SETTING_KEYS}, sort_keys=True, default=str)


def _row(record: dict, folder: Path | str) -> dict:
    timed_on = speed_hardware(record)
    speeds = {key: _number(record.get(key)) if timed_on else math.nan for key in SPEED_KEYS}
    if all(math.isnan(speed) for speed in speeds.values()):
        timed_on = None  # no speed to compare: the run does not decide its row's hardware
    return {
        "data": record.get("data"),
        "backbone": record.get("backbone"),
        "attention": record.get("attention_variant") or record.get("attention"),
        "attention_name": record.get("attention"),
        "seed": record.get("seed"),
        "status": record.get("status"),
        "top1": _number(record.get("top1")),
        "top5": _number(record.get("top5")),
        "best_top1": _number(record.get("best_top1")),
        "params": _number(record.get("params")),
        "flops": _number(record.get("flops")),
        **speeds,
        "speed_hardware": timed_on,
        "epochs": record.get("epochs"),
        "code_versions": " → ".join(record.get("code_versions") or []) or None,
        "wall_time_s": _number(record.get("wall_time_s")),
        "error": record.get("error"),
        "wandb_url": record.get("wandb_url"),
        "path": str(folder),
        "variant": record.get("attention_variant") or record.get("attention"),
        "paired_by_seed": record.get("paired_by_seed") is True,
        "speed_settings": speed_settings(record) if timed_on else None,
    }


def _run_folders_without_results(folder: Path) -> list[Path]:
    marked = {marker_path.parent if marker != "csv/metrics.csv" else marker_path.parent.parent
              for marker in RUN_FOLDER_MARKERS for marker_path in folder.rglob(marker)}
    return sorted(path for path in marked if not (path / "results.json").exists())


def results_paths(folder: Path) -> list[Path]:
    """Every entry named results.json beneath ``folder``, whatever it is (a file, a folder, a pipe,
    a broken or looping link), so each one is either read or reported; linked folders are not
    followed (as ``Path.rglob``), so a link cycle cannot loop."""
    return sorted(Path(root) / "results.json" for root, folders, files in os.walk(folder)
                  if "results.json" in files or "results.json" in folders)


def scan(folders: list[Path], extra: list[tuple[dict, str]] = ()) -> Scan:
    """Read every results.json beneath ``folders`` (and take ``extra`` (record, origin) pairs, such as
    wandb runs); report and skip the ones that cannot be used; label each run's experiment; count a
    seed of an experiment once (``drop_repeated_seeds``)."""
    rows, records, problems, written = [], [], [], []
    for record, origin in extra:
        if problem := record_problem(record):
            problems.append((origin, f"invalid record ({problem})"))
            continue
        rows.append(_row(record, origin))
        records.append(record)
        written.append(0.0)
    seen: set[str] = set()
    for folder in folders:
        for path in results_paths(Path(folder)):
            if os.path.realpath(path) in seen:
                continue
            seen.add(os.path.realpath(path))
            record, problem = read_results(path)
            if problem:
                problems.append((str(path), problem))
                continue
            rows.append(_row(record, path.parent))
            records.append(record)
            written.append(_modified(path))
        for run_folder in _run_folders_without_results(Path(folder)):
            problems.append((str(run_folder / "results.json"), "missing results.json"))
    runs = label_experiments(pd.DataFrame(rows, columns=RUN_COLUMNS), [experiment_config(r) for r in records])
    runs, records, repeated = drop_repeated_seeds(runs, records, written)
    problems += repeated
    for path, problem in problems:
        print(f"skipping {problem}: {path}", file=sys.stderr)
    return Scan(runs, records, problems)


def _modified(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


# ---------------------------------------------------------------- one seed counted once


def drop_repeated_seeds(runs: pd.DataFrame, records: list[dict], written: list[float]):
    """(runs, records, (path, why) of each run left out): among the completed runs of one experiment
    a seed counts once, since two runs of one config and seed (a copied run folder, a packed results/
    folder read beside its multirun/ origin, a rerun) are not independent samples. The newest is kept:
    by results.json's ``finished_at``, then the file's modification time (``written``), then the
    first path in sorted order, so the choice does not depend on the order the folders were given.
    An interrupted or failed run is left out too where a completed run of its experiment and seed is
    counted (an interrupted wandb run whose resume is a new wandb run, a failed attempt rerun): that
    seed is done, and listing it as unfinished would say otherwise. A diverged run stays listed: on a
    GPU a seed is no replay, and its divergence is an outcome."""
    completed, paths = is_completed(runs).tolist(), runs["path"].tolist()
    identified = [index for index in range(len(runs)) if completed[index] and _sample_id(records[index])]
    counted = sorted(identified, key=lambda index: paths[index])
    counted.sort(key=lambda index: (records[index].get("finished_at") or "", written[index]), reverse=True)
    experiments = experiment_key(runs).tolist()
    kept: dict[tuple[str, str], str] = {}
    repeated: dict[int, str] = {}
    for index in counted:
        sample = (experiments[index], _sample_id(records[index]))
        if sample in kept:
            what = "seed" if records[index].get("seed") is not None else "process and end (no seed)"
            repeated[index] = f"same experiment and {what} as {kept[sample]}"
        else:
            kept[sample] = paths[index]
    for index in range(len(runs)):
        sample = (experiments[index], _sample_id(records[index]))
        if runs["status"].iloc[index] in ("interrupted", "failed") and sample[1] and sample in kept:
            repeated[index] = f"{runs['status'].iloc[index]}; {kept[sample]} completed the same experiment and seed"
    remaining = [index for index in range(len(runs)) if index not in repeated]
    problems = sorted((paths[index], why) for index, why in repeated.items())
    return runs.iloc[remaining].reset_index(drop=True), [records[index] for index in remaining], problems


# ---------------------------------------------------------------- what makes an experiment


def experiment_config(record: dict) -> dict | None:
    """A run's resolved config plus what it recorded about its data, its scoring and its schedule
    (``MEASURED_FIELDS``, ``extended``): what tells its experiment apart. A run without a config says
    nothing about its keys and gets none."""
    config = recorded_config(record)
    if not config:
        return config
    measured = {key: record[key] for key in MEASURED_FIELDS if record.get(key) is not None}
    if extension := extended(record.get("max_epochs_history")):
        measured["extended"] = extension
    if isinstance(record.get("world_size"), int) and record["world_size"] > 1:  # absent: one process
        measured["world_size"] = record["world_size"]  # per-process batches: another global batch
    return {**config, **measured}


def recorded_config(record: dict) -> dict | None:
    """A run's resolved config, with each option its choices gained since the run was made read as the
    value that built them before (``attn_zoo.later_options``): a module that gains an option does not
    split its earlier runs from new ones."""
    return with_later_defaults(record.get("config"))


def extended(schedule: list | None) -> str | None:
    """``2 → 3 from step 6``: a run whose LR schedule was rebuilt for another ``trainer.max_epochs``
    when it resumed (results.json's ``max_epochs_history``, [step, epochs] pairs). None for a run
    trained as first scheduled (one pair, or none recorded): resuming alone does not change the run."""
    if not schedule or len(schedule) < 2:
        return None
    (_, first), *later = schedule
    steps = [f"{epochs} from step {step}" for step, epochs in later]
    return " → ".join(["?" if first is None else str(first), *steps])


def flatten_config(config: dict | None) -> dict[str, object]:
    """``{"optim": {"lr": 0.1}}`` → ``{"optim.lr": 0.1}`` (lists stay whole, empty mappings vanish)."""
    if not config:
        return {}
    return pd.json_normalize([config], sep=".").iloc[0].to_dict()


def is_ignored(key: str) -> bool:
    """Whether a flattened config key is one of ``IGNORED_CONFIG_KEYS`` (does not change the experiment)."""
    return any(fnmatch.fnmatchcase(key, pattern) for pattern in IGNORED_CONFIG_KEYS)


def _canonical(flat: dict, key: str) -> str:
    """A comparable, hashable form of a config value (lists included); ``ABSENT`` when the key is missing.
    Numbers compare by value: Hydra reads ``label_smoothing=0`` as 0, the yaml's default is 0.0."""
    return json.dumps(_by_value(flat[key]), sort_keys=True, default=str) if key in flat else ABSENT


def _by_value(value):
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, list):
        return [_by_value(item) for item in value]
    if isinstance(value, dict):
        return {key: _by_value(item) for key, item in value.items()}
    return value


def experiment_keys(runs: pd.DataFrame, flats: list[dict]) -> list[str]:
    """Config keys that tell the runs' experiments apart beyond the names a row already shows: not
    ignored, and not constant within each group of runs those names pick, which for an
    ``attention.*`` key is (data, backbone, variant): the variant label already says every option
    that differs from the module's defaults (``attention.reduction`` of se beside cbam); for any
    other key it is (data, backbone), so a learning rate that differs between se and its baseline
    is shown even when each variant used only one."""
    keys = sorted({key for flat in flats for key in flat if not is_ignored(key)})
    pairs = [json.dumps([d, b], default=str) for d, b in zip(runs["data"], runs["backbone"])]
    variants = [f"{pair}{variant}" for pair, variant in zip(pairs, runs["variant"])]
    return [key for key in keys
            if _varies_within(variants if key.startswith("attention.") else pairs, flats, key)]


def _varies_within(groups: list[str], flats: list[dict], key: str) -> bool:
    """Whether ``key`` takes two values (absent being one) among the configured runs of one group."""
    seen: dict[str, set[str]] = {}
    for group, flat in zip(groups, flats):
        if flat:  # a run without a config says nothing about its keys
            seen.setdefault(group, set()).add(_canonical(flat, key))
    return any(len(values) > 1 for values in seen.values())


def _label_value(value) -> str:
    """How a row shows a setting: numbers by value, as ``_canonical`` compares them (0.0 is 0)."""
    value = _by_value(value)
    return json.dumps(value, separators=(",", ":")) if isinstance(value, (list, dict)) else str(value)


def _with_options(variant: str, options: list[str]) -> str:
    """``se[reduction=8]`` + ``placement=pre`` → ``se[reduction=8,placement=pre]``."""
    if not options:
        return variant
    if variant.endswith("]") and "[" in variant:
        return f"{variant[:-1]},{','.join(options)}]"
    return f"{variant}[{','.join(options)}]"


def label_experiments(runs: pd.DataFrame, configs: list[dict | None]) -> pd.DataFrame:
    """``runs`` with each run's experiment made explicit: differing attention/backbone options join
    the ``attention`` label (``se[placement=pre]``), other differing keys become columns named by
    the key (``optim.lr``), and hidden ``_experiment``/``_setting`` keys group rows and find baselines."""
    runs = runs.copy()
    flats = [flatten_config(config) for config in configs]
    keys = experiment_keys(runs, flats)
    label_keys = [key for key in keys if key.split(".")[0] in LABEL_SECTIONS]
    column_keys = [key for key in keys if key not in label_keys]
    runs["attention"] = [
        _with_options(str(variant), [f"{key.split('.', 1)[1]}={_label_value(flat.get(key, ABSENT))}"
                                     for key in label_keys if flat])
        for variant, flat in zip(runs["variant"], flats)
    ]
    for key in column_keys:  # a top-level key named like a run field (``epochs``) keeps a prefix
        column = f"config.{key}" if key in RUN_COLUMNS or key in SUMMARY_COLUMNS else key
        runs[column] = [_label_value(flat[key]) if key in flat else ABSENT for flat in flats]
    runs["_experiment"] = [json.dumps([_canonical(flat, key) for key in keys]) for flat in flats]
    runs["_setting"] = [json.dumps([_canonical(flat, key) for key in keys if not key.startswith("attention.")])
                        for flat in flats]
    runs["_setting_for_none"] = [json.dumps([_canonical(flat, key) for key in keys if not key.startswith("attention.")
                                             and key not in WHERE_ATTENTION_GOES]) for flat in flats]
    # what the plots' Pareto fronts are drawn per, to read: as a none baseline serves (backbone options
    # included, but not where attention goes: SE-PRE competes with SE and the one ResNet on one front)
    runs["_setting_label"] = [" ".join(f"{key}={_label_value(flat[key])}" for key in keys
                                       if not key.startswith("attention.") and key not in WHERE_ATTENTION_GOES
                                       and key in flat) for flat in flats]
    return runs


def setting_columns(frame: pd.DataFrame) -> list[str]:
    """The config keys shown as columns (``optim.lr``): whatever ``label_experiments`` added."""
    return [column for column in frame.columns
            if column not in RUN_COLUMNS and column not in SUMMARY_COLUMNS and not column.startswith("_")
            and column != "attention_name"]


def experiment_label(row: pd.Series, columns: list[str]) -> str:
    """The variant label and the shown config keys: ``se[placement=pre] optim.lr=0.05`` (plots, legends)."""
    return " ".join([str(row["attention"]), *(f"{key}={row[key]}" for key in columns)])


RESULT_STATUSES = ("completed", "diverged", "failed", "interrupted", "running")


def _nested(flat: dict) -> dict:
    """A run's wandb config (the resolved config with dotted keys) nested again, as results.json holds it."""
    nested: dict = {}
    for key, value in flat.items():
        *parents, last = key.split(".")
        target = nested
        for parent in parents:
            target = target.setdefault(parent, {})
        target[last] = value
    return nested


def _section(config: dict, section: str) -> dict:
    value = config.get(section)
    return value if isinstance(value, dict) else {}


def _wandb_status(state: str, summary: dict) -> str:
    """The status the run wrote (its summary's ``status``, as in results.json); a run that wrote none
    (killed, or not an attn_zoo run) counts as failed, one that wandb shows running as running."""
    if state in ("running", "pending"):
        return "running"
    status = summary.get("status")
    return status if status in RESULT_STATUSES else "failed"


def wandb_records(project: str, api=None) -> list[tuple[dict, str]]:
    """(results.json-shaped record, ``wandb:<project>/<run id>``) per run of a wandb project.

    Reads exactly what ``attn_zoo.train`` writes: the run config is the resolved config with dotted keys
    (``data.name``, ``backbone.name``, ``attention.name``, ``seed``, ...; nested again here as
    ``config``), the summary holds results.json's ``status``, ``attention_variant``, accuracies (%),
    params, FLOPs, epochs and speeds. ``api`` is for tests; by default ``wandb.Api()`` (wandb is
    imported only here).
    """
    if api is None:
        import wandb

        api = wandb.Api()
    records = []
    for run in api.runs(project):
        # summary_metrics is the plain dict behind run.summary in wandb's public API
        config, summary = _nested(dict(run.config)), dict(getattr(run, "summary_metrics", None) or run.summary)
        status = _wandb_status(run.state, summary)
        record = {key: summary.get(key) for key in WANDB_SUMMARY_KEYS}
        record.update(
            schema=1, status=status, seed=config.get("seed"), config=config, wandb_url=getattr(run, "url", None),
            **{section: _section(config, section).get("name") for section in ("data", "backbone", "attention")},
            error=None if status in ("completed", "running") else _wandb_reason(summary) or f"{status} (wandb state: {run.state})",
        )
        record["attention_variant"] = record["attention_variant"] or record["attention"]
        records.append((record, f"wandb:{project}/{run.id}"))
    return records


def _wandb_reason(summary: dict) -> str | None:
    """Why a run did not complete, from what it wrote to its summary (its error line, the step it
    diverged at, what interrupted it); None for a run that wrote none."""
    if summary.get("error"):
        return summary["error"]
    if summary.get("diverged_at_step") is not None:
        return f"diverged: non-finite loss at step {summary['diverged_at_step']}"
    return f"interrupted by {summary['interrupted_by']}" if summary.get("interrupted_by") else None


def _sample_id(record: dict) -> str | None:
    """What makes a run one sample of its experiment: its seed; for a run without one (``seed=null``),
    the process and second it finished in with its accuracy, which a copy of its folder shares and
    another run does not. None when neither is recorded (the run is counted)."""
    if record.get("seed") is not None:
        return json.dumps(record["seed"])
    if record.get("finished_at"):
        return json.dumps(["no seed", record["finished_at"], record.get("pid"), record.get("top1")])
    return None


def is_completed(runs: pd.DataFrame) -> pd.Series:
    """Completed runs with a final accuracy: the only ones averaged."""
    return (runs["status"] == "completed") & runs["top1"].notna()


def welch(variant: np.ndarray, baseline: np.ndarray) -> tuple[float, float, float, float, float]:
    """Difference of means, its 95 % Welch interval, Welch's two-sided p-value and the interval's degrees
    of freedom ν (Welch–Satterthwaite), all from scipy's ``ttest_ind(equal_var=False)`` (NaN where
    undefined: fewer than two seeds a side, or no spread)."""
    variant, baseline = np.asarray(variant, float), np.asarray(baseline, float)
    delta = variant.mean() - baseline.mean()
    # no spread: every seed equal on both sides (np.ptp is exact; a variance of equal floats can come out
    # 1e-28 and give a zero-width interval and p ≈ 0)
    if len(variant) < 2 or len(baseline) < 2 or np.ptp(variant) + np.ptp(baseline) == 0:
        return delta, math.nan, math.nan, math.nan, math.nan
    with warnings.catch_warnings():
        # scipy's warning for a constant sample (seeds that agree to the last digit): one side with
        # spread keeps the test well defined
        warnings.filterwarnings("ignore", "Precision loss occurred in moment calculation", RuntimeWarning)
        test = stats.ttest_ind(variant, baseline, equal_var=False)
    interval = test.confidence_interval(0.95)
    return delta, float(interval.low), float(interval.high), float(test.pvalue), float(test.df)


def holm(p_values) -> np.ndarray:
    """Holm's step-down adjustment (Holm 1979): the k-th smallest of m p-values becomes
    max over j ≤ k of min(1, (m − j + 1)·p₍ⱼ₎); NaN (no test) stays NaN and does not count in m.
    Controls the chance of any false "differs" among the m at the test's level; scipy has only the
    false-discovery-rate adjustments (``false_discovery_control``)."""
    p_values = np.asarray(p_values, float)
    adjusted = np.full_like(p_values, math.nan)
    tested = ~np.isnan(p_values)
    order = np.argsort(p_values[tested], kind="stable")
    ranked = p_values[tested][order]
    steps = np.minimum(1.0, np.maximum.accumulate((len(ranked) - np.arange(len(ranked))) * ranked))
    within = np.empty_like(steps)
    within[order] = steps
    adjusted[tested] = within
    return adjusted


def _holm_by_baseline(table: pd.DataFrame, references: list[pd.Series | None]) -> pd.DataFrame:
    """``HOLM_COLUMNS`` for each row: its p-values adjusted over the rows tested against its baseline row."""
    family = pd.Series([None if reference is None else reference["_key"] for reference in references], index=table.index)
    columns = pd.DataFrame(math.nan, index=table.index, columns=HOLM_COLUMNS)
    for key, rows in table.groupby(family, dropna=True).groups.items():
        for raw, adjusted, count in (("p_value", "p_holm", "comparisons"),
                                     ("paired_p_value", "paired_p_holm", "paired_comparisons")):
            p_values = table.loc[rows, raw].to_numpy(float)
            columns.loc[rows, adjusted] = holm(p_values)
            tested = rows[~np.isnan(p_values)]  # m stands beside the p-values it adjusted, not the baseline's row
            columns.loc[tested, count] = len(tested)
    return columns.astype({"comparisons": "Int64", "paired_comparisons": "Int64"})


def paired(variant: pd.DataFrame, baseline: pd.DataFrame) -> dict[str, float]:
    """Δ top-1 seed by seed (``PAIRED_COLUMNS``): the mean of the differences over the seeds both rows
    ran, its 95 % interval and p-value from scipy's ``ttest_rel``. Only for runs that record
    ``paired_by_seed`` (made since attention modules draw from streams of their own: a seed's runs
    share the backbone's starting weights and the data order, so much of the seed noise cancels in
    the difference); earlier runs of one seed shared nothing, and pairing them gains nothing. NaN
    where fewer than two seeds match, a row repeats a seed, or the differences have no spread."""
    result = dict.fromkeys(PAIRED_COLUMNS, math.nan)
    if not (variant["paired_by_seed"].all() and baseline["paired_by_seed"].all()):
        return result
    if variant["seed"].isna().any() or baseline["seed"].isna().any() or \
            variant["seed"].duplicated().any() or baseline["seed"].duplicated().any():
        return result
    both = variant.set_index("seed")["top1"].to_frame("variant").join(
        baseline.set_index("seed")["top1"].to_frame("baseline"), how="inner")
    if len(both) < 2:
        return result
    differences = (both["variant"] - both["baseline"]).to_numpy(float)
    result.update(pairs=len(both), paired_delta_top1=float(differences.mean()))
    if np.ptp(differences) > 0:
        test = stats.ttest_rel(both["variant"].to_numpy(float), both["baseline"].to_numpy(float))
        interval = test.confidence_interval(0.95)
        result.update(paired_delta_top1_low=float(interval.low), paired_delta_top1_high=float(interval.high),
                      paired_p_value=float(test.pvalue))
    return result


def _percent_change(value: float, reference: float) -> float:
    if not (np.isfinite(value) and np.isfinite(reference)) or reference == 0:
        return math.nan
    return 100.0 * (value / reference - 1.0)


def _ensure_experiments(runs: pd.DataFrame) -> pd.DataFrame:
    """Runs built without ``scan`` (no config read): each (data, backbone, variant) is one experiment."""
    if "_experiment" in runs.columns:
        return runs
    runs = runs.copy()
    if "variant" not in runs.columns or runs["variant"].isna().all():
        runs["variant"] = runs["attention"]
    runs["_experiment"] = runs["_setting"] = runs["_setting_for_none"] = "[]"
    runs["_setting_label"] = ""
    return runs


def experiment_key(runs: pd.DataFrame) -> pd.Series:
    """Each run's experiment as one string: its row of the summary."""
    runs = _ensure_experiments(runs)
    return runs["_experiment"] + runs["data"].astype(str) + "|" + runs["backbone"].astype(str) + "|" + \
        runs["variant"].astype(str)


def _baseline_key(row: pd.Series) -> tuple:
    """What a row's baseline shares with it: data, backbone and every shown non-attention setting."""
    return (row["data"], row["backbone"], row["_setting"])


def _none_baseline_key(row: pd.Series) -> tuple:
    """The same but for ``WHERE_ATTENTION_GOES``: what a ``none`` baseline must share with a row."""
    return (row["data"], row["backbone"], row["_setting_for_none"])


def _references(table: pd.DataFrame, baseline: str | None) -> list[pd.Series | None]:
    """Each row's baseline row: the one of its setting; with baseline ``none`` and no ``none`` row in
    that setting, the one whose setting differs only in where attention goes (SE-PRE against the
    one ResNet); None where there is no such row or more than one (they differ in an option, shown)."""
    exact: dict[tuple, list[pd.Series]] = {}
    anywhere: dict[tuple, list[pd.Series]] = {}
    for _, row in table.iterrows():
        if row["variant"] == baseline:
            exact.setdefault(_baseline_key(row), []).append(row)
            anywhere.setdefault(_none_baseline_key(row), []).append(row)
    found = []
    for _, row in table.iterrows():
        rows = exact.get(_baseline_key(row), [])
        if not rows and baseline == NO_ATTENTION:
            rows = anywhere.get(_none_baseline_key(row), [])
        found.append(_only(rows))
    return found


def _comparison(row: pd.Series, reference: pd.Series | None, runs: dict[str, pd.DataFrame], baseline: str | None) -> dict:
    """Δ top-1 with its Welch interval and p-value (and seed by seed, ``paired``), and the cost changes,
    of ``row`` against ``reference``."""
    comparison = dict.fromkeys(["baseline_n", *WELCH_COLUMNS, *PAIRED_COLUMNS], math.nan)
    comparison.update({f"{key}_delta_pct": math.nan for key in COST_KEYS})
    if reference is None:
        return comparison
    comparison.update(baseline_n=reference["n"])
    if row["variant"] == baseline:  # the baseline itself: Δ 0, no test of a sample against itself
        comparison.update(delta_top1=0.0)
    else:
        variant, base = runs[row["_key"]], runs[reference["_key"]]
        comparison.update(zip(WELCH_COLUMNS, welch(variant["top1"].to_numpy(), base["top1"].to_numpy())))
        comparison.update(paired(variant, base))
    for cost in COST_KEYS:
        comparison[f"{cost}_delta_pct"] = _percent_change(row[cost], reference[cost])
    if row["speed_hardware"] != reference["speed_hardware"] or row["speed_settings"] != reference["speed_settings"]:
        # timed on different machines, or with other logging or profiling: not comparable
        comparison.update({f"{key}_delta_pct": math.nan for key in SPEED_KEYS})
    return comparison


def summarize(runs: pd.DataFrame, baseline: str | None = "none") -> pd.DataFrame:
    """Aggregate completed runs per experiment (data, backbone, variant and every other config key
    that differs: see ``label_experiments``) and compare each with ``baseline`` in the same setting."""
    runs = _ensure_experiments(runs)
    if "speed_hardware" not in runs.columns:  # runs built without scan
        runs = runs.assign(speed_hardware=np.where(runs["train_images_per_s"].notna(), "unknown", None))
    if "speed_settings" not in runs.columns:
        runs = runs.assign(speed_settings=np.where(runs["train_images_per_s"].notna(), "unknown", None))
    if "paired_by_seed" not in runs.columns:
        runs = runs.assign(paired_by_seed=False)
    settings = setting_columns(runs)
    completed = runs[is_completed(runs)].copy()
    if completed.empty:
        return pd.DataFrame(columns=[*GROUP_KEYS, *settings, *SUMMARY_COLUMNS[3:]])
    completed["_key"] = experiment_key(completed)
    grouped = completed.groupby("_key", sort=True, dropna=False)
    table = grouped.agg(
        **{column: (column, "first")
           for column in [*GROUP_KEYS, *settings, "variant", "_setting", "_setting_for_none", "_setting_label"]},
        n=("top1", "size"),
        top1_mean=("top1", "mean"),
        top1_std=("top1", "std"),
        top5_mean=("top5", "mean"),
        params=("params", "first"),
        flops=("flops", "first"),
        **{key: (key, "mean") for key in SPEED_KEYS},
        speed_hardware=("speed_hardware", _one_hardware),
        speed_settings=("speed_settings", _one_hardware),
        speed_runs=("train_images_per_s", "count"),
    ).reset_index()
    # runs timed on different hardware, or logging or profiling at different intervals
    table.loc[table["speed_hardware"].isna() | table["speed_settings"].isna(), SPEED_KEYS] = math.nan
    table.loc[grouped["top5"].count().to_numpy() < table["n"].to_numpy(), "top5_mean"] = math.nan
    for cost in NETWORK_KEYS:  # two networks in one row (mixed_networks says which): no one size is theirs
        table.loc[grouped[cost].nunique().to_numpy() > 1, cost] = math.nan
    table.loc[table["train_images_per_s"].isna(), "speed_runs"] = 0
    table["diverged"] = table["_key"].map(_diverged_counts(runs)).fillna(0).astype(int)
    runs_of = dict(iter(grouped))
    references = _references(table, baseline)
    comparisons = [_comparison(row, reference, runs_of, baseline)
                   for (_, row), reference in zip(table.iterrows(), references)]
    table = pd.concat([table, pd.DataFrame(comparisons, index=table.index)], axis=1)
    table = pd.concat([table, _holm_by_baseline(table, references)], axis=1)
    table["wandb"] = [_wandb_links(group) for _, group in grouped]
    table["_after_baseline"] = table["variant"] != baseline  # the baseline leads its block
    order = ["data", "backbone", *settings, "_setting", "_after_baseline", "attention"]
    table = table.sort_values(order, kind="stable", key=lambda column: column.astype(str))
    columns = [*GROUP_KEYS, *settings, *SUMMARY_COLUMNS[3:], "_setting_label"]  # the last hidden (plots)
    return table[columns].reset_index(drop=True)


def _diverged_seeds(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per (experiment key, seed) that diverged and never completed: a row's n counts only the
    seeds that finished, and a module that diverges in one seed of three must not read as the same
    evidence as three clean seeds. A diverged run read twice (a packed copy beside its origin) is one
    seed; a seed rerun to completion is in n, not here."""
    runs = _ensure_experiments(runs)
    keys = experiment_key(runs)
    seeds = (runs["seed"] if "seed" in runs.columns else pd.Series(None, index=runs.index, dtype=object)).astype(str)
    completed = set(zip(keys[is_completed(runs)], seeds[is_completed(runs)]))
    diverged = pd.DataFrame({"key": keys, "seed": seeds})[runs["status"] == "diverged"]
    diverged = diverged.loc[np.array([pair not in completed for pair in zip(diverged["key"], diverged["seed"])], dtype=bool)]
    return diverged.drop_duplicates()


def _diverged_counts(runs: pd.DataFrame) -> pd.Series:
    return _diverged_seeds(runs)["key"].value_counts()


def diverged_only(runs: pd.DataFrame) -> list[str]:
    """The experiments whose every seed diverged, one line each: they have no row in the table, so
    ``summarize`` warns rather than let a module that never trained drop out of the comparison."""
    runs = _ensure_experiments(runs)
    keys = experiment_key(runs)
    counts = _diverged_counts(runs)
    lines = []
    for key in sorted(set(counts.index) - set(keys[is_completed(runs)])):
        first = runs[keys == key].iloc[0]
        label = " ".join(str(part) for part in (first["data"], first["backbone"], first["attention"],
                                                 first["_setting_label"]) if part)
        lines.append(f"{label}: each of its {counts[key]} seeds diverged; it has no row in the table")
    return lines


def mixed_code(runs: pd.DataFrame) -> list[str]:
    """The completed runs trained by more than one code version (resumed under other code), one line
    each: their result mixes both, which only ``runs.csv``'s ``code_versions`` showed."""
    if "code_versions" not in runs.columns:
        return []
    completed = runs[is_completed(runs) & runs["code_versions"].fillna("").str.contains(" → ", regex=False)]
    lines = []
    for _, row in completed.sort_values("path").iterrows():
        why = ("resumed from a checkpoint that did not record its code" if row["code_versions"].startswith("unknown →")
               else "resumed under other code")
        variant = row["variant"] if "variant" in row else row["attention"]
        lines.append(f"{row['data']} {row['backbone']} {variant} seed {row['seed']}: trained by "
                     f"{row['code_versions']} ({why}), in {row['path']}")
    return lines


def mixed_networks(runs: pd.DataFrame) -> list[str]:
    """The rows whose completed runs differ in parameters or FLOPs, one line each: runs of two networks
    counted as one experiment (code that changed a module without a config key, a wrong
    ``LATER_OPTIONS`` entry). ``summarize`` shows no params or FLOPs for such a row; the scripts warn
    (summarize) or refuse (results_md)."""
    runs = _ensure_experiments(runs)
    completed = runs[is_completed(runs)]
    lines = []
    for _, group in completed.groupby(experiment_key(completed), sort=True):
        differing = [f"{cost} {', '.join(f'{value:,.0f}' for value in sorted(group[cost].dropna().unique()))}"
                     for cost in NETWORK_KEYS if group[cost].nunique() > 1]
        if differing:
            first = group.iloc[0]
            lines.append(f"{first['data']} {first['backbone']} {first['attention']}: its {len(group)} runs differ in "
                         f"{'; '.join(differing)} (two networks in one row?)")
    return lines


def _one_hardware(values: pd.Series) -> str | None:
    """The hardware all of a row's speeds were measured on (runs without a speed have none), or None
    (no speed shown) when they differ."""
    distinct = set(values.dropna())
    return next(iter(distinct)) if len(distinct) == 1 else None


def _only(rows: list[pd.Series]) -> pd.Series | None:
    return rows[0] if len(rows) == 1 else None


def _wandb_links(group: pd.DataFrame) -> str:
    """Markdown links to the group's wandb runs, one per seed (empty when none was logged online)."""
    return " ".join(
        f"[s{seed}]({url})" for seed, url in zip(group["seed"], group["wandb_url"]) if isinstance(url, str) and url
    )


# ---------------------------------------------------------------- presentation


def _fmt(value: float, pattern: str, empty: str = "") -> str:
    return pattern.format(value) if pd.notna(value) else empty


def _signed(value: float, digits: int = 2) -> str:
    return f"{value:+.{digits}f}".replace("-", "−") if pd.notna(value) else ""


def _signed_percent(value: float) -> str:
    """Three significant digits, so SE's +0.0132 % of FLOPs does not print as +0.0."""
    return f"{value:+.3g}".replace("-", "−") if pd.notna(value) else ""


def _delta_cell(row: pd.Series, baseline: str | None) -> str:
    """"+0.24 [−0.10, +0.58]"; an interval from fewer than three runs on a side shows its ν, "… ν=2.9";
    a Δ without an interval says why not (a row of one run, or seeds that all agree)."""
    if row["variant"] == baseline:
        return "baseline"
    if pd.isna(row["delta_top1"]):
        return ""
    delta, fewest = _signed(row["delta_top1"]), min(row["n"], row["baseline_n"])
    if fewest < 2:
        return f"{delta} (one run: no CI)"
    if pd.isna(row["delta_top1_low"]):
        return f"{delta} (no spread: no CI)"
    interval = f"{delta} [{_signed(row['delta_top1_low'])}, {_signed(row['delta_top1_high'])}]"
    # two seeds a side: each std rests on one degree of freedom, ν on ~1-2; the reader should see that
    return interval + (f" ν={row['delta_top1_df']:.1f}" if fewest < FEW_SEEDS else "")


def _paired_cells(table: pd.DataFrame, is_baseline: pd.Series) -> dict[str, list[str]]:
    """The seed-by-seed Δ and its p-value, where some row has one: "+0.31 [+0.05, +0.57] (4 seeds)"."""
    if table["pairs"].isna().all():
        return {}
    cells = []
    for _, row in table.iterrows():
        interval = (f" [{_signed(row['paired_delta_top1_low'])}, {_signed(row['paired_delta_top1_high'])}]"
                    if pd.notna(row["paired_delta_top1_low"]) else "")
        cells.append("" if pd.isna(row["pairs"]) else
                     f"{_signed(row['paired_delta_top1'])}{interval} ({int(row['pairs'])} seeds)")
    shown = {"Δ paired by seed [95 % CI]": cells,
             "p (paired)": ["" if base else _p_cell(p) for base, p in zip(is_baseline, table["paired_p_value"])]}
    if table["paired_comparisons"].ge(2).any():
        shown["p (paired, Holm)"] = ["" if base else _p_cell(p) for base, p in zip(is_baseline, table["paired_p_holm"])]
    return shown


def _p_cell(value: float) -> str:
    if pd.isna(value):
        return ""
    # 3 significant digits, trailing zeros kept: 0.0496, and 0.0500 (0.04996), not "0.05", which reads as exact
    return "<0.001" if value < 0.001 else f"{value:#.3g}"


def presentation(table: pd.DataFrame, baseline: str | None = "none") -> pd.DataFrame:
    """The table as printed: formatted strings, speed columns only where some run measured speed."""
    is_baseline = table["variant"] == baseline

    def change(column: str) -> list[str]:
        return ["" if base else _signed_percent(value) for base, value in zip(is_baseline, table[column])]

    shown = {
        "data": table["data"],
        "backbone": table["backbone"],
        "attention": table["attention"],
        **{column: table[column] for column in setting_columns(table)},
        "n": table["n"].astype(int).astype(str),
        # seeds that diverged are not in n, nor in the mean: a row says how many there were
        **({"diverged": table["diverged"].map(lambda count: str(count) if count else "")}
           if table["diverged"].gt(0).any() else {}),
        "top-1 % (mean ± std)": [
            f"{mean:.2f} ± {std:.2f}" if pd.notna(std) else f"{mean:.2f}"
            for mean, std in zip(table["top1_mean"], table["top1_std"])
        ],
        "top-5 %": table["top5_mean"].map(lambda value: _fmt(value, "{:.2f}")),
        "Δ top-1 [95 % CI]": [_delta_cell(row, baseline) for _, row in table.iterrows()],
        "p (Welch)": ["" if base else _p_cell(p) for base, p in zip(is_baseline, table["p_value"])],
        # several rows against one baseline: the p-value that holds for the block (HOLM_COLUMNS)
        **({"p (Holm)": ["" if base else _p_cell(p) for base, p in zip(is_baseline, table["p_holm"])]}
           if table["comparisons"].ge(2).any() else {}),
        **_paired_cells(table, is_baseline),
        "params (M)": (table["params"] / 1e6).map(lambda value: _fmt(value, "{:.4f}")),
        "Δ params %": change("params_delta_pct"),
        "GFLOPs": (table["flops"] / 1e9).map(lambda value: _fmt(value, "{:#.4g}")),
        "Δ FLOPs %": change("flops_delta_pct"),
    }
    if table["train_images_per_s"].notna().any():
        # a speed from fewer runs than the row's accuracy says so: one run's speed has no spread
        shown["train img/s"] = [_fmt(value, "{:,.0f}") + (f" ({timed} of {n})" if 0 < timed < n else "")
                                for value, timed, n in zip(table["train_images_per_s"], table["speed_runs"], table["n"])]
        shown["Δ img/s %"] = change("train_images_per_s_delta_pct")
        timed_on = table["speed_hardware"].where(table["train_images_per_s"].notna())
        if timed_on.nunique() > 1:  # speeds from different machines side by side: say which is which
            shown["timed on"] = timed_on.fillna("")
    if table["wandb"].astype(bool).any():
        shown["wandb"] = table["wandb"]
    return pd.DataFrame(shown)


def to_markdown(table: pd.DataFrame, baseline: str | None = "none") -> str:
    # a "|" in a value (a config string, a label) would end its cell: escaped, as markdown reads it
    shown = presentation(table, baseline).map(lambda value: str(value).replace("|", "\\|"))
    shown.columns = [str(column).replace("|", "\\|") for column in shown.columns]
    names = 3 + len(setting_columns(table))
    align = ["left"] * names + ["right"] * (len(shown.columns) - names)
    return shown.to_markdown(index=False, disable_numparse=True, colalign=align)


def to_latex(table: pd.DataFrame, baseline: str | None = "none") -> str:
    """A booktabs table (needs ``\\usepackage{booktabs}``); ±, Δ, ν, −, <, > and → become math symbols
    (in LaTeX's default font encoding a bare < prints as ¡, and pdflatex cannot set →)."""
    shown = presentation(table, baseline)
    styler = shown.style.hide(axis="index").format(escape="latex").format_index(escape="latex", axis=1)
    names = 3 + len(setting_columns(table))
    latex = styler.to_latex(hrules=True, column_format="l" * names + "r" * (len(shown.columns) - names))
    for text, symbol in (("<", "$<$"), (">", "$>$"), ("±", r"$\pm$"), ("Δ", r"$\Delta$"), ("ν", r"$\nu$"),
                         ("−", "$-$"), ("→", r"$\to$")):
        latex = latex.replace(text, symbol)
    return latex


def unfinished_markdown(runs: pd.DataFrame) -> str:
    unfinished = runs[~is_completed(runs)]
    columns = ["data", "backbone", "attention", *setting_columns(runs), "seed", "status", "error", "path"]
    return unfinished[columns].fillna("").to_markdown(index=False) if not unfinished.empty else ""


def problems_markdown(problems: list[tuple[str, str]]) -> str:
    return pd.DataFrame(problems, columns=["path", "problem"]).to_markdown(index=False) if problems else ""


def run_table(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per run: the experiment label, the shown config keys, then the run's own fields."""
    return runs[[*GROUP_KEYS, *setting_columns(runs), *RUN_COLUMNS[3:]]]


def add_common_arguments(parser: argparse.ArgumentParser, folders_required: bool = True) -> None:
    parser.add_argument("folders", nargs="+" if folders_required else "*", type=Path, help="run or multirun folders")
    parser.add_argument("--baseline", default="none", help="attention variant every row is compared with")
    parser.add_argument("--out", type=Path, help="where the outputs go (default: the first folder)")


def check_folders(parser: argparse.ArgumentParser, folders: list[Path]) -> None:
    """Every folder exists and holds a run somewhere beneath it: a mistyped sweep path that happens to
    exist (an empty folder, a parent of the wrong date) wrote empty tables and exited 0."""
    missing = [str(folder) for folder in folders if not folder.is_dir()]
    if missing:
        parser.error(f"no such folder: {', '.join(missing)}")
    empty = [str(folder) for folder in folders if not _holds_runs(folder)]
    if empty:
        parser.error(f"no runs in {', '.join(empty)}: no results.json or run folder ({', '.join(RUN_FOLDER_MARKERS)}) "
                     "at any depth; give the sweep folder (multirun/<date>/<time>) or a run's folder")


def _holds_runs(folder: Path) -> bool:
    names = ["results.json", *RUN_FOLDER_MARKERS]
    return any(next(folder.rglob(name), None) is not None for name in names)


def out_problem(out: Path) -> str | None:
    """Why ``out`` cannot take the outputs (None when it can). It is made if missing; a file, or a
    place that cannot be created or written, is refused before any work is done."""
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        return f"--out {out}: cannot make it a folder ({error.strerror or error})"
    if not os.access(out, os.W_OK | os.X_OK):
        return f"--out {out}: the folder is not writable"
    return None


def fail(message: str) -> int:
    """One ``error:`` line on stderr and the exit code of a usage error (2), not a traceback."""
    print(f"error: {message}", file=sys.stderr)
    return 2


def folders_to_outputs(description: str, argv: list[str] | None,
                       write: Callable[[list[Path], Path, str], list[Path]]) -> int:
    """The command line of plots.py and report.py: run folders, ``--baseline`` and ``--out`` in;
    ``write(folders, out, baseline)`` makes the files, whose paths are printed. A bad ``--out`` or a
    failed write is one ``error:`` line."""
    _printable_output()
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(parser)
    args = parser.parse_args(argv)
    check_folders(parser, args.folders)
    out = args.out or args.folders[0]
    if problem := out_problem(out):
        return fail(problem)
    try:
        written = write(args.folders, out, args.baseline)
    except OSError as error:
        return fail(f"cannot write into {out}: {error}")
    for path in written:
        print(path)
    return 0


def write_outputs(out: Path, found: Scan, table: pd.DataFrame, baseline: str | None) -> str:
    """summary.csv/.md/.tex and runs.csv in ``out``, each atomically; the markdown table."""
    markdown = to_markdown(table, baseline) if not table.empty else "(no completed runs)"
    shown = [column for column in table.columns if not column.startswith("_")]
    write_atomic(out / "summary.csv", table[shown].to_csv(index=False))
    write_atomic(out / "summary.md", markdown + "\n")
    write_atomic(out / "summary.tex", to_latex(table, baseline) if not table.empty else "% no completed runs\n")
    write_atomic(out / "runs.csv", run_table(found.runs).to_csv(index=False))
    return markdown


def _printable_output() -> None:
    """A terminal that cannot show "Δ", "−" or "±" (a non-UTF-8 locale) gets them escaped (``\\u2212``,
    never a "?" that drops a minus sign): printing the table raised there, after the files were written."""
    for stream in (sys.stdout, sys.stderr):
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")


def main(argv: list[str] | None = None) -> int:
    _printable_output()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(parser, folders_required=False)
    parser.add_argument("--wandb", metavar="ENTITY/PROJECT", help="also read the runs of a wandb project")
    args = parser.parse_args(argv)
    if not args.folders and not args.wandb:
        parser.error("give run folders, --wandb ENTITY/PROJECT, or both")
    check_folders(parser, args.folders)
    out = args.out or (args.folders[0] if args.folders else Path("."))
    if problem := out_problem(out):
        return fail(problem)

    found = scan(args.folders, wandb_records(args.wandb) if args.wandb else [])
    table = summarize(found.runs, args.baseline)
    try:
        markdown = write_outputs(out, found, table, args.baseline)
    except OSError as error:
        return fail(f"cannot write into {out}: {error}")
    print(markdown)
    if args.baseline and not table.empty and args.baseline not in set(table["variant"]):
        print(f"warning: no completed run of the baseline {args.baseline}; no Δ column (the variants are: "
              f"{', '.join(sorted(set(table['variant'])))})", file=sys.stderr)
    for line in mixed_networks(found.runs):
        print(f"warning: {line}; its params and FLOPs are left out", file=sys.stderr)
    for line in diverged_only(found.runs):
        print(f"warning: {line}", file=sys.stderr)
    for line in mixed_code(found.runs):
        print(f"note: {line}", file=sys.stderr)
    if unfinished := unfinished_markdown(found.runs):
        print("\nnot averaged (not completed):")
        print(unfinished)
    if problems := problems_markdown(found.problems):
        print("\nskipped (no usable results.json, or a seed already counted):")
        print(problems)
    print(f"\n{len(found.runs)} runs; tables in {out}/summary.{{csv,md,tex}}, one row per run in {out / 'runs.csv'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
