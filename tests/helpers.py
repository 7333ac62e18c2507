"""Shared test helpers: drive run.py through Hydra as a user does."""
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
QUICK = ("trainer=debug", "logger=none")


def run_entry_point(*overrides: str, cwd: Path, env: dict | None = None, **popen) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ROOT / "run.py"), *overrides],
        capture_output=True, text=True, cwd=cwd, env={**os.environ, **(env or {})}, timeout=600, **popen,
    )
