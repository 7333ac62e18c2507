import importlib
import json
import math
import os
import re
import shutil
import subprocess
import sys
import threading
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from analysis.summarize import main as summarize_main
from analysis.summarize import holm, is_ignored, mixed_networks, presentation, run_table, scan, summarize, to_latex, to_markdown, welch
from tests.helpers import IMAGEFOLDER, QUICK, ROOT, fabricate_run, image_tree, results, run_entry_point

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
    """Known costs and speeds: se is +10 % params, +5 % FLOPs, −20 % images/s."""
    for seed, (top1, speed) in enumerate([(90.0, 800.0), (91.0, 900.0), (93.0, 700.0)]):
        fabricate_run(tmp_path / f"se{seed}", "se", seed, top1, params=1100, flops=2_100_000,
                      train_images_per_s=speed)
    for seed, top1 in enumerate([89.0, 90.0]):
        fabricate_run(tmp_path / f"none{seed}", "none", seed, top1, train_images_per_s=1000.0)
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
    table = summarize(scan([sweep]).runs).set_index("attention")
    # hand computation: se = 90, 91, 93 → mean 91.333…, squared deviations sum 14/3, /(n-1) → sqrt(7/3)
    assert table.loc["se", "n"] == 3
    assert table.loc["se", "top1_mean"] == pytest.approx(274 / 3)
    assert table.loc["se", "top1_std"] == pytest.approx(math.sqrt(7 / 3))
    assert table.loc["none", "top1_mean"] == pytest.approx(89.5)
    assert table.loc["none", "top1_std"] == pytest.approx(math.sqrt(0.5))
    assert table.loc["se", "top5_mean"] == pytest.approx(274 / 3 + 5)


def test_delta_interval_and_p_value_are_welch(sweep):
    row = summarize(scan([sweep]).runs, baseline="none").set_index("attention").loc["se"]
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
    assert row["delta_top1_df"] == pytest.approx(dof) and row["baseline_n"] == 2


def test_a_delta_says_why_it_has_no_interval_and_an_interval_from_two_runs_a_side_its_nu(tmp_path):
    """Two runs of the baseline (the sweep's none): the printed interval carries ν, which a reader
    cannot tell from n alone; a row of one run, or of seeds that all agree with the baseline's, says
    why its Δ stands without an interval instead of leaving the bracket out unexplained."""
    for seed, top1 in enumerate((89.0, 90.0)):
        fabricate_run(tmp_path / f"none{seed}", "none", seed, top1)
    for seed, top1 in enumerate((90.0, 91.0, 93.0)):
        fabricate_run(tmp_path / f"se{seed}", "se", seed, top1)
    fabricate_run(tmp_path / "eca0", "eca", 0, 92.0)
    table = summarize(scan([tmp_path]).runs)
    cells = dict(zip(table["attention"], presentation(table)["Δ top-1 [95 % CI]"]))
    reference = stats.ttest_ind([90.0, 91.0, 93.0], [89.0, 90.0], equal_var=False)
    low, high = reference.confidence_interval(0.95)
    assert f"{reference.df:.1f}" == "2.9" and f"{low:.2f}" == "-1.46"
    assert cells["se"] == f"+1.83 [−1.46, +{high:.2f}] ν=2.9"
    assert cells["eca"] == "+2.50 (one run: no CI)"
    assert cells["none"] == "baseline"
    assert "$\\nu$=2.9" in to_latex(table)


def test_three_runs_a_side_print_a_plain_interval_and_agreeing_seeds_say_no_spread(tmp_path):
    def delta_cell(folder, se_top1):
        for seed in range(3):
            fabricate_run(folder / f"none{seed}", "none", seed, 89.0 + seed * (se_top1[0] != se_top1[1]))
            fabricate_run(folder / f"se{seed}", "se", seed, se_top1[seed])
        table = summarize(scan([folder]).runs)
        return dict(zip(table["attention"], presentation(table)["Δ top-1 [95 % CI]"]))["se"]

    spread = delta_cell(tmp_path / "spread", (90.0, 90.5, 91.0))
    assert spread.startswith("+0.50 [−") and spread.endswith("]"), spread  # no ν from three a side
    assert delta_cell(tmp_path / "agree", (90.0, 90.0, 90.0)) == "+1.00 (no spread: no CI)"


NONE_BY_SEED, SE_BY_SEED = [88.0, 90.0, 89.0, 91.0], [88.4, 90.3, 89.5, 91.2]  # each seed's pair moves together


def _paired_sweep(tmp_path, paired=(True, True), se_seeds=(0, 1, 2, 3)):
    for seed, top1 in enumerate(NONE_BY_SEED):
        fabricate_run(tmp_path / f"none{seed}", "none", seed, top1, paired_by_seed=paired[0])
    for seed in se_seeds:
        fabricate_run(tmp_path / f"se{seed}", "se", seed, SE_BY_SEED[seed], paired_by_seed=paired[1])
    return summarize(scan([tmp_path]).runs)


def test_runs_that_share_their_seeds_streams_are_compared_seed_by_seed(tmp_path):
    """Since attention modules draw from streams of their own, a seed's none and se runs share the
    backbone's weights and the data order: the seed-by-seed difference cancels the seed noise that
    Welch's interval (independent samples) keeps."""
    table = _paired_sweep(tmp_path)
    row = table.set_index("attention").loc["se"]
    reference = stats.ttest_rel(SE_BY_SEED, NONE_BY_SEED)
    interval = reference.confidence_interval(0.95)
    assert row["pairs"] == 4 and row["paired_delta_top1"] == pytest.approx(0.35)
    assert (row["paired_delta_top1_low"], row["paired_delta_top1_high"]) == pytest.approx((interval.low, interval.high))
    assert row["paired_p_value"] == pytest.approx(reference.pvalue) and row["paired_p_value"] < 0.05
    assert row["delta_top1_low"] < 0 < row["delta_top1_high"]  # Welch's: not significant
    shown = to_markdown(table)
    assert "Δ paired by seed [95 % CI]" in shown and "+0.35 [+0.14, +0.56] (4 seeds)" in shown
    assert "Holm" not in shown  # one test against none: nothing to adjust


def test_holm_steps_down_from_the_smallest_p_value_and_skips_rows_without_a_test():
    """By the definition, for sorted p 0.01 < 0.03 < 0.04 of m = 3: 3·0.01, max(that, 2·0.03), max(that, 1·0.04)."""
    adjusted = holm([0.04, np.nan, 0.01, 0.03])
    assert adjusted[[0, 2, 3]] == pytest.approx([0.06, 0.03, 0.06]) and math.isnan(adjusted[1])
    assert holm([0.2]) == pytest.approx([0.2])  # one test: nothing to adjust
    assert holm([0.5, 0.6, 0.7]) == pytest.approx([1.0, 1.0, 1.0])  # capped at 1, and never below a smaller p's


def test_each_block_adjusts_its_p_values_over_its_own_rows_against_its_baseline(tmp_path):
    """Three modules against none on resnet20 and two on resnet56: a table of many modules read one p
    at a time finds a "significant" one by chance (1 in 20 at 5 % for each row); Holm's p holds for
    the block, and a block of one test (printed without the column) is left as it is."""
    by_seed = {"none": [89.0, 90.0, 89.5], "se": [90.0, 91.0, 90.8], "eca": [89.2, 90.4, 89.9], "cbam": [88.0, 90.5, 89.0]}
    for backbone, modules in (("resnet20", ["none", "se", "eca", "cbam"]), ("resnet56", ["none", "se", "eca"])):
        for attention in modules:
            for seed, top1 in enumerate(by_seed[attention]):
                fabricate_run(tmp_path / backbone / f"{attention}{seed}", attention, seed, top1, backbone=backbone)
    fabricate_run(tmp_path / "resnet32" / "none0", "none", 0, 89.0, backbone="resnet32")
    fabricate_run(tmp_path / "resnet32" / "none1", "none", 1, 90.0, backbone="resnet32")
    fabricate_run(tmp_path / "resnet32" / "se0", "se", 0, 90.0, backbone="resnet32")
    fabricate_run(tmp_path / "resnet32" / "se1", "se", 1, 91.5, backbone="resnet32")
    table = summarize(scan([tmp_path]).runs).set_index(["backbone", "attention"])
    for backbone, modules in (("resnet20", ["se", "eca", "cbam"]), ("resnet56", ["se", "eca"])):
        p_values = [stats.ttest_ind(by_seed[module], by_seed["none"], equal_var=False).pvalue for module in modules]
        block = table.loc[backbone].loc[modules]
        assert block["p_value"].to_numpy() == pytest.approx(p_values)
        assert block["p_holm"].to_numpy() == pytest.approx(holm(p_values))
        assert (block["comparisons"] == len(modules)).all()
    assert table.loc[("resnet20", "se"), "p_holm"] == pytest.approx(3 * table.loc[("resnet20", "se"), "p_value"])
    assert table.loc[("resnet32", "se"), "p_holm"] == table.loc[("resnet32", "se"), "p_value"]
    assert math.isnan(table.loc[("resnet20", "none"), "p_holm"]) and pd.isna(table.loc[("resnet20", "none"), "comparisons"])
    shown = presentation(summarize(scan([tmp_path]).runs)).set_index(["backbone", "attention"])
    assert shown.loc[("resnet20", "se"), "p (Holm)"] == f"{3 * table.loc[('resnet20', 'se'), 'p_value']:#.3g}"
    alone = presentation(summarize(scan([tmp_path / "resnet32"]).runs))
    assert "p (Welch)" in alone.columns and "p (Holm)" not in alone.columns


def test_seed_by_seed_p_values_are_adjusted_over_the_rows_paired_with_one_baseline(tmp_path):
    _paired_sweep(tmp_path)
    for seed, top1 in enumerate(NONE_BY_SEED):
        fabricate_run(tmp_path / f"eca{seed}", "eca", seed, top1 + (0.1, -0.2, 0.3, 0.0)[seed], paired_by_seed=True)
    table = summarize(scan([tmp_path]).runs).set_index("attention")
    p_values = table.loc[["eca", "se"], "paired_p_value"].to_numpy()
    assert table.loc[["eca", "se"], "paired_p_holm"].to_numpy() == pytest.approx(holm(p_values))
    assert (table.loc[["eca", "se"], "paired_comparisons"] == 2).all()
    assert "p (paired, Holm)" in to_markdown(table.reset_index())


@pytest.mark.parametrize("paired, se_seeds", [((True, False), (0, 1, 2, 3)), ((False, False), (0, 1, 2, 3)),
                                              ((True, True), (3,))], ids=["se_runs_older", "all_older", "one_seed"])
def test_runs_made_before_their_seeds_shared_streams_or_one_matching_seed_are_not_paired(tmp_path, paired, se_seeds):
    table = _paired_sweep(tmp_path, paired, se_seeds)
    row = table.set_index("attention").loc["se"]
    assert all(math.isnan(row[column]) for column in ("pairs", "paired_delta_top1", "paired_p_value"))
    assert "paired" not in to_markdown(table)


def test_welch_is_undefined_below_two_seeds_or_without_spread():
    delta, low, high, p_value, _ = welch(np.array([92.0]), np.array([89.0, 90.0]))
    assert delta == pytest.approx(2.5) and all(math.isnan(v) for v in (low, high, p_value))
    assert all(math.isnan(v) for v in welch(np.array([1.0, 1.0]), np.array([1.0, 1.0]))[1:])


def test_seeds_that_agree_on_both_sides_claim_no_interval_or_p_value():
    """Equal floats can have a variance of 1e-28, not 0: the test must not turn that into a zero-width
    interval and p ≈ 0 (seeds that do not take effect: when a claim would be most wrong)."""
    assert np.array([90.1] * 3).var() != 0  # the float trap this guards against
    delta, low, high, p_value, _ = welch(np.array([91.2] * 3), np.array([90.1] * 3))
    assert delta == pytest.approx(1.1) and all(math.isnan(v) for v in (low, high, p_value))


def test_two_baseline_rows_in_one_setting_give_no_delta_against_either(tmp_path):
    """Baseline runs that split on an attention option (shown in the label) leave the variant with two
    candidate baselines: no Δ rather than one picked by sort order."""
    for seed in range(3):
        fabricate_run(tmp_path / f"a{seed}", "none", seed, 90.0 + seed / 10, options={"extra": 1})
        fabricate_run(tmp_path / f"b{seed}", "none", seed, 80.0 + seed / 10, options={"extra": 2})
        fabricate_run(tmp_path / f"se{seed}", "se", seed, 91.0 + seed / 10)
    table = summarize(scan([tmp_path]).runs)
    assert table["attention"].tolist() == ["none[extra=1]", "none[extra=2]", "se[extra=—]"]
    assert table["delta_top1"].isna().all(), table[["attention", "delta_top1"]]


def test_copies_of_a_run_without_a_seed_count_once(tmp_path):
    run = fabricate_run(tmp_path / "run", "se", None, 91.0, finished_at="2026-12-05T08:00:00+00:00", pid=41)
    for copy in ("copy1", "copy2"):
        shutil.copytree(run, tmp_path / copy)
    fabricate_run(tmp_path / "other", "se", None, 92.0, finished_at="2026-12-05T08:00:00+00:00", pid=42)
    scanned = scan([tmp_path])
    table = summarize(scanned.runs)
    assert table["n"].tolist() == [2]  # the run (once) and the other seedless run
    assert sum("same experiment and process and end (no seed)" in why for _, why in scanned.problems) == 2


def test_p_values_keep_three_significant_digits():
    from analysis.summarize import _p_cell

    assert [_p_cell(p) for p in (0.0496, 0.05, 0.1716, 0.0004)] == ["0.0496", "0.0500", "0.172", "<0.001"]
    # trailing zeros are digits too: 0.04996 printed "0.05" and 0.5503 "0.55"
    assert [_p_cell(p) for p in (0.04996, 0.5503, 0.1)] == ["0.0500", "0.550", "0.100"]


def test_welch_with_one_side_without_spread_is_silent():
    # scipy warns of "precision loss" on a constant sample; the test is well defined with one spread side
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        delta, low, high, p_value, _ = welch(np.array([8.59375, 8.59375]), np.array([9.0, 8.0]))
    assert low < delta < high and 0 < p_value < 1


def test_a_baseline_no_run_has_is_said_not_silently_an_empty_delta_column(sweep, capsys):
    assert summarize_main([str(sweep), "--baseline", "None", "--out", str(sweep / "out")]) == 0
    assert "warning: no completed run of the baseline None; no Δ column (the variants are: none, se)" in capsys.readouterr().err


def test_cost_and_speed_deltas_against_the_same_backbone_baseline(costed_sweep):
    table = summarize(scan([costed_sweep]).runs).set_index(["backbone", "attention"])
    se = table.loc[("resnet20", "se")]
    assert se["params"] == 1100 and se["params_delta_pct"] == pytest.approx(10.0)
    assert se["flops"] == 2_100_000 and se["flops_delta_pct"] == pytest.approx(5.0)
    assert se["train_images_per_s"] == pytest.approx(800.0)
    assert se["train_images_per_s_delta_pct"] == pytest.approx(-20.0)
    baseline = table.loc[("resnet20", "none")]
    assert baseline["delta_top1"] == 0 and math.isnan(baseline["p_value"])
    one_seed = table.loc[("resnet20", "se[reduction=8]")]
    assert one_seed["n"] == 1 and math.isnan(one_seed["top1_std"])
    assert one_seed["delta_top1"] == pytest.approx(2.5) and math.isnan(one_seed["delta_top1_low"])
    assert math.isnan(one_seed["train_images_per_s"]) and math.isnan(one_seed["train_images_per_s_delta_pct"])
    no_baseline = table.loc[("resnet56", "se")]  # no resnet56 + none run: nothing to compare with
    assert math.isnan(no_baseline["delta_top1"]) and math.isnan(no_baseline["params_delta_pct"])


H200 = [{"device": "NVIDIA H200", "processes": 1}]
H100 = [{"device": "NVIDIA H100 80GB HBM3", "processes": 1}]


def test_speeds_from_different_hardware_are_never_averaged_or_compared(tmp_path):
    """The accuracy rows stay as they are; a speed is averaged only over runs timed on one machine,
    and Δ img/s needs the baseline's machine (an H100 baseline against H200 runs was −x % of nothing)."""
    fabricate_run(tmp_path / "none0", "none", 0, 90.0, train_images_per_s=1000.0, hardware=H100)
    fabricate_run(tmp_path / "none1", "none", 1, 90.5, train_images_per_s=1010.0, hardware=H100)
    fabricate_run(tmp_path / "se0", "se", 0, 91.0, train_images_per_s=1500.0, hardware=H200)
    fabricate_run(tmp_path / "se1", "se", 1, 91.5, train_images_per_s=1520.0, hardware=H200)
    fabricate_run(tmp_path / "eca0", "eca", 0, 91.0, train_images_per_s=990.0, hardware=H100)
    fabricate_run(tmp_path / "eca1", "eca", 1, 91.0, train_images_per_s=1400.0, hardware=H200)
    table = summarize(scan([tmp_path]).runs).set_index("attention")
    assert table.loc["none", "train_images_per_s"] == pytest.approx(1005.0)
    assert table.loc["se", "train_images_per_s"] == pytest.approx(1510.0)
    assert math.isnan(table.loc["se", "train_images_per_s_delta_pct"])  # H200 against an H100 baseline
    assert math.isnan(table.loc["eca", "train_images_per_s"])  # its two seeds ran on different GPUs
    assert table.loc["se", "n"] == 2 and table.loc["se", "delta_top1"] == pytest.approx(1.0)  # accuracy as before
    shown = to_markdown(summarize(scan([tmp_path]).runs))
    assert "timed on" in shown and "NVIDIA H200" in shown and "NVIDIA H100 80GB HBM3" in shown


def test_speeds_logged_or_profiled_at_other_intervals_are_never_averaged_or_compared(tmp_path):
    """trainer.log_every_n_steps and profile.* are one experiment (same weights), but logging waits for
    the device at every logged step and the profiler runs inside the timed epochs: their speeds were
    averaged in one row and compared with the baseline's."""
    cpu = [{"device": "AMD EPYC 7763 64-Core Processor", "threads": 2, "processes": 1}]
    every = {"trainer.log_every_n_steps": 10}
    fabricate_run(tmp_path / "none0", "none", 0, 90.0, train_images_per_s=100.0, hardware=cpu, settings=every)
    fabricate_run(tmp_path / "none1", "none", 1, 90.0, train_images_per_s=102.0, hardware=cpu, settings=every)
    fabricate_run(tmp_path / "se0", "se", 0, 91.0, train_images_per_s=80.0, hardware=cpu, settings=every)
    fabricate_run(tmp_path / "se1", "se", 1, 91.0, train_images_per_s=40.0, hardware=cpu,
                  settings={"trainer.log_every_n_steps": 1})
    fabricate_run(tmp_path / "eca0", "eca", 0, 91.0, train_images_per_s=70.0, hardware=cpu,
                  settings={**every, "profile.steps": 20})
    table = summarize(scan([tmp_path]).runs).set_index("attention")
    assert table.loc["none", "train_images_per_s"] == pytest.approx(101.0)
    assert table.loc["se", "n"] == 2 and math.isnan(table.loc["se", "train_images_per_s"])
    assert table.loc["eca", "train_images_per_s"] == pytest.approx(70.0)
    assert math.isnan(table.loc["eca", "train_images_per_s_delta_pct"])  # profiled against unprofiled


def test_speeds_on_the_same_hardware_compare_and_the_table_needs_no_hardware_column(tmp_path):
    cpu = [{"device": "AMD EPYC 7763 64-Core Processor", "threads": 2, "processes": 1}]
    fabricate_run(tmp_path / "none0", "none", 0, 90.0, train_images_per_s=100.0, hardware=cpu)
    fabricate_run(tmp_path / "se0", "se", 0, 91.0, train_images_per_s=80.0, hardware=cpu)
    fabricate_run(tmp_path / "other_threads", "eca", 0, 91.0, train_images_per_s=150.0,
                  hardware=[{**cpu[0], "threads": 4}])
    table = summarize(scan([tmp_path]).runs).set_index("attention")
    assert table.loc["se", "train_images_per_s_delta_pct"] == pytest.approx(-20.0)
    assert table.loc["se", "speed_hardware"] == "AMD EPYC 7763 64-Core Processor, 2 threads"
    assert math.isnan(table.loc["eca", "train_images_per_s_delta_pct"])  # 4 threads against 2
    fabricate_run(tmp_path / "parallel", "eca", 1, 91.0, train_images_per_s=50.0,
                  hardware=[{**cpu[0], "parallel_jobs": 4}])
    assert "4 jobs at once" in scan([tmp_path]).runs.set_index("seed").loc[1, "speed_hardware"]
    # data.num_workers gives the same batches (one row) at another speed: not averaged with the rest
    fabricate_run(tmp_path / "workers", "se", 2, 91.0, train_images_per_s=300.0, hardware=[{**cpu[0], "loader_workers": 4}])
    table = summarize(scan([tmp_path]).runs).set_index("attention")
    assert table.loc["se", "n"] == 2 and math.isnan(table.loc["se", "train_images_per_s"])
    (tmp_path / "other_threads").rename(tmp_path.parent / "moved_away")
    (tmp_path / "parallel").rename(tmp_path.parent / "moved_away_too")
    (tmp_path / "workers").rename(tmp_path.parent / "moved_away_as_well")
    assert "timed on" not in to_markdown(summarize(scan([tmp_path]).runs))  # one machine: no column


def test_runs_that_recorded_no_hardware_have_no_speed(tmp_path):
    """Runs from before results.json recorded its hardware (or wandb runs without it) were compared as
    one "unknown" machine: two sessions' CPUs, loaded or not, gave a Δ img/s of −47 % on the CPU table."""
    fabricate_run(tmp_path / "none0", "none", 0, 90.0, train_images_per_s=360.0, hardware=None)
    fabricate_run(tmp_path / "se0", "se", 0, 91.0, train_images_per_s=190.0, hardware=None)
    table = summarize(scan([tmp_path]).runs).set_index("attention")
    assert table["train_images_per_s"].isna().all() and table["train_images_per_s_delta_pct"].isna().all()
    assert table.loc["se", "delta_top1"] == pytest.approx(1.0)  # the accuracies as before


def test_a_run_resumed_on_other_hardware_has_no_speed(tmp_path):
    fabricate_run(tmp_path / "none0", "none", 0, 90.0, train_images_per_s=100.0, hardware=H200 + H100)
    [row] = scan([tmp_path]).runs.to_dict("records")
    assert math.isnan(row["train_images_per_s"]) and row["top1"] == 90.0


def test_a_malformed_hardware_record_is_reported_and_skipped(tmp_path, capsys):
    fabricate_run(tmp_path / "bad", "none", 0, 90.0, hardware="H200")
    fabricate_run(tmp_path / "no_device", "none", 1, 90.0, hardware=[{"threads": 2}])
    assert scan([tmp_path]).runs.empty
    assert capsys.readouterr().err.count("hardware = ") == 2


def test_failed_runs_are_not_averaged_and_corrupt_files_are_skipped(sweep, capsys):
    runs = scan([sweep]).runs
    assert len(runs) == 6  # the corrupt file is skipped, the failed run kept but apart
    assert "skipping unreadable" in capsys.readouterr().err
    assert summarize(runs).set_index("attention").loc["se", "n"] == 3


def test_a_row_counts_its_diverged_seeds_and_a_module_that_always_diverged_is_warned_of(sweep, capsys):
    """A diverged seed is in neither n nor the mean: without a count, SE with one seed of four
    diverged read as the same evidence as SE with three clean seeds."""
    fabricate_run(sweep / "se3", "se", 3, 10.0, status="diverged")
    fabricate_run(sweep / "eca0", "eca", 0, 10.0, status="diverged")
    fabricate_run(sweep / "eca1", "eca", 1, 10.0, status="diverged")
    runs = scan([sweep]).runs
    table = summarize(runs).set_index("attention")
    assert (table.loc["se", "n"], table.loc["se", "diverged"], table.loc["none", "diverged"]) == (3, 1, 0)
    assert "eca" not in table.index
    header, _, *rows = to_markdown(summarize(runs)).splitlines()
    names = [cell.strip() for cell in header.split("|")[1:-1]]
    cells = {cell[names.index("attention")]: cell for cell in ([part.strip() for part in row.split("|")[1:-1]]
                                                                 for row in rows)}
    column = names.index("diverged")
    assert (cells["none"][column], cells["se"][column]) == ("", "1")
    assert summarize_main([str(sweep), "--out", str(sweep / "out")]) == 0
    assert "embedded resnet20 eca: each of its 2 seeds diverged; it has no row in the table" in capsys.readouterr().err
    fabricate_run(sweep / "copy_of_se3", "se", 3, 10.0, status="diverged")  # a packed copy: the same seed
    fabricate_run(sweep / "se0_diverged_first", "se", 0, 10.0, status="diverged")  # seed 0 completed since
    assert summarize(scan([sweep]).runs).set_index("attention").loc["se", "diverged"] == 1
    clean = [row for _, row in runs.iterrows() if row["status"] != "diverged"]
    assert "diverged" not in to_markdown(summarize(pd.DataFrame(clean))).splitlines()[0]


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
    table = summarize(scan([costed_sweep]).runs)
    markdown = to_markdown(table)
    header = markdown.splitlines()[0]
    for column in ["Δ top-1 [95 % CI]", "p (Welch)", "params (M)", "Δ params %", "GFLOPs", "Δ FLOPs %",
                   "train img/s", "Δ img/s %"]:
        assert column in header
    se_row = next(line for line in markdown.splitlines() if re.search(r"\| se +\|", line) and "resnet20" in line)
    assert "+1.83 [−1.46, +5.13]" in se_row and "0.172" in se_row
    assert "+10" in se_row and "+5" in se_row and "−20" in se_row
    assert re.search(r"\| +800 \|", se_row) and " of " not in se_row  # every run timed: the mean alone
    latex = to_latex(table)
    assert latex.startswith("\\begin{tabular}") and "\\toprule" in latex
    assert "$\\pm$" in latex and "$\\Delta$ top-1" in latex and "se[reduction=8]" in latex


def test_no_speed_columns_without_measurements(sweep):
    header = to_markdown(summarize(scan([sweep]).runs)).splitlines()[0]
    assert "img/s" not in header


def test_cli_prints_markdown_and_writes_csv(sweep, tmp_path):
    out = tmp_path / "tables"
    completed = subprocess.run(
        [sys.executable, str(ROOT / "analysis" / "summarize.py"), str(sweep), "--out", str(out)],
        capture_output=True, text=True, check=True,
    )
    assert re.search(r"\| embedded +\| resnet20 +\| se +\| +3 \| +91\.33 ± 1\.53 \| +96\.33 \|", completed.stdout)
    assert "not averaged" in completed.stdout and "failed" in completed.stdout
    assert "skipped (no usable results.json, or a seed already counted)" in completed.stdout
    assert "corrupt" in completed.stdout
    assert (out / "summary.csv").read_text().startswith("data,backbone,attention,n,top1_mean,top1_std")
    assert (out / "summary.md").is_file() and (out / "summary.tex").read_text().startswith("\\begin{tabular}")
    assert len(pd.read_csv(out / "runs.csv")) == 6
    assert not list(out.glob(".*tmp"))  # atomic writes leave no temporaries behind


def test_rows_link_to_their_wandb_runs(tmp_path):
    from analysis.summarize import scan, summarize, to_markdown

    for seed in (0, 1):
        fabricate_run(tmp_path / f"se{seed}", "se", seed, 90.0 + seed, wandb_url=f"https://wandb.ai/me/zoo/runs/se{seed}")
    fabricate_run(tmp_path / "none0", "none", 0, 89.0)  # logged offline or not to wandb: no link
    markdown = to_markdown(summarize(scan([tmp_path]).runs))
    assert "[s0](https://wandb.ai/me/zoo/runs/se0) [s1](https://wandb.ai/me/zoo/runs/se1)" in markdown
    none_row = next(line for line in markdown.splitlines() if "| none" in line)
    assert "wandb.ai" not in none_row


# ---------------------------------------------------------------- a row is one experiment


def test_a_placement_sweep_gives_one_row_per_placement_with_its_own_params(tmp_path):
    # the SE paper's Table 14 on resnet20: the pre placement has fewer parameters than the others
    params = {"standard": 278_346, "pre": 277_442, "post": 278_346, "identity": 278_346}
    for placement, count in params.items():
        for seed in (0, 1):
            fabricate_run(tmp_path / f"{placement}{seed}", "se", seed, 40.0 + seed + len(placement), params=count,
                          settings={"backbone.placement": placement})
    table = summarize(scan([tmp_path]).runs).set_index("attention")
    assert sorted(table.index) == sorted(f"se[placement={placement}]" for placement in params)
    assert table["n"].tolist() == [2, 2, 2, 2]
    for placement, count in params.items():
        assert table.loc[f"se[placement={placement}]", "params"] == count
        assert table.loc[f"se[placement={placement}]", "top1_mean"] == pytest.approx(40.5 + len(placement))


def test_stage_lists_split_rows_and_join_the_existing_variant_options(tmp_path):
    for stages in ([1], [3]):
        fabricate_run(tmp_path / f"s{stages[0]}", "se", 0, 50.0 + stages[0], variant="se[reduction=8]",
                      options={"reduction": 8}, settings={"backbone.stages": stages})
    table = summarize(scan([tmp_path]).runs)
    assert table["attention"].tolist() == ["se[reduction=8,stages=[1]]", "se[reduction=8,stages=[3]]"]
    assert table["n"].tolist() == [1, 1]


def test_other_differing_keys_become_columns_and_each_row_has_its_own_baseline(tmp_path):
    for lr, offset in ((0.1, 0.0), (0.05, 10.0)):
        for seed in (0, 1):
            fabricate_run(tmp_path / f"se{lr}_{seed}", "se", seed, 60.0 + offset + seed, params=1100,
                          settings={"optim.lr": lr})
            fabricate_run(tmp_path / f"none{lr}_{seed}", "none", seed, 55.0 + offset + seed, settings={"optim.lr": lr})
    runs = scan([tmp_path]).runs
    table = summarize(runs)
    assert list(table.columns[:5]) == ["data", "backbone", "attention", "optim.lr", "n"]
    assert table[["attention", "optim.lr"]].values.tolist() == [
        ["none", "0.05"], ["se", "0.05"], ["none", "0.1"], ["se", "0.1"]  # each baseline leads its block
    ]
    assert table["n"].tolist() == [2, 2, 2, 2]
    # se at lr 0.05 is compared with none at lr 0.05 (Δ 5), never with the other learning rate
    assert table["delta_top1"].tolist() == pytest.approx([0.0, 5.0, 0.0, 5.0])
    assert table["params_delta_pct"].tolist()[1] == pytest.approx(10.0)
    header = to_markdown(table).splitlines()[0]
    assert re.match(r"\| data +\| backbone +\| attention +\| optim.lr +\| +n \|", header)
    assert "optim.lr" in to_latex(table) and "optim.lr" in run_table(runs).columns


def test_keys_that_do_not_change_the_experiment_do_not_split_rows(tmp_path):
    for seed, workers in enumerate([0, 4, 8]):
        fabricate_run(tmp_path / f"se{seed}", "se", seed, 90.0 + seed, settings={
            "data.num_workers": workers, "data.eval_batch_size": 1000 * seed or None, "resume": f"/r/{seed}",
            "logger.csv.save_dir": str(tmp_path / f"se{seed}"), "profile.steps": seed,
            "data.root": f"/data{seed}", "hydra.job.num": seed, "trainer.enable_progress_bar": bool(seed),
        })
    table = summarize(scan([tmp_path]).runs)
    assert table["attention"].tolist() == ["se"] and table["n"].tolist() == [3]
    assert list(table.columns[:4]) == ["data", "backbone", "attention", "n"]
    for key in ("seed", "paths.output_dir", "logger.csv.save_dir", "data.num_workers", "data.eval_batch_size",
                "resume", "profile.steps", "hydra.job.num"):
        assert is_ignored(key), key
    for key in ("optim.lr", "backbone.placement", "trainer.max_epochs", "data.batch_size", "label_smoothing"):
        assert not is_ignored(key), key


def test_the_cli_shows_the_experiments_in_the_table_and_both_csvs(tmp_path):
    sweep = tmp_path / "sweep"
    for placement in ("standard", "pre"):
        fabricate_run(sweep / placement, "se", 0, 50.0, settings={"backbone.placement": placement,
                                                                   "trainer.max_epochs": 30})
    fabricate_run(sweep / "short", "se", 0, 40.0, settings={"backbone.placement": "pre", "trainer.max_epochs": 3})
    out = tmp_path / "out"
    completed = subprocess.run([sys.executable, str(ROOT / "analysis" / "summarize.py"), str(sweep), "--out", str(out)],
                               capture_output=True, text=True, check=True)
    assert re.search(r"\| se\[placement=pre\] +\| 3 +\|", completed.stdout)
    assert re.search(r"\| se\[placement=pre\] +\| 30 +\|", completed.stdout)
    assert re.search(r"\| se\[placement=standard\] +\| 30 +\|", completed.stdout)
    summary = pd.read_csv(out / "summary.csv", dtype=str)
    assert list(summary.columns[:5]) == ["data", "backbone", "attention", "trainer.max_epochs", "n"]
    assert sorted(zip(summary["attention"], summary["trainer.max_epochs"])) == [
        ("se[placement=pre]", "3"), ("se[placement=pre]", "30"), ("se[placement=standard]", "30")]
    runs = pd.read_csv(out / "runs.csv", dtype=str)
    assert sorted(runs["attention"]) == ["se[placement=pre]", "se[placement=pre]", "se[placement=standard]"]
    assert sorted(runs["trainer.max_epochs"]) == ["3", "30", "30"]


def test_a_terminal_that_cannot_show_the_tables_symbols_gets_them_escaped_not_a_traceback(tmp_path):
    for seed, (none, se) in enumerate([(90.0, 89.0), (91.0, 89.5)]):
        fabricate_run(tmp_path / "sweep" / f"none{seed}", "none", seed, none)
        fabricate_run(tmp_path / "sweep" / f"se{seed}", "se", seed, se)
    completed = subprocess.run([sys.executable, str(ROOT / "analysis" / "summarize.py"), str(tmp_path / "sweep")],
                               capture_output=True, text=True, encoding="latin-1",
                               env={**os.environ, "PYTHONIOENCODING": "latin-1"})
    assert completed.returncode == 0, completed.stderr[-2000:]
    assert "\\u0394 top-1" in completed.stdout and "\\u22121.25" in completed.stdout  # Δ, and −1.25 keeps its sign
    assert "± " in completed.stdout  # what latin-1 has stays as it is


# ---------------------------------------------------------------- n counts independent seeds of one experiment


def _rows(folder: Path) -> list[tuple[str, int]]:
    table = summarize(scan([folder]).runs)
    shown = [column for column in ("data_fingerprint", "val_images", "extended") if column in table.columns]
    return [(" ".join(str(row[column]) for column in shown), row["n"]) for _, row in table.iterrows()]


def test_runs_on_different_data_at_ignored_roots_are_two_experiments(tmp_path):
    """data.root only says where the data lie: the recorded data_fingerprint says which data they are."""
    for seed, (root, fingerprint) in enumerate([("/a", "aaaa"), ("/a_copy", "aaaa"), ("/b", "bbbb"), ("/b", "bbbb")]):
        fabricate_run(tmp_path / f"run{seed}", "none", seed, 50.0 + seed, data="imagefolder",
                      settings={"data.root": root}, data_fingerprint=fingerprint)
    assert _rows(tmp_path) == [("aaaa", 2), ("bbbb", 2)]


def test_runs_scored_on_different_validation_subsets_are_two_experiments(tmp_path):
    """eval_batch_size is ignored, but with trainer.limit_val_batches it picks how many images are scored."""
    for seed, (batch, images) in enumerate([(100, 200), (100, 200), (500, 1000)]):
        fabricate_run(tmp_path / f"run{seed}", "none", seed, 50.0 + seed, val_images=images,
                      settings={"data.eval_batch_size": batch, "trainer.limit_val_batches": 2})
    assert _rows(tmp_path) == [("1000", 1), ("200", 2)]


def test_an_extended_run_is_not_one_trained_for_its_length_from_the_start(tmp_path):
    """Extended from 2 to 3 epochs (its LR schedule rebuilt at step 6) is its own row; a run resumed
    with its own max_epochs (one schedule) is the uninterrupted run's experiment, as is an older run
    that recorded no schedule."""
    schedules = {"fresh": [[0, 3]], "resumed": [[0, 3]], "old": None, "extended": [[0, 2], [6, 3]]}
    for seed, (name, schedule) in enumerate(schedules.items()):
        extra = {"max_epochs_history": schedule} if schedule else {}
        fabricate_run(tmp_path / name, "none", seed, 50.0 + seed, settings={"trainer.max_epochs": 3}, **extra)
    assert _rows(tmp_path) == [("2 → 3 from step 6", 1), ("—", 3)]


def test_a_run_found_twice_counts_as_one_seed_and_the_copy_is_listed(tmp_path, capsys):
    sweep = tmp_path / "multirun"
    for seed in (0, 1):
        fabricate_run(sweep / f"none{seed}", "none", seed, 50.0 + seed)
        fabricate_run(sweep / f"se{seed}", "se", seed, 52.0 + seed, finished_at=f"2026-12-0{seed + 1}T10:00:00+00:00")
    packed = Path(shutil.copytree(sweep, tmp_path / "results"))  # a packed copy beside its origin
    # the same seed again, later
    fabricate_run(tmp_path / "rerun", "se", 1, 60.0, finished_at="2026-12-09T10:00:00+00:00")
    found = scan([sweep, packed, tmp_path / "rerun", sweep / "none0"])  # overlapping folders: read once
    table = summarize(found.runs).set_index("attention")
    assert table["n"].to_dict() == {"none": 2, "se": 2}
    assert table.loc["se", "top1_mean"] == pytest.approx((52.0 + 60.0) / 2)  # the newest of seed 1 is kept
    assert len(found.runs) == 4 and len(found.records) == 4
    repeated = {path: problem for path, problem in found.problems}
    assert len(repeated) == 5  # 4 copies and the older se seed 1
    assert all(problem.startswith("same experiment and seed as ") for problem in repeated.values())
    assert repeated[str(sweep / "se1")] == f"same experiment and seed as {tmp_path / 'rerun'}"
    assert f"same experiment and seed as {tmp_path / 'rerun'}: {sweep / 'se1'}" in capsys.readouterr().err


def test_an_unfinished_attempt_of_a_seed_that_completed_elsewhere_is_not_listed_as_unfinished(tmp_path):
    """A resumed wandb run is a new wandb run: its interrupted predecessor stayed under "not completed"
    for good, though the seed had finished. A seed nobody completed stays listed."""
    fabricate_run(tmp_path / "se1_first", "se", 1, 40.0, status="interrupted")
    fabricate_run(tmp_path / "se1_resumed", "se", 1, 60.0)
    fabricate_run(tmp_path / "se2_failed", "se", 2, 10.0, status="failed")
    fabricate_run(tmp_path / "none1_stopped", "none", 1, 30.0, status="interrupted")  # another experiment
    fabricate_run(tmp_path / "se1_diverged", "se", 1, 10.0, status="diverged")  # an outcome on a GPU: stays
    found = scan([tmp_path])
    assert sorted(found.runs["path"]) == [str(tmp_path / name)
                                          for name in ("none1_stopped", "se1_diverged", "se1_resumed", "se2_failed")]
    assert dict(found.problems) == {
        str(tmp_path / "se1_first"): f"interrupted; {tmp_path / 'se1_resumed'} completed the same experiment and seed"}


def test_imagefolder_runs_split_by_the_data_and_validation_images_they_had_not_by_their_paths(tmp_path):
    """data.root and data.eval_batch_size are ignored keys, but two folders with other class folders
    are other data, and two validation batch sizes under limit_val_batches score other images."""
    image_tree(tmp_path / "a", classes=("cat", "dog"), per_class=4)
    shutil.copytree(tmp_path / "a", tmp_path / "a_copy")  # the same data at another path
    image_tree(tmp_path / "b", classes=("ant", "bee"), per_class=4)
    folders = ",".join(str(tmp_path / name) for name in ("a", "a_copy", "b"))
    common = (*QUICK, *IMAGEFOLDER, "attention=none")
    sweep = run_entry_point("-m", *common, f"data.root={folders}", "seed=0,1", f"hydra.sweep.dir={tmp_path / 'sweep'}",
                            cwd=tmp_path)
    assert sweep.returncode == 0, sweep.stderr[-2000:]
    larger = run_entry_point(*common, f"data.root={tmp_path / 'a'}", "data.eval_batch_size=3",
                             f"hydra.run.dir={tmp_path / 'sweep' / 'eval3'}", cwd=tmp_path)
    assert larger.returncode == 0, larger.stderr[-2000:]
    found = scan([tmp_path / "sweep"])
    table = summarize(found.runs)
    fingerprint = {Path(results(Path(path))["config"]["data"]["root"]).name: results(Path(path))["data_fingerprint"]
                   for path in found.runs["path"]}
    assert fingerprint["a"] == fingerprint["a_copy"] != fingerprint["b"]
    rows = {(row["data_fingerprint"], row["val_images"]): row["n"] for _, row in table.iterrows()}
    # 2 validation batches of 2 (of 3: 6) of the 8 validation images; a_copy's runs repeat a's seeds
    assert rows == {(fingerprint["a"], "4"): 2, (fingerprint["a"], "6"): 1, (fingerprint["b"], "4"): 2}
    assert len(found.problems) == 2 and all(problem.startswith("same experiment and seed as ")
                                            for _, problem in found.problems)


# ---------------------------------------------------------------- malformed results.json


MALFORMED = {
    "list_backbone": ({"backbone": ["resnet20"]}, "backbone = [\"resnet20\"]: not a name"),
    "infinite_top1": ({"top1": math.inf}, "top1 = Infinity: not a finite accuracy"),
    "top1_250": ({"top1": 250.0}, "top1 = 250.0: not a finite accuracy in [0, 100] %"),
    "nan_top5": ({"top5": math.nan}, "top5 = NaN: not a finite accuracy"),
    "text_top1": ({"top1": "90"}, "top1 = \"90\": not a finite accuracy"),
    "bool_seed": ({"seed": True}, "seed = true: not an integer"),
    "negative_params": ({"params": -5}, "params = -5: not a finite non-negative number"),
    "config_list": ({"config": [1, 2]}, "config = [1, 2]: not a mapping"),
    "bad_history": ({"history": [{"epoch": 0, "top1": 1e9}]}, "history: top1 = 1000000000.0"),
}


@pytest.fixture
def malformed(tmp_path):
    """Two good se runs beside one broken results.json of every kind the analysis meets."""
    for seed, top1 in enumerate([90.0, 92.0]):
        fabricate_run(tmp_path / f"good{seed}", "se", seed, top1, curve=[top1 - 5, top1])
    for name, (fields, _) in MALFORMED.items():
        folder = fabricate_run(tmp_path / name, "se", 5, 50.0)
        record = {**json.loads((folder / "results.json").read_text()), **fields}
        (folder / "results.json").write_text(json.dumps(record))  # json writes NaN/Infinity as Python does
    (tmp_path / "folder" / "results.json").mkdir(parents=True)
    (tmp_path / "pipe").mkdir()
    os.mkfifo(tmp_path / "pipe" / "results.json")  # reading it would wait for a writer forever
    (tmp_path / "loop").mkdir()
    (tmp_path / "loop" / "results.json").symlink_to(tmp_path / "loop" / "results.json")
    (tmp_path / "binary").mkdir()
    (tmp_path / "binary" / "results.json").write_bytes(b'{"schema": 1, "data": "\xff\xfe"}')
    return tmp_path


def _scan_within(folder: Path, seconds: float = 120):
    """``scan`` in a daemon thread: a read that blocks (on the named pipe) fails the test, not hangs it."""
    result = {}
    worker = threading.Thread(target=lambda: result.update(found=scan([folder])), daemon=True)
    worker.start()
    worker.join(seconds)
    assert "found" in result, f"scan did not return within {seconds} s"
    return result["found"]


def test_every_malformed_results_json_is_reported_by_path_and_skipped(malformed):
    found = _scan_within(malformed)
    problems = {Path(path).parent.name: problem for path, problem in found.problems}
    for name, (_, reason) in MALFORMED.items():
        assert problems[name].startswith("invalid results.json (") and reason in problems[name], name
    assert problems["folder"] == "unusable results.json (not a regular file: a folder)"
    assert problems["pipe"] == "unusable results.json (not a regular file: a named pipe)"
    assert problems["loop"].startswith("unreadable results.json (") and "symbolic links" in problems["loop"]
    assert problems["binary"].startswith("unreadable results.json (") and "utf-8" in problems["binary"]
    assert sorted(found.runs["path"].map(lambda path: Path(path).name)) == ["good0", "good1"]
    table = summarize(found.runs)
    assert table["n"].tolist() == [2] and table["top1_mean"].tolist() == [91.0]


def test_malformed_runs_neither_crash_nor_hang_the_three_scripts(malformed, tmp_path):
    out = tmp_path / "out"
    for script in ("summarize", "plots", "report"):
        completed = subprocess.run([sys.executable, str(ROOT / "analysis" / f"{script}.py"), str(malformed),
                                    "--out", str(out)], capture_output=True, text=True, timeout=240)
        assert completed.returncode == 0, completed.stderr[-2000:]
        assert "Traceback" not in completed.stderr
        assert f"skipping unusable results.json (not a regular file: a named pipe): {malformed / 'pipe'}" \
            in completed.stderr
        assert "list_backbone" in completed.stderr and "top1 = 250.0" in completed.stderr
    assert pd.read_csv(out / "summary.csv")["top1_mean"].tolist() == [91.0]
    page = (out / "report.html").read_text()
    assert "Skipped (no usable results.json, or a seed already counted)" in page
    assert "not a regular file: a named pipe" in page


@pytest.mark.parametrize("script", ["summarize", "plots", "report"])
def test_a_folder_with_no_run_beneath_it_is_refused_and_nothing_is_written(tmp_path, script, capsys):
    """A mistyped sweep path that exists (empty, or a parent of the wrong runs) wrote empty tables, exit 0."""
    main = importlib.import_module(f"analysis.{script}").main
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    with pytest.raises(SystemExit) as stop:
        main([str(tmp_path / "empty")])
    assert stop.value.code == 2
    assert f"error: no runs in {tmp_path / 'empty'}: no results.json or run folder" in capsys.readouterr().err
    assert sorted(path.name for path in (tmp_path / "empty").iterdir()) == ["sub"]
    fabricate_run(tmp_path / "empty" / "sub" / "0", "none", 0, 90.0)
    assert main([str(tmp_path / "empty"), "--out", str(tmp_path / "out")]) == 0


@pytest.mark.parametrize("script", ["summarize", "plots", "report"])
def test_an_out_that_is_a_file_is_one_error_line(sweep, tmp_path, script, capsys):
    main = importlib.import_module(f"analysis.{script}").main
    not_a_folder = tmp_path / "file.txt"
    not_a_folder.write_text("keep me\n")
    for out in (not_a_folder, not_a_folder / "below"):
        capsys.readouterr()
        assert main([str(sweep), "--out", str(out)]) == 2  # returned: no exception, no traceback
        lines = capsys.readouterr().err.strip().splitlines()
        assert lines[-1].startswith(f"error: --out {out}: cannot make it a folder"), lines
        assert not any(line.startswith("error") for line in lines[:-1])
    assert not_a_folder.read_text() == "keep me\n"


def test_a_config_key_named_like_a_run_field_keeps_a_prefix(tmp_path):
    for epochs in (3, 30):
        fabricate_run(tmp_path / f"e{epochs}", "se", 0, 50.0, settings={"epochs": epochs})
    runs = scan([tmp_path]).runs
    assert sorted(runs["config.epochs"]) == ["3", "30"] and runs["epochs"].tolist() == [1, 1]  # the run's own field
    assert summarize(runs)["config.epochs"].tolist() == ["3", "30"]


def test_a_setting_that_differs_only_between_variant_and_baseline_is_shown_and_blocks_the_comparison(tmp_path):
    for seed in (0, 1):
        fabricate_run(tmp_path / f"se{seed}", "se", seed, 60.0 + seed, settings={"optim.lr": 0.05})
        fabricate_run(tmp_path / f"none{seed}", "none", seed, 50.0 + seed, settings={"optim.lr": 0.1})
    table = summarize(scan([tmp_path]).runs).set_index("attention")
    assert table.loc["se", "optim.lr"] == "0.05" and table.loc["none", "optim.lr"] == "0.1"
    assert math.isnan(table.loc["se", "delta_top1"])  # no baseline trained as se was: no Δ claimed


def test_the_summary_survives_any_broken_results_file(tmp_path, capsys):
    runs = tmp_path / "runs"
    broken = {
        "list": "[]", "schema_only": '{"schema": 1}', "half": '{"schema": 1, "status": "compl',
        "empty": "", "whitespace": "  \n", "wrong_types": '{"schema": 1, "status": "completed", "top1": "high", '
        '"seed": [1], "data": {"x": 1}, "params": true}', "nan": '{"schema": 1, "status": "completed", "top1": NaN}',
    }
    for name, text in broken.items():
        (runs / name).mkdir(parents=True)
        (runs / name / "results.json").write_text(text)
    (runs / "a_directory" / "results.json").mkdir(parents=True)
    (runs / "no_results" / ".hydra").mkdir(parents=True)
    assert summarize_main([str(runs), "--out", str(tmp_path / "out")]) == 0
    printed = capsys.readouterr()
    for name in ("list", "half", "empty", "whitespace", "a_directory", "no_results"):
        assert str(runs / name / "results.json") in printed.err
    assert (tmp_path / "out" / "runs.csv").is_file() and (tmp_path / "out" / "summary.md").is_file()


def test_the_summary_survives_a_binary_results_file(tmp_path):
    (tmp_path / "binary").mkdir()
    (tmp_path / "binary" / "results.json").write_bytes(b"\xff\xfe\x00 garbage")
    assert summarize_main([str(tmp_path), "--out", str(tmp_path / "out")]) == 0


def test_a_pipe_in_a_value_stays_inside_its_markdown_cell(tmp_path):
    for seed in range(2):
        fabricate_run(tmp_path / f"none{seed}", "none", seed, 90.0, settings={"data.note": "a"})
        fabricate_run(tmp_path / f"se{seed}", "se", seed, 91.0, settings={"data.note": "a|b"})
    shown = to_markdown(summarize(scan([tmp_path]).runs))
    header, _, *rows = shown.splitlines()
    cells = [len(re.findall(r"(?<!\\)\|", line)) for line in [header, *rows]]
    assert len(set(cells)) == 1, shown  # every row has the header's number of cell borders
    assert r"a\|b" in shown


def test_runs_csv_says_which_code_trained_each_run(tmp_path, capsys):
    fabricate_run(tmp_path / "a", "none", 0, 90.0, code_versions=["0123456789ab", "ba9876543210+dirty"])
    fabricate_run(tmp_path / "bad", "none", 1, 90.0, code_versions="0123456789ab")
    runs = scan([tmp_path]).runs
    assert run_table(runs)["code_versions"].tolist() == ["0123456789ab → ba9876543210+dirty"]
    assert "code_versions = " in capsys.readouterr().err  # not a list: reported and skipped


def test_a_run_without_a_speed_does_not_veto_its_rows_speed(tmp_path):
    gpu = [{"device": "NVIDIA H200", "processes": 1}]
    fabricate_run(tmp_path / "se0", "se", 0, 91.0, train_images_per_s=1500.0, hardware=gpu)
    fabricate_run(tmp_path / "se1", "se", 1, 91.0, train_images_per_s=1520.0, hardware=gpu)
    fabricate_run(tmp_path / "se2", "se", 2, 91.0)  # one epoch too few to time, say: no speed, no hardware
    table = summarize(scan([tmp_path]).runs).set_index("attention")
    assert table.loc["se", "train_images_per_s"] == pytest.approx(1510.0)
    assert table.loc["se", "speed_hardware"] == "NVIDIA H200" and table.loc["se", "n"] == 3
    # the speed of two of the three runs says so (it read as the three seeds' mean)
    assert table.loc["se", "speed_runs"] == 2
    assert re.search(r"\| +3 \|.*\| 1,510 \(2 of 3\) \|", to_markdown(summarize(scan([tmp_path]).runs)))


def _placement_sweep(folder: Path, baselines: dict[str, float]) -> pd.DataFrame:
    """SE Table 14 on resnet20: se at three placements, none at the placements given (top-1 by placement)."""
    for seed in (0, 1):
        for placement, top1 in baselines.items():
            fabricate_run(folder / f"none_{placement}{seed}", "none", seed, top1 + seed, settings={"backbone.placement": placement})
        for offset, placement in enumerate(["standard", "pre", "post"]):
            fabricate_run(folder / f"se_{placement}{seed}", "se", seed, 61.0 + offset + seed, params=1100,
                          settings={"backbone.placement": placement})
    return summarize(scan([folder]).runs).set_index("attention")


def test_a_none_baseline_at_one_placement_serves_variants_at_every_placement(tmp_path):
    """A network without attention is the same wherever attention would go (test_placement checks it):
    one none run per seed gives SE-PRE and SE-POST their Δ, as the SE paper's Table 14 compares them."""
    table = _placement_sweep(tmp_path, {"standard": 60.0})
    deltas = table["delta_top1"].to_dict()
    assert deltas == {"none[placement=standard]": 0.0, "se[placement=standard]": 1.0,
                      "se[placement=pre]": 2.0, "se[placement=post]": 3.0}
    assert table["params_delta_pct"].to_dict() == pytest.approx({
        "none[placement=standard]": 0.0, "se[placement=standard]": 10.0, "se[placement=pre]": 10.0,
        "se[placement=post]": 10.0})


def test_a_none_baseline_at_the_variants_own_placement_is_preferred(tmp_path):
    table = _placement_sweep(tmp_path / "both", {"standard": 60.0, "pre": 58.0})
    assert table.loc["se[placement=pre]", "delta_top1"] == pytest.approx(4.0)  # against none[placement=pre]
    assert math.isnan(table.loc["se[placement=post]", "delta_top1"]), "two none rows would serve: neither is said"


def test_only_a_none_baseline_stands_in_across_placements(tmp_path):
    """Another baseline has attention of its own, which does depend on where it goes."""
    for seed in (0, 1):
        for placement in ("standard", "pre"):
            fabricate_run(tmp_path / f"se_{placement}{seed}", "se", seed, 61.0 + seed, settings={"backbone.placement": placement})
        fabricate_run(tmp_path / f"eca_pre{seed}", "eca", seed, 62.0 + seed, settings={"backbone.placement": "pre"})
        fabricate_run(tmp_path / f"eca_post{seed}", "eca", seed, 62.0 + seed, settings={"backbone.placement": "post"})
    table = summarize(scan([tmp_path]).runs, baseline="se").set_index("attention")
    assert table.loc["eca[placement=pre]", "delta_top1"] == pytest.approx(1.0)
    assert math.isnan(table.loc["eca[placement=post]", "delta_top1"])


def test_a_number_given_as_an_integer_is_the_same_setting_as_its_float_default(tmp_path):
    """``label_smoothing=0`` on the command line is Hydra's int 0; the yaml's default is 0.0."""
    for seed in (0, 1):
        fabricate_run(tmp_path / f"none{seed}", "none", seed, 60.0 + seed, settings={"label_smoothing": 0.0})
        fabricate_run(tmp_path / f"se{seed}", "se", seed, 62.0 + seed, settings={"label_smoothing": 0})
        fabricate_run(tmp_path / f"ls{seed}", "se", seed, 63.0 + seed, settings={"label_smoothing": 0.1})
    table = summarize(scan([tmp_path]).runs)
    assert table[["attention", "label_smoothing", "n"]].values.tolist() == [
        ["none", "0", 2], ["se", "0", 2], ["se", "0.1", 2]]
    assert table["delta_top1"].tolist()[:2] == [0.0, 2.0]


def test_a_row_whose_runs_are_two_networks_shows_no_size_and_is_named(tmp_path, capsys):
    """Runs that differ in parameters are not one experiment, whatever their configs say (code that changed
    a module without a config key): their row has no params or FLOPs, and the script says why."""
    fabricate_run(tmp_path / "se0", "se", 0, 60.0, params=1100)
    fabricate_run(tmp_path / "se1", "se", 1, 61.0, params=1200)
    fabricate_run(tmp_path / "none0", "none", 0, 59.0)
    fabricate_run(tmp_path / "none1", "none", 1, 58.0)
    runs = scan([tmp_path]).runs
    table = summarize(runs).set_index("attention")
    assert math.isnan(table.loc["se", "params"]) and math.isnan(table.loc["se", "params_delta_pct"])
    assert table.loc["se", "flops"] == 2_000_000 and table.loc["none", "params"] == 1000
    assert mixed_networks(runs) == ["embedded resnet20 se: its 2 runs differ in params 1,100, 1,200 (two networks in one row?)"]
    assert summarize_main([str(tmp_path)]) == 0
    assert "warning: embedded resnet20 se: its 2 runs differ in params 1,100, 1,200" in capsys.readouterr().err


def test_latex_sets_p_below_a_thousandth_and_arrows_as_math(tmp_path):
    """A bare < prints as ¡ in LaTeX's default font encoding, and pdflatex cannot set →."""
    for seed, noise in enumerate([0.0, 0.1, -0.1]):
        for attention, top1 in (("none", 50.0), ("se", 60.0)):
            fabricate_run(tmp_path / f"{attention}{seed}", attention, seed, top1 + noise, max_epochs_history=[[0, 2], [6, 3]])
        fabricate_run(tmp_path / f"eca{seed}", "eca", seed, 55.0 + noise)  # not extended: a column of its own
    table = summarize(scan([tmp_path]).runs)
    latex = to_latex(table)
    assert "<0.001" in to_markdown(table) and "$<$0.001" in latex and "2 $\\to$ 3 from step 6" in latex
    assert not {"<", ">", "→", "±", "Δ"} & set(latex.replace("$<$", "").replace("$>$", ""))


def test_a_top5_mean_is_over_every_run_of_the_row_or_not_shown(tmp_path):
    """A wandb run or an older record without top-5 would leave a mean of the others, labelled as the row's."""
    fabricate_run(tmp_path / "se0", "se", 0, 60.0)
    fabricate_run(tmp_path / "se1", "se", 1, 62.0)
    record = json.loads((tmp_path / "se1" / "results.json").read_text())
    del record["top5"]
    (tmp_path / "se1" / "results.json").write_text(json.dumps(record))
    fabricate_run(tmp_path / "none0", "none", 0, 58.0)
    fabricate_run(tmp_path / "none1", "none", 1, 59.0)
    table = summarize(scan([tmp_path]).runs).set_index("attention")
    assert table.loc["se", "n"] == 2 and math.isnan(table.loc["se", "top5_mean"])
    assert table.loc["none", "top5_mean"] == 63.5


def test_runs_resumed_under_other_code_are_named(tmp_path, capsys):
    """A run resumed under another commit mixes both in one result; only runs.csv's code_versions
    showed it."""
    fabricate_run(tmp_path / "se0", "se", 0, 80.0, code_versions=["abc1234", "def5678+dirty.0a1b2c3d"])
    fabricate_run(tmp_path / "se1", "se", 1, 81.0, code_versions=["def5678"])
    fabricate_run(tmp_path / "se2", "se", 2, 81.0, code_versions=["unknown", "def5678"])
    assert summarize_main([str(tmp_path), "--out", str(tmp_path / "out")]) == 0
    err = capsys.readouterr().err
    assert "seed 2: trained by unknown → def5678 (resumed from a checkpoint that did not record its code)" in err
    assert f"embedded resnet20 se seed 0: trained by abc1234 → def5678+dirty.0a1b2c3d (resumed under other code), in {tmp_path / 'se0'}" in err
    assert "seed 1" not in err



def test_runs_of_another_ddp_world_size_are_another_row(tmp_path):
    """``data.batch_size`` is per process and ``trainer.devices=-1`` reads the same on 1 GPU and on 8:
    the recorded world size keys the row (absent, as before it was recorded: one process)."""
    fabricate_run(tmp_path / "one", "se", 0, 80.0)
    fabricate_run(tmp_path / "one_recorded", "se", 1, 81.0, world_size=1)
    fabricate_run(tmp_path / "eight", "se", 0, 78.0, world_size=8)
    table = summarize(scan([tmp_path]).runs)
    assert sorted(zip(table["world_size"], table["n"])) == [("8", 1), ("—", 2)]
