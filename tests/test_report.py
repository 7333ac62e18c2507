"""The HTML report, and one end-to-end pass: a tiny real sweep → summarize, plots, report."""
import base64
import json
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from analysis.report import config_differences, render
from analysis.summarize import flatten_config, scan
from tests.helpers import ROOT, fabricate_run, run_entry_point



def _script(name: str, *arguments: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "analysis" / f"{name}.py"), *arguments],
                          capture_output=True, text=True, check=True, timeout=300)


def _assert_offline(page: str) -> None:
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:|//|file:)""", page)  # nothing fetched
    assert "<script" not in page and "<link" not in page
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    assert images and all(base64.b64decode(image)[:4] == b"\x89PNG" for image in images)


def test_flatten_nested_config():
    assert flatten_config({"a": {"b": 1, "c": {"d": [1, 2]}}, "e": {}, "f": "x"}) == {
        "a.b": 1, "a.c.d": [1, 2], "f": "x"
    }
    assert flatten_config(None) == {}


def test_config_differences_keep_only_keys_that_vary(tmp_path):
    fabricate_run(tmp_path / "a", "se", 0, 90.0, options={"reduction": 16})
    fabricate_run(tmp_path / "b", "se", 1, 91.0, options={"reduction": 8}, variant="se[reduction=8]")
    fabricate_run(tmp_path / "c", "none", 0, 89.0)
    found = scan([tmp_path])
    differences = config_differences(found.runs, [record["config"] for record in found.records])
    # paths.output_dir differs in every run but only because it is the run's folder: left out
    assert [c for c in differences.columns if "." in c or c == "seed"] == [
        "attention.name", "attention.reduction", "seed"
    ]
    by_variant = differences.set_index("variant")
    assert by_variant.loc["se[reduction=8]", "attention.reduction"] == 8
    assert by_variant.loc["none", "attention.reduction"] == "—"


def test_report_on_fabricated_runs_lists_failures_apart(tmp_path):
    for seed, top1 in enumerate([90.0, 92.0]):
        fabricate_run(tmp_path / f"se{seed}", "se", seed, top1, curve=[50.0, top1])
        fabricate_run(tmp_path / f"none{seed}", "none", seed, top1 - 1, curve=[49.0, top1 - 1])
    fabricate_run(tmp_path / "crashed", "se", 3, 5.0, status="failed", error="RuntimeError: out of memory")
    (tmp_path / "corrupt").mkdir()
    (tmp_path / "corrupt" / "results.json").write_text("{")
    page = render([tmp_path])
    _assert_offline(page)
    assert "Not averaged (not completed)" in page and "RuntimeError: out of memory" in page
    assert "Skipped (no usable results.json, or a seed already counted)" in page and "corrupt" in page
    assert "+1.00 [" in page  # Δ top-1 of se vs none, with its interval
    # the se row of the summary: variant, n, top-1 mean ± std over the two seeds (90, 92)
    assert re.search(r"<td>se</td>\s*<td>2</td>\s*<td>91.00 ± 1.41</td>", page)


@pytest.fixture(scope="module")
def real_sweep(tmp_path_factory):
    root = tmp_path_factory.mktemp("e2e")
    sweep = root / "sweep"
    completed = run_entry_point("-m", "trainer=debug", "attention=none,se", "seed=0,1", "logger=csv",
                                f"hydra.sweep.dir={sweep}", cwd=root, env={"HYDRA_FULL_ERROR": "1"})
    assert completed.returncode == 0, completed.stderr[-3000:]
    return sweep


def test_end_to_end_sweep_summarize_plots_report(real_sweep, tmp_path):
    out = tmp_path / "analysis"
    summary = _script("summarize", str(real_sweep), "--out", str(out))
    rows = [line for line in summary.stdout.splitlines() if line.startswith("| embedded")]
    assert [row.split("|")[3].strip() for row in rows] == ["none", "se"]
    assert [row.split("|")[4].strip() for row in rows] == ["2", "2"]
    table = pd.read_csv(out / "summary.csv").set_index("attention")
    records = [json.loads(path.read_text()) for path in sorted(real_sweep.glob("*/results.json"))]
    se_top1 = [record["top1"] for record in records if record["attention"] == "se"]
    assert table.loc["se", "top1_mean"] == pytest.approx(sum(se_top1) / 2)
    assert table.loc["se", "params"] - table.loc["none", "params"] == records[-1]["attention_params"]
    assert table.loc["se", "params_delta_pct"] > 0 and table.loc["none", "delta_top1"] == 0

    plots = _script("plots", str(real_sweep), "--out", str(out))
    # every run measures its training speed, so the accuracy-vs-speed plot is drawn too
    assert all(record["train_images_per_s"] > 0 for record in records)
    for stem in ("accuracy_vs_gflops", "accuracy_vs_params", "accuracy_vs_images_per_s", "training_curves"):
        for ext in ("png", "svg"):
            assert (out / f"{stem}.{ext}").stat().st_size > 1000
    assert "skipping" not in plots.stderr

    _script("report", str(real_sweep), "--out", str(out))
    page = (out / "report.html").read_text()
    _assert_offline(page)
    assert "Config differences" in page and "attention.reduction" in page and "seed" in page
    assert "Not averaged" not in page and "Skipped" not in page


def test_report_rows_are_experiments(tmp_path):
    for placement in ("standard", "pre"):
        for seed in range(2):
            fabricate_run(tmp_path / f"{placement}{seed}", "se", seed, 50.0 + seed, curve=[40.0, 50.0 + seed],
                          settings={"backbone.placement": placement, "label_smoothing": 0.1})
    fabricate_run(tmp_path / "smooth0", "se", 0, 45.0, settings={"backbone.placement": "pre", "label_smoothing": 0.0})
    page = render([tmp_path])
    summary = page.split("<h2>Summary</h2>")[1].split("</table>")[0]
    assert "<th>label_smoothing</th>" in summary
    rows = re.findall(r"<td>(se\[placement=\w+\])</td>\s*<td>([\d.]+)</td>\s*<td>(\d)</td>", summary)
    assert sorted(rows) == [("se[placement=pre]", "0", "1"), ("se[placement=pre]", "0.1", "2"),
                            ("se[placement=standard]", "0.1", "2")]


def test_moved_runs_list_no_output_paths_and_wandb_links_are_links(tmp_path):
    """Runs copied elsewhere (results/ folders) keep the folders they trained in in their config: those
    are output paths too. The summary's wandb column is links, not markdown text."""
    trained = tmp_path / "trained"
    for seed in range(2):
        fabricate_run(trained / f"se{seed}", "se", seed, 90.0 + seed, wandb_url=f"https://wandb.ai/me/zoo/runs/se{seed}",
                      settings={"logger.csv.save_dir": str(trained / f"se{seed}" / "csv")})
    moved = tmp_path / "results"
    trained.rename(moved)
    found = scan([moved])
    differences = config_differences(found.runs, [record["config"] for record in found.records])
    assert [column for column in differences.columns if "." in column] == []
    page = render([moved])
    assert '<a href="https://wandb.ai/me/zoo/runs/se0">s0</a>' in page and "[s0](" not in page


def test_a_run_folder_from_anywhere_puts_no_markup_or_script_links_into_the_report(tmp_path):
    """Run folders may come from anyone: a config key becomes a column header of the summary, which was
    written unescaped beside the wandb links, and a wandb_url became a link whatever its scheme."""
    key = "x<img src=x onerror=alert(1)>"
    fabricate_run(tmp_path / "none0", "none", 0, 90.0, settings={key: 1}, wandb_url="javascript:alert(1)")
    fabricate_run(tmp_path / "none1", "none", 1, 91.0, wandb_url="https://wandb.ai/me/zoo/runs/n1")
    page = render([tmp_path])
    assert "<img src=x" not in page and "x&lt;img src=x onerror=alert(1)&gt;" in page
    assert 'href="javascript' not in page.lower() and "s0 (javascript:alert(1)" in page
    assert '<a href="https://wandb.ai/me/zoo/runs/n1">s1</a>' in page


@pytest.mark.parametrize("recorded", [".", 5], ids=["relative", "not_a_string"])
def test_one_foreign_runs_output_dir_hides_no_key_and_crashes_nothing(tmp_path, recorded):
    fabricate_run(tmp_path / "a", "none", 0, 90.0, settings={"paths.output_dir": recorded, "data.split": "train"})
    fabricate_run(tmp_path / "b", "none", 1, 91.0, settings={"data.split": "trainval"})
    found = scan([tmp_path])
    differences = config_differences(found.runs, [record["config"] for record in found.records])
    assert "data.split" in differences.columns


def test_config_differences_say_when_runs_were_trained_by_other_code(tmp_path):
    fabricate_run(tmp_path / "a", "se", 0, 90.0, code_versions=["0123456789ab"])
    fabricate_run(tmp_path / "b", "se", 1, 91.0, code_versions=["ba9876543210+dirty"])
    found = scan([tmp_path])
    differences = config_differences(found.runs, [record["config"] for record in found.records])
    assert sorted(differences["code"]) == ["0123456789ab", "ba9876543210+dirty"]
    fabricate_run(tmp_path / "c", "se", 2, 91.0, code_versions=["ba9876543210+dirty"])
    (tmp_path / "a").rename(tmp_path.parent / "elsewhere")
    found = scan([tmp_path])
    assert "code" not in config_differences(found.runs, [record["config"] for record in found.records])


def test_a_key_is_hidden_as_the_runs_own_folder_only_when_it_is_that_folder_or_beneath_it(tmp_path, monkeypatch):
    """Run folders read as ``0``, ``1`` (report.py . inside a sweep) are not substrings to hide keys by:
    resnet20 against resnet56 is a difference to show, the runs' own output folders are not."""
    fabricate_run(tmp_path / "0", "se", 0, 90.0, backbone="resnet20", settings={"logger.csv.save_dir": str(tmp_path / "0")})
    fabricate_run(tmp_path / "1", "se", 1, 91.0, backbone="resnet56", settings={"logger.csv.save_dir": str(tmp_path / "1")})
    monkeypatch.chdir(tmp_path)
    found = scan([Path(".")])
    assert sorted(found.runs["path"]) == ["0", "1"]
    differences = config_differences(found.runs, [record["config"] for record in found.records])
    assert "backbone.name" in differences.columns
    assert "paths.output_dir" not in differences.columns and "logger.csv.save_dir" not in differences.columns
