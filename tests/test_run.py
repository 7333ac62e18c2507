"""Drive the real entry point (run.py through Hydra) for a few steps and check what it writes."""
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_entry_point(*overrides: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HYDRA_FULL_ERROR": "0"}
    return subprocess.run(
        [sys.executable, str(ROOT / "run.py"), *overrides],
        capture_output=True, text=True, cwd=cwd, env=env, timeout=600,
    )


def test_single_run_writes_results_json(tmp_path):
    out = tmp_path / "run"
    completed = run_entry_point(
        "trainer=debug", "attention=se", "backbone=resnet20", "attention.reduction=8", "seed=3",
        "profile.steps=1", "profile.start_step=1", f"hydra.run.dir={out}", cwd=tmp_path,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert results["schema"] == 1 and results["status"] == "completed"
    assert (results["attention"], results["backbone"], results["data"], results["seed"]) == ("se", "resnet20", "embedded", 3)
    assert results["attention_variant"] == "se[reduction=8]"
    assert results["config"]["attention"]["reduction"] == 8
    # SE at r=8 on 16/32/64 channels: hidden 8, 8, 8 (floor and rounding) → 3 blocks per stage
    assert results["attention_params"] == 3 * sum(2 * c * 8 + 8 + c for c in (16, 32, 64))
    assert results["params"] == 272_474 + results["attention_params"]
    assert results["flops"] == 2 * results["macs"] and "2 x MACs" in results["flops_convention"]
    assert results["epochs"] == 1 and 0 <= results["top1"] <= 100 and results["top5"] >= results["top1"]
    assert results["best_top1"] == results["top1"] and results["wall_time_s"] > 0
    assert (out / "csv" / "metrics.csv").is_file()
    profile = (out / "profile.txt").read_text()  # profile.steps: the second training step, profiled
    assert profile.startswith("profiled training steps: 1 of batch ") and "aten::convolution" in profile
    umask = os.umask(0)
    os.umask(umask)
    assert (out / "results.json").stat().st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's 0600


def test_multirun_then_summary(tmp_path):
    sweep = tmp_path / "sweep"
    completed = run_entry_point(
        "-m", "trainer=debug", "attention=none,se", "logger=none", f"hydra.sweep.dir={sweep}", cwd=tmp_path
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    statuses = [json.loads((sweep / str(job) / "results.json").read_text())["status"] for job in (0, 1)]
    assert statuses == ["completed", "completed"]
    summary = subprocess.run(
        [sys.executable, str(ROOT / "analysis" / "summarize.py"), str(sweep)], capture_output=True, text=True, check=True
    )
    rows = [line for line in summary.stdout.splitlines() if line.startswith("| embedded")]
    assert [row.split("|")[3].strip() for row in rows] == ["none", "se"]
    assert (sweep / "summary.csv").is_file()


def test_unknown_group_choice_lists_the_options(tmp_path):
    completed = run_entry_point("attention=sse", cwd=tmp_path)
    assert completed.returncode != 0
    assert "Could not find 'attention/sse'" in completed.stderr
    assert "Available options" in completed.stderr and "se" in completed.stderr
