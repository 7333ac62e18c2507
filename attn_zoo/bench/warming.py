"""Compile caches warmed in parallel processes before the one-at-a-time timed run."""
from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Sequence

from attn_zoo.bench.settings import Settings


# what a cache-warming job sets itself; the caller's values for these keys are dropped
WARMING_KEYS = ("backbones", "attentions", "modes", "warmup", "iters", "windows", "profile", "compile_jobs", "out")


def warming_command(overrides: Sequence[str], backbone: str, attention: str, out: Path) -> list[str]:
    """The bench for one (backbone, attention) and its variants, compiled, one step each."""
    kept = [item for item in overrides if item.split("=", 1)[0].lstrip("+~") not in WARMING_KEYS]
    return [
        sys.executable, "-m", "attn_zoo.bench", *kept, f"backbones=[{backbone}]", f"attentions=[{attention}]",
        "modes=[compiled]", "warmup=1", "iters=1", "windows=1", "profile=false", "compile_jobs=0", f"out={out}",
    ]


def warm_compile_caches(settings: Settings, overrides: Sequence[str]) -> int:
    """Compile every (backbone, attention) pair in ``compile_jobs`` parallel processes first, timings
    discarded, so that Inductor's on-disk caches hold the compiled code and the timed run, one model
    at a time, compiles from them in seconds. Compilation is mostly single-threaded Python, so this
    turns minutes of idle accelerator per model into one parallel pass. Returns the failed jobs."""
    if settings.compile_jobs < 1 or "compiled" not in settings.modes:
        return 0
    pairs = [(backbone, attention) for backbone in settings.backbones for attention in settings.attentions]
    started = time.perf_counter()
    # a thread per running job: the next job starts when any one finishes, not the oldest
    with tempfile.TemporaryDirectory(prefix="attn_zoo_warm_") as folder, \
            ThreadPoolExecutor(settings.compile_jobs) as pool:
        succeeded = list(pool.map(lambda pair: _warm_one(overrides, Path(folder), *pair), pairs))
    failed = succeeded.count(False)
    print(f"warmed compile caches: {len(pairs)} jobs, {settings.compile_jobs} at a time, {failed} failed, "
          f"{time.perf_counter() - started:.0f} s", file=sys.stderr)
    return failed


def _warm_one(overrides: Sequence[str], folder: Path, backbone: str, attention: str) -> bool:
    """One warming job in a process of its own; its output goes to stderr if it fails."""
    log = folder / f"{backbone}_{attention}.log"
    command = warming_command(overrides, backbone, attention, log.with_suffix(".csv"))
    with log.open("w", encoding="utf-8") as handle:  # a file: a full pipe would stall the job
        code = subprocess.run(command, stdout=handle, stderr=subprocess.STDOUT).returncode
    if code != 0:
        print(f"warming job failed ({' '.join(command[3:])}):\n{log.read_text(encoding='utf-8', errors='replace')[-2000:]}", file=sys.stderr)
    return code == 0
