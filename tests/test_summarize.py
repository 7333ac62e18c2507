import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest

from analysis.summarize import load_runs, summarize

ROOT = Path(__file__).resolve().parents[1]


def _result(folder: Path, attention: str, seed: int, top1: float, status: str = "completed") -> None:
    folder.mkdir(parents=True)
    record = {
        "schema": 1, "status": status, "data": "embedded", "backbone": "resnet20",
        "attention": attention, "attention_variant": attention, "seed": seed,
        "top1": top1, "top5": top1 + 5, "best_top1": top1, "params": 1000, "flops": 2_000_000, "epochs": 3,
    }
    (folder / "results.json").write_text(json.dumps(record))


@pytest.fixture
def sweep(tmp_path):
    for seed, top1 in enumerate([90.0, 91.0, 93.0]):
        _result(tmp_path / f"se{seed}", "se", seed, top1)
    for seed, top1 in enumerate([89.0, 90.0]):
        _result(tmp_path / f"none{seed}", "none", seed, top1)
    _result(tmp_path / "crashed", "se", 7, 10.0, status="failed")
    (tmp_path / "corrupt").mkdir()
    (tmp_path / "corrupt" / "results.json").write_text('{"schema": 1, "status": "compl')
    return tmp_path


def test_mean_and_sample_std_over_seeds(sweep):
    table = summarize(load_runs([sweep])).set_index("attention")
    # hand computation: se = 90, 91, 93 → mean 91.333…, squared deviations sum 14/3, /(n-1) → sqrt(7/3)
    assert table.loc["se", "n"] == 3
    assert table.loc["se", "top1_mean"] == pytest.approx(274 / 3)
    assert table.loc["se", "top1_std"] == pytest.approx(math.sqrt(7 / 3))
    assert table.loc["none", "top1_mean"] == pytest.approx(89.5)
    assert table.loc["none", "top1_std"] == pytest.approx(math.sqrt(0.5))
    assert table.loc["se", "top5_mean"] == pytest.approx(274 / 3 + 5)


def test_failed_runs_are_not_averaged_and_corrupt_files_are_skipped(sweep, capsys):
    runs = load_runs([sweep])
    assert len(runs) == 6  # the corrupt file is skipped, the failed run kept but apart
    assert "skipping unreadable" in capsys.readouterr().err
    assert summarize(runs).set_index("attention").loc["se", "n"] == 3


def test_cli_prints_markdown_and_writes_csv(sweep, tmp_path):
    out = tmp_path / "tables"
    completed = subprocess.run(
        [sys.executable, str(ROOT / "analysis" / "summarize.py"), str(sweep), "--out", str(out)],
        capture_output=True, text=True, check=True,
    )
    assert re.search(r"\| embedded +\| resnet20 +\| se +\| +3 \| +91\.33 ± 1\.53 \| +96\.33 \|", completed.stdout)
    assert "not averaged" in completed.stdout and "failed" in completed.stdout
    assert (out / "summary.csv").read_text().startswith("data,backbone,attention,n,top1_mean,top1_std")
    assert (out / "summary.md").is_file()
