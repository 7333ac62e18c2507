"""RESULTS.md is generated from the committed results/ and cannot drift from them
(``python analysis/results_md.py``)."""
import json

import pytest

from analysis import results_md
from tests.helpers import ROOT

TABLE = """title: Classic schedule, CIFAR-10, ResNet-20
command: python run.py -m +experiment=cifar_resnet attention=none,se seed=0,1
device: 1 × NVIDIA H200
date: 2026-12-05
notes: A fixture, not a measurement.
"""


def test_the_committed_results_md_is_what_the_command_writes():
    assert (ROOT / "RESULTS.md").read_text() == results_md.render(ROOT / "results"), (
        "RESULTS.md is out of date: run python analysis/results_md.py"
    )


def _run(folder, attention, seed, top1, status="completed", wall=60.0):
    folder.mkdir(parents=True)
    record = {"schema": 1, "status": status, "data": "cifar10", "backbone": "resnet20", "attention": attention,
              "attention_variant": attention, "seed": seed, "params": 272474 if attention == "none" else 275546,
              "flops": 82_000_000, "wall_time_s": wall}
    if status == "completed":
        record.update(top1=top1, top5=99.0, epochs=164)
    else:
        record.update(error="RuntimeError: CUDA out of memory")
    (folder / "results.json").write_text(json.dumps(record))


def _tree(tmp_path):
    results = tmp_path / "results"
    table = results / "1-classic"
    for attention, tops in (("none", [90.0, 92.0]), ("se", [91.0, 95.0])):
        for seed, top1 in enumerate(tops):
            _run(table / f"{attention}_s{seed}", attention, seed, top1)
    _run(table / "se_s2", "se", 2, None, status="failed", wall=30.0)
    (table / "table.yaml").write_text(TABLE)
    short = results / "2-short"
    _run(short / "multirun" / "0", "none", 0, 80.0)
    (short / "table.yaml").write_text(TABLE.replace("Classic", "Short"))
    return results


def test_a_table_says_what_ran_and_averages_the_completed_runs(tmp_path):
    text = results_md.render(_tree(tmp_path))
    lines = text.splitlines()
    assert lines[0] == "# Results"
    assert "each run's last epoch (not its best)" in text and "10,000-image test set" in text and "Welch" in text
    assert [line for line in lines if line.startswith("## ")] == [
        "## Classic schedule, CIFAR-10, ResNet-20", "## Short schedule, CIFAR-10, ResNet-20"]
    assert "From `results/1-classic/`. Command: `python run.py -m +experiment=cifar_resnet attention=none,se seed=0,1`" in lines
    assert "Device: 1 × NVIDIA H200; date: 2026-12-05; 5 runs (4 completed, 1 failed), 4.5 run-minutes (the sum of the runs' wall times)." in lines
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in lines if line.startswith("| cifar10")]
    none_row, se_row = rows[0], rows[1]
    assert none_row[:6] == ["cifar10", "resnet20", "none", "2", "91.00 ± 1.41", "99.00"] and none_row[6] == "baseline"
    assert se_row[:6] == ["cifar10", "resnet20", "se", "2", "93.00 ± 2.83", "99.00"] and se_row[6].startswith("+2.00 [")
    failed = next(line for line in lines if "RuntimeError: CUDA out of memory" in line)
    assert "results/1-classic/se_s2" in failed and str(tmp_path) not in text
    short = text.split("## Short")[1]
    assert "From `results/2-short/`." in short and "1 run (1 completed), 1.0 run-minutes" in short and "80.00" in short
    assert "A fixture, not a measurement." in lines


def test_a_table_whose_runs_were_timed_under_different_loads_can_hide_its_speed(tmp_path):
    results = _tree(tmp_path)
    for folder in results.iterdir():
        for record_path in folder.rglob("results.json"):
            record = json.loads(record_path.read_text())
            record_path.write_text(json.dumps({**record, "train_images_per_s": 300.0 + record["seed"],
                                               "hardware": [{"device": "Test CPU", "threads": 1, "processes": 1}]}))
    assert "train img/s" in results_md.render(results).split("## Short")[0]
    meta = results / "1-classic" / "table.yaml"
    meta.write_text(meta.read_text() + "speed: false\n")
    classic, short = results_md.render(results).split("## Short")
    assert "img/s" not in classic and "img/s" in short


def test_check_says_whether_the_file_is_current(tmp_path, capsys):
    results, out = _tree(tmp_path), tmp_path / "RESULTS.md"
    assert results_md.main(["--results", str(results), "--out", str(out), "--check"]) == 1
    assert results_md.main(["--results", str(results), "--out", str(out)]) == 0
    assert results_md.main(["--results", str(results), "--out", str(out), "--check"]) == 0
    _run(results / "1-classic" / "none_s2", "none", 2, 91.0)
    assert results_md.main(["--results", str(results), "--out", str(out), "--check"]) == 1


def test_no_results_yet_says_so(tmp_path):
    assert results_md.render(tmp_path / "results").endswith(results_md.NO_RESULTS)


def test_a_table_without_its_description_fails_naming_the_file(tmp_path):
    results = _tree(tmp_path)
    (results / "2-short" / "table.yaml").unlink()
    with pytest.raises(FileNotFoundError, match=r"2-short/table.yaml is missing"):
        results_md.render(results)


def test_a_broken_results_json_fails_rather_than_vanish_from_the_table(tmp_path):
    results = _tree(tmp_path)
    (results / "1-classic" / "none_s0" / "results.json").write_text("{")
    with pytest.raises(ValueError, match=r"unusable results under .*1-classic.*corrupt JSON"):
        results_md.render(results)


def test_a_row_of_two_networks_fails_rather_than_average_them(tmp_path):
    results = _tree(tmp_path)
    path = results / "1-classic" / "se_s1" / "results.json"
    path.write_text(path.read_text().replace("275546", "275547"))
    with pytest.raises(ValueError, match=r"1-classic: cifar10 resnet20 se: its 2 runs differ in params 275,546, 275,547"):
        results_md.render(results)


def test_a_table_holds_its_rows_against_the_papers_figures(tmp_path):
    results = _tree(tmp_path)
    meta = results / "1-classic" / "table.yaml"
    meta.write_text(meta.read_text() + "paper:\n  source: He et al. 2016, Table 6\n"
                    "  top1: {none: 91.25, se: 94.0, cbam: 93.0}\n")
    classic, short = results_md.render(results).split("## Short")
    assert "Against the paper (He et al. 2016, Table 6):" in classic and "Against the paper" not in short
    block = classic.split("Against the paper")[1].split("\n\n")[1]
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in block.splitlines()[2:]]
    assert rows == [["cifar10", "resnet20", "none", "", "2", "91.00", "91.25", "−0.25"],
                    ["cifar10", "resnet20", "se", "", "2", "93.00", "94.00", "−1.00"],
                    ["", "", "cbam", "", "0", "no completed run", "93.00", ""]]


@pytest.mark.parametrize("paper", ["  source: He et al. 2016\n", "  source: He et al. 2016\n  top1: {}\n",
                                   "  source: He et al. 2016\n  top1: {none: '91.25'}\n",
                                   "  source: He et al. 2016\n  top1: {none: true}\n",
                                   "  source: He et al. 2016\n  top1: {none: 912.5}\n",
                                   "  source: He et al. 2016\n  top1: {no: 91.25}\n",  # YAML reads no as False
                                   "  top1: {none: 91.25}\n", ""])
def test_a_paper_entry_without_usable_figures_fails_naming_the_file(tmp_path, paper):
    """Each of these printed a wrong line, none, or failed without naming the file."""
    results = _tree(tmp_path)
    meta = results / "1-classic" / "table.yaml"
    meta.write_text(meta.read_text() + "paper:\n" + paper)
    with pytest.raises(ValueError, match=r"1-classic/table.yaml: paper"):
        results_md.render(results)


def test_every_run_is_listed_in_job_order_with_its_machines_code_and_minutes(tmp_path):
    """Before, a run's machine, code version and minutes were only in the notes, retold by hand."""
    results = tmp_path / "results"
    table = results / "1-short"
    for job in (10, 2, 1):
        _run(table / str(job), "none", job, 90.0 + job, wall=120.0)
    _run(table / "3", "se", 3, None, status="failed", wall=6.0)
    resumed = table / "10" / "results.json"
    resumed.write_text(json.dumps({**json.loads(resumed.read_text()), "best_top1": 100.5 - 7, "best_epoch": 151,
                                   "code_versions": ["0123456789ab", "ba9876543210"],
                                   "hardware": [{"device": "CPU A"}, {"device": "CPU A"}, {"device": "CPU B"}]}))
    first = table / "1" / "results.json"  # a seed not recorded, a device whose name holds a |
    first.write_text(json.dumps({**json.loads(first.read_text()), "seed": None, "hardware": [{"device": "CPU | spare"}]}))
    (table / "table.yaml").write_text(TABLE)
    text = results_md.render(results)
    folded = text.split("<details><summary>The 4 runs: machine, code version and minutes of each</summary>")[1]
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in folded.split("</details>")[0].splitlines()
            if line.startswith("| `")]
    assert [row[0] for row in rows] == [f"`results/1-short/{job}`" for job in (1, 2, 3, 10)]  # 10 after 2
    assert rows[3] == ["`results/1-short/10`", "none", "10", "completed", "164", "100.00", "93.50 (151)", "2.0",
                       "CPU A → CPU B", "0123456789ab → ba9876543210"]
    assert rows[0][2] == "" and "| CPU \\| spare | not recorded |" in folded  # not "None"; the | kept in its cell
    assert rows[1][-2:] == ["not recorded", "not recorded"]
    assert rows[2][:7] == ["`results/1-short/3`", "se", "3", "failed", "", "", ""] and rows[2][7] == "0.1"


def test_the_best_epoch_column_says_it_was_picked_on_the_test_set():
    """best_top1 is the maximum over epochs of the test-set top-1: a number selected on the test set
    (README says so; RESULTS.md's runs list did not)."""
    assert "best top-1 % (epoch from 0; picked on the test set: optimistic)" in (ROOT / "RESULTS.md").read_text()
