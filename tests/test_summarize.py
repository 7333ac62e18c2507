import json
import math
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from analysis.summarize import load_runs, scan, summarize, to_latex, to_markdown, welch

ROOT = Path(__file__).resolve().parents[1]


def fabricate_run(
    folder: Path, attention: str = "se", seed: int = 0, top1: float = 90.0, *, status: str = "completed",
    variant: str | None = None, data: str = "embedded", backbone: str = "resnet20", params: int = 1000,
    flops: int = 2_000_000, curve: list[float] | None = None, options: dict | None = None, **extra,
) -> Path:
    """A run folder as training leaves it: results.json (+ csv/metrics.csv when ``curve`` is given)."""
    folder.mkdir(parents=True)
    history = [{"epoch": epoch, "top1": value, "top5": value + 5} for epoch, value in enumerate(curve or [top1])]
    record = {
        "schema": 1, "status": status, "data": data, "backbone": backbone,
        "attention": attention, "attention_variant": variant or attention, "attention_options": options or {},
        "seed": seed, "top1": top1, "top5": top1 + 5, "best_top1": top1, "params": params, "flops": flops,
        "macs": flops // 2, "epochs": len(history), "history": history, "wall_time_s": 1.0,
        "config": {
            "data": {"name": data, "_target_": "attn_zoo.data.EmbeddedCIFAR10", "batch_size": 128},
            "backbone": {"name": backbone, "shortcut": "projection"},
            "attention": {"name": attention, **(options or {})},
            "optim": {"lr": 0.1}, "seed": seed, "paths": {"output_dir": str(folder)},
        },
        **extra,
    }
    (folder / "results.json").write_text(json.dumps(record))
    if curve is not None:
        (folder / "csv").mkdir()
        lines = ["epoch,step,train/loss,val/top1,val/top5"]
        for epoch, value in enumerate(curve):
            lines += [f"{epoch},{epoch * 10 + 5},2.0,,", f"{epoch},{epoch * 10 + 9},,{value / 100},{(value + 5) / 100}"]
        (folder / "csv" / "metrics.csv").write_text("\n".join(lines) + "\n")
    return folder


@pytest.fixture
def sweep(tmp_path):
    for seed, top1 in enumerate([90.0, 91.0, 93.0]):
        fabricate_run(tmp_path / f"se{seed}", "se", seed, top1)
    for seed, top1 in enumerate([89.0, 90.0]):
        fabricate_run(tmp_path / f"none{seed}", "none", seed, top1)
    fabricate_run(tmp_path / "crashed", "se", 7, 10.0, status="failed")
    (tmp_path / "corrupt").mkdir()
    (tmp_path / "corrupt" / "results.json").write_text('{"schema": 1, "status": "compl')
    return tmp_path


@pytest.fixture
def costed_sweep(tmp_path):
    """Known costs and speeds: se is +10 % params, +5 % FLOPs, −20 % images/s, +25 % latency."""
    for seed, (top1, speed) in enumerate([(90.0, 800.0), (91.0, 900.0), (93.0, 700.0)]):
        fabricate_run(tmp_path / f"se{seed}", "se", seed, top1, params=1100, flops=2_100_000,
                      train_images_per_s=speed, inference_latency_ms=2.5)
    for seed, top1 in enumerate([89.0, 90.0]):
        fabricate_run(tmp_path / f"none{seed}", "none", seed, top1, train_images_per_s=1000.0,
                      inference_latency_ms=2.0)
    fabricate_run(tmp_path / "se_r8", "se", 0, 92.0, variant="se[reduction=8]", options={"reduction": 8})
    fabricate_run(tmp_path / "other_backbone", "se", 0, 80.0, backbone="resnet56")
    fabricate_run(tmp_path / "running", "se", 9, 50.0, status="running")
    fabricate_run(tmp_path / "failed", "se", 8, 10.0, status="failed", error="RuntimeError: boom")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "results.json").write_text("")
    (tmp_path / "no_results" / ".hydra").mkdir(parents=True)
    (tmp_path / "no_results" / "run.log").write_text("killed before writing results\n")
    (tmp_path / "not_schema").mkdir()
    (tmp_path / "not_schema" / "results.json").write_text('{"schema": 2}')
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


def test_delta_interval_and_p_value_are_welch(sweep):
    row = summarize(load_runs([sweep]), baseline="none").set_index("attention").loc["se"]
    # hand: Δ = 274/3 − 89.5; s² / n = (7/3)/3 and 0.5/2; ν by Welch–Satterthwaite
    delta, var_se, var_none = 274 / 3 - 89.5, 7 / 9, 0.25
    dof = (var_se + var_none) ** 2 / (var_se**2 / 2 + var_none**2 / 1)
    assert dof == pytest.approx(2.8943, abs=1e-4)
    half = stats.t.ppf(0.975, dof) * math.sqrt(var_se + var_none)
    assert row["delta_top1"] == pytest.approx(delta)
    assert (row["delta_top1_low"], row["delta_top1_high"]) == pytest.approx((delta - half, delta + half))
    # scipy's own interval and test for the same samples agree
    reference = stats.ttest_ind([90.0, 91.0, 93.0], [89.0, 90.0], equal_var=False)
    interval = reference.confidence_interval(0.95)
    assert (row["delta_top1_low"], row["delta_top1_high"]) == pytest.approx((interval.low, interval.high))
    assert row["p_value"] == pytest.approx(reference.pvalue)
    assert row["p_value"] == pytest.approx(0.1716, abs=1e-4)
    assert row["delta_top1_low"] < 0 < row["delta_top1_high"]  # three seeds: not significant


def test_welch_is_undefined_below_two_seeds_or_without_spread():
    delta, low, high, p_value = welch(np.array([92.0]), np.array([89.0, 90.0]))
    assert delta == pytest.approx(2.5) and all(math.isnan(v) for v in (low, high, p_value))
    assert all(math.isnan(v) for v in welch(np.array([1.0, 1.0]), np.array([1.0, 1.0]))[1:])


def test_cost_and_speed_deltas_against_the_same_backbone_baseline(costed_sweep):
    table = summarize(load_runs([costed_sweep])).set_index(["backbone", "attention"])
    se = table.loc[("resnet20", "se")]
    assert se["params"] == 1100 and se["params_delta_pct"] == pytest.approx(10.0)
    assert se["flops"] == 2_100_000 and se["flops_delta_pct"] == pytest.approx(5.0)
    assert se["train_images_per_s"] == pytest.approx(800.0)
    assert se["train_images_per_s_delta_pct"] == pytest.approx(-20.0)
    assert se["inference_latency_ms_delta_pct"] == pytest.approx(25.0)
    baseline = table.loc[("resnet20", "none")]
    assert baseline["delta_top1"] == 0 and math.isnan(baseline["p_value"])
    one_seed = table.loc[("resnet20", "se[reduction=8]")]
    assert one_seed["n"] == 1 and math.isnan(one_seed["top1_std"])
    assert one_seed["delta_top1"] == pytest.approx(2.5) and math.isnan(one_seed["delta_top1_low"])
    assert math.isnan(one_seed["train_images_per_s"]) and math.isnan(one_seed["train_images_per_s_delta_pct"])
    no_baseline = table.loc[("resnet56", "se")]  # no resnet56 + none run: nothing to compare with
    assert math.isnan(no_baseline["delta_top1"]) and math.isnan(no_baseline["params_delta_pct"])


def test_failed_runs_are_not_averaged_and_corrupt_files_are_skipped(sweep, capsys):
    runs = load_runs([sweep])
    assert len(runs) == 6  # the corrupt file is skipped, the failed run kept but apart
    assert "skipping unreadable" in capsys.readouterr().err
    assert summarize(runs).set_index("attention").loc["se", "n"] == 3


def test_unfinished_runs_and_unusable_files_are_reported_apart(costed_sweep):
    found = scan([costed_sweep])
    assert sorted(found.runs["status"].unique()) == ["completed", "failed", "running"]
    problems = {Path(path).parent.name: problem for path, problem in found.problems}
    assert problems == {
        "empty": "empty results.json",
        "no_results": "missing results.json",
        "not_schema": "unusable results.json (not schema 1)",
    }
    table = summarize(found.runs).set_index(["backbone", "attention"])
    assert table.loc[("resnet20", "se"), "n"] == 3  # neither the running nor the failed seed


def test_markdown_and_latex_show_every_column(costed_sweep):
    table = summarize(load_runs([costed_sweep]))
    markdown = to_markdown(table)
    header = markdown.splitlines()[0]
    for column in ["Δ top-1 [95 % CI]", "p (Welch)", "params (M)", "Δ params %", "GFLOPs", "Δ FLOPs %",
                   "train img/s", "Δ img/s %", "latency ms", "Δ latency %"]:
        assert column in header
    se_row = next(line for line in markdown.splitlines() if re.search(r"\| se +\|", line) and "resnet20" in line)
    assert "+1.83 [−1.46, +5.13]" in se_row and "0.172" in se_row
    assert "+10" in se_row and "+5" in se_row and "−20" in se_row and "+25" in se_row
    latex = to_latex(table)
    assert latex.startswith("\\begin{tabular}") and "\\toprule" in latex
    assert "$\\pm$" in latex and "$\\Delta$ top-1" in latex and "se[reduction=8]" in latex


def test_no_speed_columns_without_measurements(sweep):
    header = to_markdown(summarize(load_runs([sweep]))).splitlines()[0]
    assert "img/s" not in header and "latency" not in header


def test_cli_prints_markdown_and_writes_csv(sweep, tmp_path):
    out = tmp_path / "tables"
    completed = subprocess.run(
        [sys.executable, str(ROOT / "analysis" / "summarize.py"), str(sweep), "--out", str(out)],
        capture_output=True, text=True, check=True,
    )
    assert re.search(r"\| embedded +\| resnet20 +\| se +\| +3 \| +91\.33 ± 1\.53 \| +96\.33 \|", completed.stdout)
    assert "not averaged" in completed.stdout and "failed" in completed.stdout
    assert "skipped (no usable results.json)" in completed.stdout and "corrupt" in completed.stdout
    assert (out / "summary.csv").read_text().startswith("data,backbone,attention,n,top1_mean,top1_std")
    assert (out / "summary.md").is_file() and (out / "summary.tex").read_text().startswith("\\begin{tabular}")
    assert len(pd.read_csv(out / "runs.csv")) == 6
    assert not list(out.glob(".*tmp"))  # atomic writes leave no temporaries behind


def test_rows_link_to_their_wandb_runs(tmp_path):
    from analysis.summarize import load_runs, summarize, to_markdown

    for seed in (0, 1):
        fabricate_run(tmp_path / f"se{seed}", "se", seed, 90.0 + seed, wandb_url=f"https://wandb.ai/me/zoo/runs/se{seed}")
    fabricate_run(tmp_path / "none0", "none", 0, 89.0)  # logged offline or not to wandb: no link
    markdown = to_markdown(summarize(load_runs([tmp_path])))
    assert "[s0](https://wandb.ai/me/zoo/runs/se0) [s1](https://wandb.ai/me/zoo/runs/se1)" in markdown
    none_row = next(line for line in markdown.splitlines() if "| none" in line)
    assert "wandb.ai" not in none_row
