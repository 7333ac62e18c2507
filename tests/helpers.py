"""Shared test helpers: drive run.py through Hydra as a user does."""
import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
QUICK = ("trainer=debug", "logger=none")


def run_entry_point(*overrides: str, cwd: Path, env: dict | None = None, **popen) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ROOT / "run.py"), *overrides],
        capture_output=True, text=True, cwd=cwd, env={**os.environ, **(env or {})}, timeout=600, **popen,
    )


def assert_a_debug_run_completes_on_jpegs(folder: Path, tmp_path: Path, *overrides: str) -> None:
    """``trainer=debug`` on a small ResNet from the JPEG folder ``folder`` (``data=imagefolder`` at
    32 px, batch 3) with ``overrides`` (the loader) ends with ``status: completed``."""
    import json

    out = tmp_path / "run"
    completed = run_entry_point(
        *QUICK, "data=imagefolder", f"data.root={folder}", "data.image_size=32", "data.batch_size=3",
        "backbone.stem=cifar", "backbone=resnet18", *overrides, f"hydra.run.dir={out}", cwd=tmp_path,
    )
    assert completed.returncode == 0, completed.stderr[-2000:]
    assert json.loads((out / "results.json").read_text())["status"] == "completed"


def markdown_rows(text: str) -> list[list[str]]:
    """The cells of each row of the markdown tables in ``text`` (header rows included, the ``|---|``
    rule lines left out), stripped, with an escaped ``\\|`` read back as ``|``."""
    rows = []
    for line in text.splitlines():
        if line.startswith("|") and not set(line) <= set("|:- "):
            cells = re.split(r"(?<!\\)\|", line.strip()[1:-1])
            rows.append([cell.strip().replace(r"\|", "|") for cell in cells])
    return rows


def relative_error(actual, expected) -> float:
    """‖actual − expected‖ / ‖expected‖ in float64: a whole tensor's error, which one element on the
    other side of a ReLU's kink cannot dominate as it does the largest-element error."""
    expected = expected.double()
    return ((actual.double() - expected).norm() / expected.norm().clamp(min=1e-30)).item()


def sweep_params(cfg) -> dict:
    """{key: [values]} as Hydra's sweeper expands a composed config's ``hydra.sweeper.params``."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    overrides = parser.parse_overrides([f"{key}={value}" for key, value in cfg.hydra.sweeper.params.items()])
    return {o.key_or_group: list(o.sweep_iterator()) for o in overrides}


def signal_after_first_checkpoint(*overrides: str, out: Path, cwd: Path, signum: int, settle_s: float = 0.0) -> tuple[int, str]:
    """Start run.py into ``out`` and send ``signum`` as soon as its first ``last.ckpt`` exists
    (``settle_s`` later: a SIGKILL must not cut the write); returns (exit code, stderr)."""
    command = [sys.executable, str(ROOT / "run.py"), *overrides, f"hydra.run.dir={out}"]
    process = subprocess.Popen(command, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    last, deadline = out / "checkpoints" / "last.ckpt", time.time() + 300
    while not last.is_file() and time.time() < deadline and process.poll() is None:
        time.sleep(0.02)
    time.sleep(settle_s)
    process.send_signal(signum)
    stderr = process.communicate(timeout=120)[1]
    return process.returncode, stderr
