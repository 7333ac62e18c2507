"""``python -m attn_zoo.bench``: the real entry point on the CPU with the tiny preset, and the timm mapping."""
import csv
import math
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import attn_zoo
from attn_zoo.bench import candidates, cli, tables, warming
from attn_zoo.bench import settings as bench_settings
from attn_zoo.bench import measure as measuring
from attn_zoo.cost import count_flops, count_params
from tests.helpers import markdown_rows

ROOT = Path(__file__).resolve().parents[1]


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "tiny.csv"
    done = subprocess.run(
        [sys.executable, "-m", "attn_zoo.bench", "bench=tiny", f"out={out}"],
        capture_output=True, text=True, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout, read_csv(out)


def test_csv_has_one_row_per_model_and_mode_with_every_column(tiny_run):
    _, rows = tiny_run
    assert list(rows[0]) == list(tables.COLUMNS)
    assert [(r["implementation"], r["model"], r["mode"]) for r in rows] == [
        ("attn_zoo", "resnet20+none", "eager"), ("attn_zoo", "resnet20+se", "eager"),
    ]
    for row in rows:
        assert (row["batch_size"], row["image_size"], row["dtype"], row["channels_last"]) == ("4", "32", "float32", "False")
        assert row["device"].startswith("cpu") and row["torch"] == torch.__version__
        assert row["timing"] == "median of 2 windows x 1 steps after 1 warm-up"


def test_params_and_flops_are_those_of_the_same_model(tiny_run):
    _, rows = tiny_run
    for row in rows:
        model = attn_zoo.create_model(row["backbone"], row["attention"])
        flops = count_flops(model, (3, 32, 32))
        assert int(row["params"]) == count_params(model)
        assert int(row["flops"]) == flops == 2 * int(row["macs"])
    assert int(rows[1]["params"]) > int(rows[0]["params"])


def test_throughputs_are_positive_and_relative_to_none(tiny_run):
    _, rows = tiny_run
    for row in rows:
        for column in ("train_images_per_s", "infer_images_per_s", "train_warmup_s", "infer_warmup_s"):
            assert math.isfinite(float(row[column])) and float(row[column]) > 0
        ratio = float(row["train_images_per_s"]) / float(rows[0]["train_images_per_s"])
        assert float(row["train_vs_none"]) == pytest.approx(ratio)
        assert row["train_peak_mib"] == row["infer_peak_mib"] == ""  # no GPU memory on a CPU
    assert float(rows[0]["train_vs_none"]) == float(rows[0]["infer_vs_none"]) == 1.0


def test_markdown_table_is_printed(tiny_run):
    stdout, rows = tiny_run
    table = [line for line in stdout.splitlines() if line.startswith("|")]
    assert len(table) == 2 + len(rows)
    assert markdown_rows(stdout)[1][:4] == ["attn_zoo", "resnet20+none", "eager", "0.27"]


def test_bad_names_and_modes_are_refused_with_the_valid_choices(capsys):
    assert cli.main(["attentions=[none,nope]"]) == 2
    assert "valid:" in capsys.readouterr().err
    assert cli.main(["modes=[jit]"]) == 2
    assert "eager, compiled" in capsys.readouterr().err


def test_presets_set_what_they_promise():
    resnet50 = bench_settings.Settings.from_config(bench_settings.compose(["bench=resnet50"]))
    assert (resnet50.backbones, resnet50.attentions) == (("resnet50",), ("none", "se", "eca", "cbam"))
    assert (resnet50.batch_size, resnet50.image_size, resnet50.channels_last, resnet50.modes) == (
        256, 224, True, ("eager", "compiled"))
    cifar = bench_settings.Settings.from_config(bench_settings.compose(["bench=cifar", "iters=3"]))
    assert (cifar.backbones, cifar.batch_size, cifar.image_size, cifar.iters) == (("resnet20",), 512, 32, 3)
    assert cifar.torch_dtype(torch.device("cuda")) == torch.bfloat16
    assert cifar.torch_dtype(torch.device("cpu")) == torch.float32


def test_timm_seresnet50_has_our_parameter_count():
    pytest.importorskip("timm")
    theirs = candidates.timm_model("resnet50", "se")
    assert count_params(theirs) == 28_088_024 == count_params(attn_zoo.create_model("resnet50", "se"))


def test_timm_pairs_and_skips(capsys):
    pytest.importorskip("timm")
    settings = bench_settings.Settings.from_config(bench_settings.compose(["backbones=[resnet20,resnet50]", "attentions=[none,srm]", "timm=true"]))
    found = [(c.implementation, c.backbone, c.attention) for c in candidates.candidates(settings)]
    assert found == [
        ("attn_zoo", "resnet20", "none"), ("attn_zoo", "resnet20", "srm"),
        ("attn_zoo", "resnet50", "none"), ("timm", "resnet50", "none"), ("attn_zoo", "resnet50", "srm"),
    ]
    err = capsys.readouterr().err
    assert "no timm equivalent for (resnet20, none)" in err and "no timm equivalent for (resnet50, srm)" in err
    with pytest.raises(candidates.NoTimmEquivalent):
        candidates.timm_model("resnet20", "se")


def test_timm_rows_are_timed_beside_ours_and_relative_to_timm_none(tmp_path):
    pytest.importorskip("timm")
    out = tmp_path / "timm.csv"
    overrides = ["backbones=[resnet18]", "attentions=[none,se]", "batch_size=2", "timm=true", f"out={out}"]
    assert cli.main(overrides) == 0
    rows = {(row["implementation"], row["attention"]): row for row in read_csv(out)}
    assert sorted(rows) == [("attn_zoo", "none"), ("attn_zoo", "se"), ("timm", "none"), ("timm", "se")]
    assert rows["timm", "se"]["params"] == rows["attn_zoo", "se"]["params"]
    assert "attn_layer='se'" in rows["timm", "se"]["note"]
    ratio = float(rows["timm", "se"]["train_images_per_s"]) / float(rows["timm", "none"]["train_images_per_s"])
    assert float(rows["timm", "se"]["train_vs_none"]) == pytest.approx(ratio)


@pytest.mark.slow
def test_compiled_mode_runs_on_cpu(tmp_path, capsys):
    out = tmp_path / "compiled.csv"
    assert cli.main(["bench=tiny", "attentions=[se]", "modes=[eager,compiled]", f"out={out}"]) == 0
    rows = read_csv(out)
    assert [row["mode"] for row in rows] == ["eager", "compiled"]
    assert all(float(row["train_images_per_s"]) > 0 and float(row["infer_images_per_s"]) > 0 for row in rows)
    assert rows[0]["params"] == rows[1]["params"]


def test_fused_tail_rows_follow_the_attentions_that_have_one(tmp_path, capsys):
    out = tmp_path / "fused.csv"
    assert cli.main(["bench=tiny", "attentions=[none,eca,cbam]", "fused_tail=true", f"out={out}"]) == 0
    rows = {row["model"]: row for row in read_csv(out)}
    assert list(rows) == ["resnet20+none", "resnet20+eca", "resnet20+eca+fused_tail", "resnet20+cbam"]
    fused, plain = rows["resnet20+eca+fused_tail"], rows["resnet20+eca"]
    assert fused["params"] == plain["params"] and fused["flops"] == plain["flops"]
    assert fused["note"] == "backbone.fused_tail=true"
    ratio = float(fused["train_images_per_s"]) / float(rows["resnet20+none"]["train_images_per_s"])
    assert float(fused["train_vs_none"]) == pytest.approx(ratio)
    assert "'cbam' has no fused tail" in capsys.readouterr().err


def test_measure_train_only_leaves_the_inference_columns_empty(tmp_path, capsys):
    out = tmp_path / "train_only.csv"
    assert cli.main(["bench=tiny", "measure=[train]", f"out={out}"]) == 0
    rows = read_csv(out)
    assert [row["model"] for row in rows] == ["resnet20+none", "resnet20+se"]
    assert all(float(row["train_images_per_s"]) > 0 for row in rows)
    assert all(row[column] == "" for row in rows for column in ("infer_images_per_s", "infer_vs_none", "infer_warmup_s"))
    assert float(rows[1]["train_vs_none"]) > 0
    assert ["resnet20+se", "eager"] in [cells[1:3] for cells in markdown_rows(capsys.readouterr().out)]


def test_bad_measure_is_refused(capsys):
    assert cli.main(["bench=tiny", "measure=[speed]"]) == 2
    assert "measure must be a non-empty list among train, infer" in capsys.readouterr().err


def test_a_gpu_other_than_the_current_one_is_refused(capsys):
    """The Timer waits for the current device only: a window on cuda:1 would stop its clock early."""
    assert cli.main(["bench=tiny", "device=cuda:1"]) == 2
    assert "device=cuda:1: time one GPU as the current device, CUDA_VISIBLE_DEVICES=1 with device=cuda" in \
        capsys.readouterr().err


def test_each_finished_row_is_written_before_the_next_starts(tmp_path, monkeypatch):
    out = tmp_path / "partial.csv"
    real_measure, rows_on_disk = measuring.measure, []

    def measure_and_look(candidate, mode, settings, device):
        rows_on_disk.append(len(read_csv(out)) if out.exists() else 0)
        return real_measure(candidate, mode, settings, device)

    monkeypatch.setattr(measuring, "measure", measure_and_look)
    assert cli.main(["bench=tiny", f"out={out}"]) == 0
    assert rows_on_disk == [0, 1]


def test_profile_writes_one_operator_table_per_model_and_mode(tmp_path):
    out = tmp_path / "prof.csv"
    assert cli.main(["bench=tiny", "attentions=[se]", "measure=[train]", "profile=true", f"out={out}"]) == 0
    (table,) = tmp_path.glob("*.profile.txt")
    assert table.name == "prof.resnet20_se.eager.profile.txt"
    text = table.read_text()
    assert text.startswith("profiled training steps: 1 of batch 4, ") and "ms per step" in text
    assert "aten::convolution" in text or "aten::conv2d" in text  # the operator table


def test_fused_tail_triton_and_both_variants(tmp_path, capsys):
    out = tmp_path / "variants.csv"
    # 8x8 images and one window: the Triton interpreter runs each kernel in Python
    overrides = ["attentions=[se]", "fused_tail=[true,triton]", "measure=[train]", "image_size=8", "windows=1"]
    assert cli.main(["bench=tiny", *overrides, f"out={out}"]) == 0
    rows = read_csv(out)
    assert [row["model"] for row in rows] == ["resnet20+se", "resnet20+se+fused_tail", "resnet20+se+fused_tail_triton"]
    assert [row["note"] for row in rows[1:]] == ["backbone.fused_tail=true", "backbone.fused_tail=triton"]
    assert cli.main(["bench=tiny", "fused_tail=cuda"]) == 2
    assert "fused_tail must be false, true or triton; got 'cuda'" in capsys.readouterr().err


def test_a_failing_model_is_recorded_and_the_next_one_still_runs(tmp_path, monkeypatch, capsys):
    out = tmp_path / "failing.csv"
    real_measure = measuring.measure

    def measure_failing_se(candidate, mode, settings, device):
        if candidate.attention == "se":
            raise RuntimeError("triton kernel failed\nto compile")
        return real_measure(candidate, mode, settings, device)

    monkeypatch.setattr(measuring, "measure", measure_failing_se)
    assert cli.main(["bench=tiny", "attentions=[se,none]", "measure=[train]", f"out={out}"]) == 1
    se_row, none_row = read_csv(out)
    assert se_row["error"] == "RuntimeError: triton kernel failed to compile" and se_row["train_images_per_s"] == ""
    assert float(none_row["train_images_per_s"]) > 0 and none_row["error"] == ""
    assert "failed: attn_zoo resnet20+se eager: RuntimeError: triton kernel failed to compile" in capsys.readouterr().out


@pytest.mark.slow  # torch.compile on CPU in two subprocesses (time: BENCHMARKS.md, "The slow tests")
def test_compile_jobs_compile_each_pair_in_a_process_of_its_own_first(tmp_path, capsys):
    out = tmp_path / "warm.csv"
    overrides = ["bench=tiny", "modes=[compiled]", "measure=[infer]", "attentions=[none,se]", "compile_jobs=2", f"out={out}"]
    assert cli.main(overrides) == 0
    assert "warmed compile caches: 2 jobs, 2 at a time, 0 failed" in capsys.readouterr().err
    assert [row["model"] for row in read_csv(out)] == ["resnet20+none", "resnet20+se"]


def _scripted_warming(monkeypatch, marker: Path, scripts: dict[str, str]) -> None:
    """Warming jobs that run ``scripts[attention]`` (Python, ``marker`` given as ``m``) instead of the bench."""
    def command(overrides, backbone, attention, out):
        return [sys.executable, "-c", f"import os, sys, time; m = {str(marker)!r}\n" + scripts[attention]]
    monkeypatch.setattr(warming, "warming_command", command)


def test_a_warming_job_starts_as_soon_as_any_running_one_finishes(tmp_path, monkeypatch, capsys):
    # two at a time: "late" can only start once "quick" ends, and "first" ends only once "late" ran;
    # waiting for the oldest job ("first") before starting the next would start "late" only after
    # "first" gave up waiting (60 s) and failed
    _scripted_warming(monkeypatch, tmp_path / "late-ran", {
        "first": "end = time.time() + 60\nwhile not os.path.exists(m) and time.time() < end: time.sleep(0.05)\n"
                 "sys.exit(0 if os.path.exists(m) else 1)",
        "quick": "sys.exit(0)",
        "late": "open(m, 'w').close()",
    })
    settings = SimpleNamespace(compile_jobs=2, modes=("compiled",), backbones=("resnet20",),
                               attentions=("first", "quick", "late"))
    assert warming.warm_compile_caches(settings, []) == 0
    assert "3 jobs, 2 at a time, 0 failed" in capsys.readouterr().err


def test_a_failed_warming_job_is_counted_and_its_output_shown(tmp_path, monkeypatch, capsys):
    _scripted_warming(monkeypatch, tmp_path / "unused", {"none": "sys.exit(0)", "se": "print('inductor broke'); sys.exit(3)"})
    settings = SimpleNamespace(compile_jobs=2, modes=("compiled",), backbones=("resnet20",), attentions=("none", "se"))
    assert warming.warm_compile_caches(settings, []) == 1
    err = capsys.readouterr().err
    assert "warming job failed" in err and "inductor broke" in err and "2 jobs, 2 at a time, 1 failed" in err


def test_a_warming_job_sets_its_own_pair_and_keeps_the_other_overrides():
    command = warming.warming_command(
        ["bench=resnet50", "attentions=[none,se]", "timm=true", "+fused_tail=triton", "out=x.csv", "compile_jobs=4"],
        "resnet50", "se", Path("/tmp/w.csv"),
    )
    assert command[3:] == [
        "bench=resnet50", "timm=true", "+fused_tail=triton", "backbones=[resnet50]", "attentions=[se]",
        "modes=[compiled]", "warmup=1", "iters=1", "windows=1", "profile=false", "compile_jobs=0", "out=/tmp/w.csv",
    ]


def test_a_model_that_cannot_be_built_is_a_row_that_says_why_and_the_next_one_still_runs(tmp_path, monkeypatch, capsys):
    """Counting params and FLOPs builds the model outside the measurement's error handling: one model
    that could not be built stopped the whole bench with a traceback and no table."""
    out = tmp_path / "unbuilt.csv"
    real_cost = cli.model_cost

    def cost_failing_se(candidate, image_size):
        if candidate.attention == "se":
            raise TypeError("backbone 'x' has no option fused_tail")
        return real_cost(candidate, image_size)

    monkeypatch.setattr(cli, "model_cost", cost_failing_se)
    assert cli.main(["bench=tiny", "attentions=[se,none]", "measure=[train]", f"out={out}"]) == 1
    se_row, none_row = read_csv(out)
    assert se_row["error"] == "TypeError: backbone 'x' has no option fused_tail"
    assert (se_row["params"], se_row["train_images_per_s"]) == ("", "")
    assert float(none_row["train_images_per_s"]) > 0 and int(none_row["params"]) > 0
    printed = capsys.readouterr().out
    assert "failed: attn_zoo resnet20+se eager: TypeError" in printed and "resnet20+none" in printed


def test_a_backbone_without_a_fused_tail_gets_no_fused_tail_row(capsys):
    settings = bench_settings.Settings.from_config(bench_settings.compose(
        ["bench=tiny", "backbones=[resnet20,wrn16_8]", "attentions=[se]", "fused_tail=true"]))
    assert [c.model for c in candidates.candidates(settings)] == [
        "resnet20+se", "resnet20+se+fused_tail", "wrn16_8+se"]
    assert "backbone 'wrn16_8' has no fused tail; fused_tail row skipped" in capsys.readouterr().err


def test_timm_profiles_do_not_overwrite_ours():
    settings = SimpleNamespace(out="runs/r50.csv")
    ours = candidates.Candidate("attn_zoo", "resnet50", "se", None)
    theirs = candidates.Candidate("timm", "resnet50", "se", None)
    assert measuring.profile_path(settings, ours, "compiled").name == "r50.resnet50_se.compiled.profile.txt"
    assert measuring.profile_path(settings, theirs, "compiled").name == "r50.timm.resnet50_se.compiled.profile.txt"
