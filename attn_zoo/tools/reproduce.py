"""A results table's runs, reproduced within a time limit and packed for ``results/``.

    python -m attn_zoo.tools.reproduce short --archive .data/cifar10-jpg.tar.gz --jobs 8 --time-limit 480 --pack OUT
    python -m attn_zoo.tools.reproduce classic --archive .data/cifar10-jpg.tar.gz --jobs 4 --time-limit 480 --pack OUT

Runs the table's sweep (``TABLES``: the experiment and the attention × seed grid of RESULTS.md's
tables) through ``run.py -m`` with ``hydra/launcher=parallel`` (``--jobs`` runs at once, to fill one
GPU with small CIFAR runs), into a fixed sweep folder (``--runs``, default
``multirun/reproduce/<table>``). At ``--time-limit`` seconds every run gets SIGTERM: it finishes its
batch, saves ``last.ckpt`` and records ``interrupted``; the same command later resumes each one where
it stopped and leaves completed ones as they are, so a table can take several sessions.
``--start-limit`` seconds is a softer stop: no job begins after it and the running ones finish (a CPU
session that must not cut a long run short; ``--jobs 1`` only: with ``--start-limit 300`` the job under
way by then is the last; completed jobs are passed over in seconds, but after the limit they too end
the sweep). A run that failed or diverged makes the exit code 1 even after a stop. ``--seeds N``
runs seeds 0 to N-1 instead of the table's: a larger N extends a table, the new seeds' jobs numbered
after the finished ones, which keep their numbers.

``--pack DIR`` copies the sweep's runs into ``DIR/<n>-<table>/`` (new, or packed by the same sweep
before: a folder holding another sweep's pack is refused) as ``results/`` keeps it (results.json,
metrics logs, the config record, run.log; no checkpoints) with a ``table.yaml`` (title, the exact
command, the device, the date, how many runs completed) that ``analysis/results_md.py`` reads, and a
``speed.json`` (runs at once, wall time, runs finished per hour, aggregate training images/s: the
concurrency measurement for BENCHMARKS.md). ``--keep-checkpoints`` also packs the unfinished runs'
``last.ckpt``, to resume them on another machine (copy the pack back to ``--runs``). Only jobs of this
command are packed: a run another command left in the sweep folder is named and left out.
``--pack-folder NAME`` packs into ``DIR/NAME/`` instead (a CPU table beside the GPU one, e.g.
``1-classic-cpu``). ``--pack-only`` (with ``--pack`` and the sweep's own arguments, on the kind of machine that ran it)
packs what the sweep folder holds and runs nothing (a CPU session packs a finished run without starting
the next job), with no speed.json. Packing again over a ``table.yaml`` whose notes a person wrote keeps
its title, device and notes, and its command where it names the same sweep (this tool's own command
counts); the date and paper figures are refreshed. With CUDA
the runs use the fast settings ``GPU_SPEED`` (device-resident loader, CUDA graphs, large validation
batches, fused SGD): the same recipe, but not the same runs seed for seed, since the device-resident
loader draws other (equally distributed) crops and flips than the DataLoader of a table that has
``loader: cpu``; the rest changes floating-point order only. Further Hydra overrides go after the
table name.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import datetime
import io
import json
import os
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Sequence

import yaml

from attn_zoo.results import write_json_atomic

ROOT = Path(__file__).resolve().parents[2]
# what a GPU run adds: the device-resident loader, CUDA graphs, validation in batches of 1,000, the
# fused SGD kernel (one launch per step instead of one per parameter: these runs are launch-bound)
GPU_SPEED = ("data.loader=gpu", "data.eval_batch_size=1000", "compile=true", "compile_mode=reduce-overhead",
             "++optim.fused=true")
# seconds between SIGTERM and SIGKILL: a run finishes its batch (or its epoch's validation) and saves
STOP_GRACE_S = 90
STOPPED_JOB_EXIT = 128 + signal.SIGTERM  # run.py's exit when a job saw the sweep's stop file as it began


@dataclass(frozen=True)
class Table:
    """``overrides`` name the seeds before the modules: Hydra varies the first sweep override slowest,
    so a sweep stopped part-way has finished one seed of every module before a second seed of any."""
    folder: str  # results/<folder>: tables appear in RESULTS.md in folder order
    title: str
    overrides: tuple[str, ...]
    paper: dict | None = None  # the published top-1 the rows are held to (results_md's table.yaml ``paper``)


# The classic tables compare with the papers' CIFAR networks: option A shortcuts (identity, zero-padded
# where the shape changes) and SE's exact width C/16 (se_exact: 1, 2, 4 hidden units at 16, 32, 64
# channels, where se.yaml's rounding gives 8), which the tables name "se[divisor=1,min_width=1]".
SE_EXACT = "se[divisor=1,min_width=1]"
TABLES = {
    "classic": Table("1-classic", "Classic schedule (He et al. 2016, 164 epochs), CIFAR-10, ResNet-20",
                     ("+experiment=cifar_resnet", "backbone.shortcut=pad", "seed=0,1", "attention=none,se_exact"),
                     {"source": "He et al. 2016, Table 6: ResNet-20, 8.75 % error", "top1": {"none": 91.25}}),
    "short": Table("2-short", "Short schedule (30 epochs, cosine), CIFAR-10, ResNet-20",
                   ("+experiment=cifar_resnet_short", "seed=0,1,2", "attention=none,se,eca,cbam")),
    # the SE paper's CIFAR row; its ResNet-110 baseline, 6.37 %, is He et al. 2016b's figure for their
    # pre-activation ResNet-110 (the SE paper does not name the variant: inferred from that figure).
    # He et al.'s ResNet-110 warm-up (lr 0.01 for ~400 iterations) as a one-epoch linear ramp
    "preresnet110": Table("3-preresnet110",
                          "Classic schedule, CIFAR-10, pre-activation ResNet-110 (the SE paper's row)",
                          ("+experiment=cifar_resnet", "backbone=preresnet110", "backbone.shortcut=pad",
                           "sched.warmup_epochs=1", "seed=0", "attention=none,se_exact"),
                          {"source": "none: He et al. 2016b, pre-activation ResNet-110, 6.37 % error, as the SE "
                                     "paper's CIFAR-10 table quotes it; se: Hu et al., SE-ResNet-110, 5.21 %",
                           "top1": {"none": 93.63, SE_EXACT: 94.79}}),
}


def with_seeds(table: Table, seeds: int | None) -> Table:
    """``table`` with seeds 0 to ``seeds - 1`` in place of its own (``None``: as it is). Seeds vary
    slowest, so job ``i`` is the same run for any number of seeds: a table extended with more seeds
    keeps its finished runs' numbers and adds the new seeds' after them, in the same sweep folder."""
    if seeds is None:
        return table
    if not any(override.startswith("seed=") for override in table.overrides):
        raise ValueError(f"table {table.folder} names no seeds to replace")
    overrides = tuple(f"seed={','.join(map(str, range(seeds)))}" if override.startswith("seed=") else override
                      for override in table.overrides)
    return replace(table, overrides=overrides)


def sweep_command(table: Table, runs: Path, jobs: int, archive: Path | None, extra: Sequence[str],
                  gpu: bool) -> list[str]:
    """``python run.py -m ...`` for ``table``: its overrides, the data, the launcher, the sweep folder."""
    data = ("data=cifar10_jpg", f"data.archive={archive}") if archive else ()
    launcher = ("hydra/launcher=parallel", f"hydra.launcher.n_jobs={jobs}") if jobs > 1 else ()
    speed = GPU_SPEED if gpu else ()
    return [sys.executable, str(ROOT / "run.py"), "-m", *table.overrides, *data, *speed, *launcher,
            "trainer.enable_progress_bar=false", f"hydra.sweep.dir={runs}", *extra]


def run_until(command: Sequence[str], time_limit_s: float | None, still_saving: Callable[[], bool],
              grace_s: float = STOP_GRACE_S, stop_file: Path | None = None,
              start_limit_s: float | None = None) -> tuple[int, bool]:
    """Run ``command`` in a process group of its own; at ``time_limit_s`` send SIGTERM to the launcher and
    its workers (``_stop_jobs``): each
    run finishes its batch, saves and records ``interrupted``, and the launcher's workers outlive the
    launcher while they do. Wait (at most ``grace_s``) while the launcher lives or ``still_saving()``,
    then SIGKILL what is left of the group: idle workers and resource trackers, which never exit on
    their own (loky's ignore SIGTERM). ``stop_file`` is created just before the SIGTERM (its path in
    the jobs' environment, ``run_folder.SWEEP_STOP_ENV``): a job a worker takes from its queue after
    the stop ends at once instead of training through the grace period. At ``start_limit_s`` (before
    the time limit) only the stop file is created: no further job begins and the running one finishes
    (one job at a time: a parallel sweep so stopped exits 1, as if a job had failed); the sweep counts
    as stopped there only if it then ends with a stopped job's exit code. Returns (exit code, stopped
    at either limit)."""
    from attn_zoo.run_folder import SWEEP_STOP_ENV

    environment = dict(os.environ)
    if stop_file is not None:
        stop_file.unlink(missing_ok=True)
        environment[SWEEP_STOP_ENV] = str(stop_file)
    process = subprocess.Popen(command, start_new_session=True, env=environment)
    started, code, stopped = time.monotonic(), None, False
    if start_limit_s is not None and (time_limit_s is None or start_limit_s < time_limit_s):
        code = _wait(process, start_limit_s)
        stopped = code is None  # the jobs still queued will not begin
        if stopped and stop_file is not None:
            _touch(stop_file)
    if code is None:
        code = _wait(process, None if time_limit_s is None else max(0.0, time_limit_s - (time.monotonic() - started)))
        # the last job finished (0) or one failed: nothing was stopped
        stopped = stopped and code in (None, STOPPED_JOB_EXIT)
    if code is None:
        stopped = True
        if stop_file is not None:
            _touch(stop_file)
        _stop_jobs(process.pid)
        deadline = time.monotonic() + grace_s
        while (process.poll() is None or still_saving()) and time.monotonic() < deadline:
            time.sleep(0.2)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    if stop_file is not None:
        stop_file.unlink(missing_ok=True)
    return (process.wait() if code is None else code), stopped


def _stop_jobs(launcher: int) -> None:
    """SIGTERM to the launcher and its own children (the workers that run the jobs), not to the whole
    process group: a job's helpers, torch.compile's compile workers (``TORCHINDUCTOR_COMPILE_THREADS``)
    among them, have no handler and died at once, and a job compiling at the stop then failed or hung
    instead of saving. Where the OS does not list a process's children, the group, as before."""
    children = Path(f"/proc/{launcher}/task/{launcher}/children")
    try:
        workers = [int(pid) for pid in children.read_text(encoding="utf-8").split()]
    except (OSError, ValueError):
        os.killpg(launcher, signal.SIGTERM)
        return
    for pid in (launcher, *workers):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)


def _wait(process: subprocess.Popen, timeout_s: float | None) -> int | None:
    """The process's exit code, or None if it still runs after ``timeout_s``."""
    try:
        return process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return None


def _touch(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch()


def runs_still_running(runs: Path, since: float) -> Callable[[], bool]:
    """Whether a run of this sweep (its results.json written since ``since``) still says ``running``."""
    return lambda: any(record.get("status") == "running" for _, record in _records(runs, since))


def mark_killed(runs: Path, since: float) -> list[Path]:
    """Record as ``interrupted`` (by SIGKILL) the runs of this sweep that still say ``running`` after the
    stop: a job the launcher handed to a worker just after the SIGTERM never saw it and was killed at
    the end of the grace period. Their last.ckpt, if any, is where a rerun resumes. Returns their folders."""
    killed = []
    for run, record in _records(runs, since):
        if record.get("status") == "running":
            record.update(status="interrupted", interrupted_by="SIGKILL")
            write_json_atomic(run / "results.json", record)
            killed.append(run)
    return killed


def _records(runs: Path, since: float = 0.0) -> list[tuple[Path, dict]]:
    """(run folder, its results.json) for each run under ``runs`` whose results.json was written at
    ``since`` or later; an unreadable one is ``{}`` (a run may be writing it)."""
    found = []
    for path in sorted(runs.rglob("results.json")):
        try:
            if path.stat().st_mtime < since:
                continue
            record = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            record = {}
        found.append((path.parent, record if isinstance(record, dict) else {}))
    return found


def override_choices(arguments: Sequence[str]) -> dict[str, list]:
    """Hydra overrides as Hydra reads them: each key with the values it takes (a sweep's choices, or
    its one value)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    return {
        override.get_key_element(): list(override.sweep_iterator()) if override.is_sweep_override() else [override.value()]
        for override in OverridesParser.create().parse_overrides(list(arguments))
    }


def sweep_choices(command: Sequence[str]) -> dict[str, list]:
    """The task overrides of a ``run.py -m`` command (not Hydra's own), as ``override_choices``."""
    return override_choices([argument for argument in command[list(command).index("-m") + 1:]
                             if not argument.startswith("hydra")])


def _same_job(given: dict[str, list], choices: dict[str, list]) -> bool:
    """Whether overrides ``given`` (key: values) are a job of ``choices``: the same keys, each value
    among its choices, except the keys a resume may change (where the data lie, workers, time budget)."""
    from attn_zoo.run_folder import RESUMABLE_KEYS

    where = {key.lstrip("+~") for key in RESUMABLE_KEYS} - {"trainer.max_epochs"}  # a longer run is another table
    keys = lambda mapping: {key for key in mapping if key.lstrip("+~") not in where}  # noqa: E731
    return keys(given) == keys(choices) and all(value in choices[key] for key in keys(given) for value in given[key])


def is_job_of(run: Path, choices: dict[str, list], record: dict | None = None) -> bool:
    """Whether ``run``'s own overrides are one job of the sweep whose ``choices`` are given
    (``_same_job``): ``.hydra/overrides.yaml``, written once its folder accepted it, else the
    ``overrides`` its results.json (``record``) keeps (a copy without the hidden ``.hydra/``)."""
    from hydra.errors import HydraException

    try:
        overrides = yaml.safe_load((run / ".hydra" / "overrides.yaml").read_text(encoding="utf-8"))
    except (OSError, ValueError, yaml.YAMLError):  # none, or not text: a copy may have lost it
        overrides = (record or {}).get("overrides")
    try:
        given = override_choices(overrides) if isinstance(overrides, list) else None
    except (ValueError, TypeError, HydraException):  # a record cut short
        given = None
    return given is not None and _same_job(given, choices)


def pack(runs: Path, destination: Path, keep_checkpoints: bool, choices: dict[str, list]) -> tuple[dict[str, int], list[Path]]:
    """Copy the runs of the sweep folder ``runs`` that are jobs of this sweep (``choices``: the one
    whose command the table shows) into ``destination`` without checkpoints (but the unfinished runs'
    last.ckpt with ``keep_checkpoints``). A folder holding another sweep's run (the folder is reused
    with other overrides; such a job refuses to start and leaves that run as it was) stays out: under
    this command's heading it would pass for one of its runs. Returns how many runs have each status
    and the folders left out."""
    statuses: dict[str, int] = {}
    left_out = []
    for run, record in _records(runs):
        if not is_job_of(run, choices, record):
            left_out.append(run)
            continue
        status = record.get("status", "unreadable")
        statuses[status] = statuses.get(status, 0) + 1
        target = destination / run.relative_to(runs)
        if target.exists():  # an earlier pack of this run: its files (an interrupted run's last.ckpt) go
            shutil.rmtree(target)
        shutil.copytree(run, target, ignore=shutil.ignore_patterns("checkpoints", "wandb", ".lock"))
        last = run / "checkpoints" / "last.ckpt"
        if keep_checkpoints and status != "completed" and last.is_file():
            (target / "checkpoints").mkdir(exist_ok=True)
            shutil.copy2(last, target / "checkpoints" / "last.ckpt")
    if (runs / "multirun.yaml").is_file():
        shutil.copy2(runs / "multirun.yaml", destination / "multirun.yaml")
    return statuses, left_out


def sweep_speed(runs: Path, jobs: int, started: float, wall_s: float) -> dict:
    """How fast the sweep went with ``jobs`` runs at once (for BENCHMARKS.md's concurrency table): the
    runs it finished per hour (those whose results.json it wrote: a resumed run counts, a run finished
    in an earlier session does not) and the median steady training images/s of the runs timed while
    ``jobs`` ran at once (each run's measured load: a run of the sweep's tail, timed alone, is not
    one), times ``jobs``: the aggregate while every slot is busy (None where no run was timed so)."""
    records = [record for _, record in _records(runs, started)]
    rates = [r["train_images_per_s"] for r in records
             if r.get("train_images_per_s") and _timed_at(r) == jobs]
    completed = sum(r.get("status") == "completed" for r in records)
    median = statistics.median(rates) if rates else None
    return {
        "jobs": jobs, "wall_s": round(wall_s, 1), "runs": len(records), "completed": completed,
        "completed_per_hour": round(completed * 3600 / wall_s, 1) if wall_s > 0 else None,
        "median_run_train_images_per_s": median, "runs_timed_at_full_load": len(rates),
        "aggregate_train_images_per_s": median * jobs if median else None,
        "device": device_name(), "date": datetime.date.today().isoformat(),
    }


def _timed_at(record: dict) -> int | None:
    """How many jobs ran at once while a run's speed was timed (its last hardware entry's measured
    ``parallel_jobs``, 1 where absent); None for a run resumed on other hardware (no one speed)."""
    hardware = record.get("hardware") or []
    return hardware[0].get("parallel_jobs", 1) if len(hardware) == 1 else None


def device_name() -> str:
    """The device the sweep's jobs trained on: each job's ``trainer=gpu`` takes the first visible GPU,
    so on a machine of several every job of the sweep shares that one."""
    import torch

    if torch.cuda.is_available():
        count, name = torch.cuda.device_count(), torch.cuda.get_device_name(0)
        return name if count == 1 else f"{name} (GPU 0 of {count} visible: every job trained on it)"
    from attn_zoo.throughput import cpu_model

    return f"CPU ({cpu_model()}, {os.cpu_count()} cores)"  # platform.processor() says only x86_64 on Linux


def shown_command(command: Sequence[str]) -> str:
    """The sweep's command as a user types it (``python run.py``, paths relative to the checkout)."""
    here = f"{ROOT}{os.sep}"
    return shlex.join(["python", "run.py", *(argument.replace(here, "") for argument in command[2:])])


def earlier_pack_problem(destination: Path, command: str) -> str | None:
    """Why ``destination`` cannot take this sweep's pack, or None: packing again the sweep its
    ``table.yaml`` names (the same runs: other launcher settings, sweep folder, data location or
    time budget aside; a later session) updates it; runs laid over another sweep's pack, or over a
    folder that says nothing of its runs, would pass for this command's."""
    if not destination.is_dir() or not any(destination.iterdir()):
        return None
    from hydra.errors import HydraException

    recorded = _yaml_mapping(destination / "table.yaml").get("command")
    try:
        if isinstance(recorded, str) and _same_job(recorded_choices(recorded), sweep_choices(shlex.split(command))):
            return None
    except (ValueError, KeyError, HydraException):  # not a command either tool wrote
        pass
    holds = f"the pack of another command ({recorded})" if recorded else "files but no table.yaml naming their command"
    return f"{destination} holds {holds}; pack into another folder (two sweeps' runs would mix under one command)"


def recorded_choices(recorded: str) -> dict[str, list]:
    """``sweep_choices`` of a table.yaml's ``command``: the ``run.py -m`` sweep a pack writes, or this
    tool's own command, as a person may record it instead."""
    words = shlex.split(recorded)
    if "attn_zoo.tools.reproduce" not in words:
        return sweep_choices(words)
    try:
        with contextlib.redirect_stderr(io.StringIO()):  # argparse's usage text: not this command's
            args = build_parser().parse_intermixed_args(words[words.index("attn_zoo.tools.reproduce") + 1:])
    except SystemExit:
        raise ValueError(f"not a command of this tool: {recorded}") from None
    table = with_seeds(TABLES[args.table], args.seeds)
    return sweep_choices(sweep_command(table, Path("runs"), args.jobs, args.archive, args.overrides, gpu=False))


MADE_BY = "Made by python -m attn_zoo.tools.reproduce."  # ends the notes until a person writes them


def table_record(table: Table, command: Sequence[str], statuses: dict[str, int], left_out: int = 0) -> dict:
    """``table.yaml`` for results_md: the command as a user types it."""
    counts = ", ".join(f"{count} {status}" for status, count in sorted(statuses.items()))
    other = f" Left out: {left_out} run{'s' * (left_out != 1)} of another sweep in the same folder." if left_out else ""
    record = {
        "title": table.title,
        "command": shown_command(command),
        "device": device_name(),
        "date": datetime.date.today().isoformat(),
        "notes": f"Runs: {counts or 'none'}.{other} {MADE_BY}",
    }
    return record | ({"paper": copy.deepcopy(table.paper)} if table.paper else {})  # TABLES' own stays as it is


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m attn_zoo.tools.reproduce", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("table", choices=sorted(TABLES))
    parser.add_argument("overrides", nargs="*", help="further Hydra overrides for every run")
    parser.add_argument("--archive", type=Path, help="cifar10-jpg.tar.gz (data=cifar10_jpg); default: the experiment's data")
    parser.add_argument("--jobs", type=int, default=4, help="runs at once (default 4)")
    parser.add_argument("--time-limit", type=float, help="seconds until the runs are stopped (default: none)")
    parser.add_argument("--start-limit", type=float,
                        help="seconds after which no further job begins; the running ones finish (default: none)")
    parser.add_argument("--runs", type=Path, help="the sweep folder (default multirun/reproduce/<table>)")
    parser.add_argument("--pack", type=Path, help="copy the runs into PACK/<n>-<table>/ with a table.yaml")
    parser.add_argument("--pack-folder", help="the folder's name under PACK instead of <n>-<table> (e.g. 1-classic-cpu)")
    parser.add_argument("--keep-checkpoints", action="store_true", help="pack unfinished runs' last.ckpt too")
    parser.add_argument("--pack-only", action="store_true",
                        help="with --pack: pack the runs the sweep folder holds, running none")
    parser.add_argument("--seeds", type=int, help="seeds 0 to SEEDS-1 (default: the table's); more extend a finished sweep")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_intermixed_args(argv)
    if args.jobs < 1:
        parser.error(f"--jobs must be >= 1, got {args.jobs}")
    if args.start_limit is not None and args.jobs != 1:
        parser.error("--start-limit needs --jobs 1 (a parallel sweep it stops ends with a failed job's exit code, "
                     "not a stopped one's: it would read as failed)")
    if args.pack_only and (args.pack is None or args.time_limit is not None or args.start_limit is not None):
        parser.error("--pack-only packs without running: give --pack, and no --time-limit or --start-limit")
    if args.seeds is not None and args.seeds < 1:
        parser.error(f"--seeds must be >= 1, got {args.seeds}")
    if args.seeds is not None and (given := [o for o in args.overrides if o.lstrip("+~").startswith("seed=")]):
        parser.error(f"--seeds and {given[0]} both name the seeds: give one")  # the later would win silently
    table = with_seeds(TABLES[args.table], args.seeds)
    runs = (args.runs or ROOT / "multirun" / "reproduce" / args.table).resolve()
    import torch

    command = sweep_command(table, runs, args.jobs, args.archive, args.overrides, torch.cuda.is_available())
    if args.pack_folder is not None and (args.pack is None or Path(args.pack_folder).name != args.pack_folder):
        parser.error(f"--pack-folder names one folder under --pack, got {args.pack_folder!r}")
    destination = args.pack / (args.pack_folder or table.folder) if args.pack else None
    if destination is not None and (problem := earlier_pack_problem(destination, shown_command(command))):
        parser.error(f"--pack: {problem}")
    if args.pack_only and not runs.is_dir():
        parser.error(f"--pack-only: no sweep folder {runs}")
    if args.pack_only:
        code, stopped, speed, failed = 0, False, None, []
    else:
        code, stopped, speed, failed = run_sweep(command, runs, args.jobs, args.time_limit, args.start_limit)
    if destination is not None:
        packed = pack_table(table, command, runs, destination, args.keep_checkpoints, speed)
        if args.pack_only and not packed:
            print(f"--pack-only: no run in {runs} is a job of this command (give the sweep's own arguments, on the "
                  "kind of machine that ran it: a GPU adds its fast settings to the command)", file=sys.stderr)
            return 1
    # a sweep a limit stopped did what was asked (its runs saved, to resume) unless a run failed or
    # diverged; one that ended early with an error did not
    return 0 if code == 0 or (stopped and not failed) else 1


def run_sweep(command: list[str], runs: Path, jobs: int, time_limit: float | None,
              start_limit: float | None = None) -> tuple[int, bool, dict, list[Path]]:
    """Run the sweep until it ends or a limit stops it; its exit code, whether a limit stopped it, its
    speed and the runs it recorded as failed or diverged."""
    print(shlex.join(command), flush=True)
    started, clock = time.time(), time.perf_counter()
    code, stopped = run_until(command, time_limit, runs_still_running(runs, started), stop_file=runs / ".stopped",
                              start_limit_s=start_limit)
    wall_s = time.perf_counter() - clock
    speed = sweep_speed(runs, jobs, started, wall_s)
    print(f"speed: {json.dumps(speed)}", flush=True)
    if stopped:
        for run in mark_killed(runs, started):
            print(f"{run}: killed at the end of the grace period, recorded as interrupted", flush=True)
        by_start = start_limit is not None and (time_limit is None or wall_s < time_limit)
        name, seconds = ("start limit", start_limit) if by_start else ("time limit", time_limit)
        print(f"stopped at the {name} ({seconds:.0f} s): rerun the same command to go on", flush=True)
    failed = [(run, record["status"]) for run, record in _records(runs, started)
              if record.get("status") in ("failed", "diverged")]
    for run, status in failed:
        print(f"{run}: {status}", flush=True)
    return code, stopped, speed, [run for run, _ in failed]


def pack_table(table: Table, command: list[str], runs: Path, destination: Path, keep_checkpoints: bool,
               speed: dict | None) -> int:
    """``pack`` the runs with a table.yaml and, after a sweep that ran (``speed``), its speed.json. An
    earlier table.yaml keeps the keys this does not write (``speed: false``, ``baseline``) and, where a
    person wrote its notes (they no longer end in ``MADE_BY``), its title, device and notes, and its
    command where it names the same sweep; the date and paper are refreshed. Returns how many runs
    were packed."""
    destination.mkdir(parents=True, exist_ok=True)
    statuses, left_out = pack(runs, destination, keep_checkpoints, sweep_choices(command))
    for run in left_out:
        print(f"{run}: not a job of this command (another sweep's run, or no overrides in .hydra/ or results.json), not packed",
              flush=True)
    generated = table_record(table, command, statuses, len(left_out))
    meta = destination / "table.yaml"
    earlier = _yaml_mapping(meta)
    written_by_hand = isinstance(earlier.get("notes"), str) and not earlier["notes"].rstrip().endswith(MADE_BY)
    kept = {key: earlier[key] for key in ("title", "device", "notes") if key in earlier} if written_by_hand else {}
    if kept and _names_the_same_sweep(earlier.get("command"), command):  # as a person wrote it
        kept["command"] = earlier["command"]
    record = generated | {key: value for key, value in earlier.items() if key not in generated} | kept
    meta.write_text(table_yaml(record), encoding="utf-8")
    if speed is not None:
        (destination / "speed.json").write_text(json.dumps(speed, indent=1) + "\n", encoding="utf-8")
    counts = generated["notes"].removesuffix(f" {MADE_BY}")
    by_hand = f" ({meta.name} keeps its hand-written title, device and notes: update them)" if kept else ""
    print(f"packed into {destination}: {counts}{by_hand}", flush=True)
    return sum(statuses.values())


class _TableDumper(yaml.SafeDumper):
    """Writes a string of several lines as a ``|`` block, as a person writes a table's notes."""


def _block(dumper: yaml.SafeDumper, text: str) -> yaml.ScalarNode:
    if "\n" not in text.strip():
        return dumper.represent_scalar("tag:yaml.org,2002:str", text)
    # YAML cannot hold trailing spaces, tabs or \r in a | block (PyYAML quotes the whole text instead)
    lines = text.replace("\r\n", "\n").replace("\r", "\n").expandtabs(4).split("\n")
    return dumper.represent_scalar("tag:yaml.org,2002:str", "\n".join(line.rstrip() for line in lines), style="|")


_TableDumper.add_representer(str, _block)


def table_yaml(record: dict) -> str:
    """``record`` as table.yaml in the form a person keeps it: one line per title and command (not
    wrapped at 80 columns), notes last and as a ``|`` block (before, a pack over hand-written notes
    turned every line into a quoted line and a blank one: the same text, unreadable)."""
    ordered = {key: value for key, value in record.items() if key != "notes"} | (
        {"notes": record["notes"]} if "notes" in record else {})
    return yaml.dump(ordered, Dumper=_TableDumper, sort_keys=False, allow_unicode=True, width=1_000_000)


def _names_the_same_sweep(recorded, command: list[str]) -> bool:
    from hydra.errors import HydraException

    try:
        old, new = recorded_choices(recorded), sweep_choices(command)
    except (ValueError, KeyError, TypeError, AttributeError, HydraException):
        return False
    return _same_job(old, new) and _same_job(new, old)


def _yaml_mapping(path: Path) -> dict:
    try:
        loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, yaml.YAMLError):
        return {}
    return loaded if isinstance(loaded, dict) else {}


if __name__ == "__main__":
    sys.exit(main())
