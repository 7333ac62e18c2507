"""``python -m attn_zoo list``: every registered name with its description and parameters at C=256."""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import attn_zoo
from attn_zoo.__main__ import main
from attn_zoo.cost import count_params
from attn_zoo.registry import ATTENTION, BACKBONES
from tests.helpers import markdown_rows

ROOT = Path(__file__).resolve().parents[1]


def listing_header(text: str, section: int = 0) -> list[str]:
    """The column names of the listing's ``section`` (0: attention modules, 1: backbones)."""
    return markdown_rows(text.strip().split("\n\n")[section])[0]


def listing_rows(text: str, section: int = 0) -> dict[str, list[str]]:
    """The cells of the listing's ``section`` (0: attention modules, 1: backbones), by name."""
    return {cells[0]: cells for cells in markdown_rows(text.strip().split("\n\n")[section])[1:]}


def test_list_shows_each_name_description_and_parameters_at_256(capsys):
    assert main(["list"]) == 0
    rows = listing_rows(capsys.readouterr().out)
    assert sorted(rows) == attn_zoo.list_attention()
    for name, cells in rows.items():
        params = count_params(attn_zoo.create_attention(name, 256))
        assert cells[1] == f"{params:,}"
        assert cells[2] == ATTENTION.get(name).description
    assert rows["se"][1] == f"{2 * 256 * 16 + 16 + 256:,}" and rows["none"][1] == "0"


def test_list_channels_option(capsys):
    main(["list", "--channels", "64"])
    out = capsys.readouterr().out
    assert listing_header(out)[1] == "params@C=64"
    assert listing_rows(out)["ese"][1] == f"{64 * 64 + 64:,}"


def test_module_entry_point_runs_and_needs_a_command():
    listed = subprocess.run([sys.executable, "-m", "attn_zoo", "list"], capture_output=True, text=True, cwd=ROOT)
    assert listed.returncode == 0 and "cbam" in listed.stdout
    bare = subprocess.run([sys.executable, "-m", "attn_zoo"], capture_output=True, text=True, cwd=ROOT)
    assert bare.returncode == 2 and "list" in bare.stderr


def test_unknown_command_is_rejected():
    with pytest.raises(SystemExit) as exit_info:
        main(["lst"])
    assert exit_info.value.code == 2


def test_list_shows_every_backbone_with_its_parameters(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert listing_header(out, section=1) == ["backbone", "params", "description"]
    rows = listing_rows(out, section=1)
    assert sorted(rows) == attn_zoo.list_backbones()
    assert rows["resnet20"][1] == "272,474"  # the README's ResNet-20 with projection shortcuts
    assert rows["resnet50"][1] == "25,557,032"  # torchvision's ResNet-50
    for name, cells in rows.items():
        assert cells[2] == BACKBONES.get(name).description


def test_summary_help_from_the_package_entry_point():
    completed = subprocess.run([sys.executable, "-m", "attn_zoo", "summary", "--help"], capture_output=True,
                               text=True, cwd=ROOT, timeout=300)
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.startswith("usage: python -m attn_zoo summary")
    assert "--image-size" in completed.stdout and "Hydra overrides" in completed.stdout
    shown = subprocess.run([sys.executable, "-m", "attn_zoo", "summary", "--image-size", "32", "backbone=resnet20",
                            "attention=se"], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert shown.returncode == 0 and "attention modules  9" in shown.stdout, shown.stderr


@pytest.mark.parametrize("script, usage", [
    ("attn-zoo", "usage: python -m attn_zoo "), ("attn-zoo-bench", "usage: python -m attn_zoo.bench"),
    ("attn-zoo-summarize", "usage: attn-zoo-summarize"), ("attn-zoo-plots", "usage: attn-zoo-plots"),
    ("attn-zoo-report", "usage: attn-zoo-report"), ("attn-zoo-excitation", "usage: attn-zoo-excitation"),
    ("attn-zoo-results", "usage: attn-zoo-results"),
])
def test_console_scripts_are_installed_and_run_from_anywhere(script, usage, tmp_path):
    """pyproject's console scripts, run outside the repository: analysis is an installed package."""
    executable = Path(sys.executable).parent / script
    completed = subprocess.run([str(executable), "--help"], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert completed.returncode == 0, completed.stderr[-2000:]
    assert completed.stdout.startswith(usage)


def test_analysis_imports_without_a_path_patch(tmp_path):
    code = "import analysis.plots, analysis.report, analysis.excitation, analysis.summarize, analysis.results_md"
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert completed.returncode == 0, completed.stderr[-2000:]


def summary_of(capsys, *arguments: str) -> tuple[int, str, str]:
    code = main(["summary", *arguments])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_summary_reports_the_image_size_and_classes_of_the_run_it_describes(capsys, tmp_path):
    """Same data group as run.py: the default (embedded CIFAR-10) is 32x32 with 10 classes, so an
    ImageNet-stem ResNet-50 stops with the run's own error line; an ImageFolder tree is its
    data.image_size and its class folders; --image-size / --num-classes ask about another input."""
    code, out, err = summary_of(capsys, "attention=se", "backbone=resnet50")
    assert code == 2 and err.startswith("error: images of 32x32 leave resnet50 with stem=imagenet") and not out
    code, out, _ = summary_of(capsys, "attention=se", "backbone=resnet50", "backbone.stem=cifar")
    head = attn_zoo.create_model("resnet50", "se", num_classes=10, backbone_options={"stem": "cifar"})
    assert code == 0 and "(image 3x32x32, 10 classes from data embedded)" in out
    assert f"params             {count_params(head):,}" in out
    for split in ("train", "val"):
        for name in ("cat", "dog", "fox"):
            (tmp_path / split / name).mkdir(parents=True)
            (tmp_path / split / name / "0.jpg").write_bytes(b"")  # listed, never decoded
    code, out, _ = summary_of(capsys, "backbone=resnet18", "data=imagefolder", f"data.root={tmp_path}",
                              "data.image_size=96")
    assert code == 0 and "(image 3x96x96, 3 classes from data imagefolder)" in out
    code, out, _ = summary_of(capsys, "backbone=resnet20", "data=synthetic", "data.num_classes=7", "data.image_size=40")
    assert code == 0 and "(image 3x40x40, 7 classes from data synthetic)" in out
    code, out, _ = summary_of(capsys, "backbone=resnet50", "--image-size", "224", "--num-classes", "1000")
    assert code == 0 and "(image 3x224x224, 1000 classes from --num-classes)" in out and "25,557,032" in out
    code, _, err = summary_of(capsys, "data=imagefolder")
    assert code == 2 and err.strip() == "error: data.root must be set (no default): add e.g. data.root=<value>"


# README's opening counts these `attention=` choices beside the modules it describes
NAMED_CHOICES = {"none", "cbam_channel", "cbam_spatial", "se_exact"}
# .ci/run sets it: the project's README describes every module it ships; a user's own module (README, "Add
# your own attention module": one file, one yaml, one test) needs no README line, so make test leaves it
COMPLETE_README = "ATTN_ZOO_CHECK_README_COMPLETE"


def documented_modules(readme: str) -> set[str]:
    """The modules README's "Attention modules" section describes, one bullet each (- `name` — ...)."""
    section = readme.split("\n## Attention modules\n", 1)[1].split("\n## ", 1)[0]
    return set(re.findall(r"^- `(\w+)` —", section, flags=re.MULTILINE))


def readme_problems(readme: str, registered: set[str], yaml_stems: set[str], backbones: int, complete: bool) -> list[str]:
    """What README's module section and opening counts get wrong: a module it describes that does not
    exist, counts that differ from what it describes, and with ``complete`` a module it leaves out."""
    documented = documented_modules(readme)
    choices = documented | NAMED_CHOICES
    opening = " ".join(readme.split("\n\n")[1].split())
    problems = [f"README describes {name}, which is not registered" for name in sorted(documented - registered)]
    problems += [f"README counts attention={name}, which has no yaml" for name in sorted(choices - yaml_stems)]
    problems += [f"README's opening should say {claim!r} (its first paragraph)" for claim in (
        f"{len(documented)} attention modules", f"{len(choices)} `attention=` choices", f"injected into {backbones} backbones")
        if claim not in opening]
    if complete:
        problems += [f"README does not describe {name}" for name in sorted((registered | yaml_stems) - choices)]
    return problems


def _readme_and_conf() -> tuple[str, set[str], set[str], int]:
    conf = ROOT / "conf"
    return ((ROOT / "README.md").read_text(), set(attn_zoo.list_attention()),
            {path.stem for path in (conf / "attention").glob("*.yaml")}, len(list((conf / "backbone").glob("*.yaml"))))


def test_the_readme_counts_what_it_describes_and_describes_only_what_exists():
    """README's opening counts were written by hand and went stale as modules were added; then a user's
    own module made make test fail until README's counts were edited (the registry was counted)."""
    readme, registered, yaml_stems, backbones = _readme_and_conf()
    documented = len(documented_modules(readme))
    assert documented >= 13  # the bullets are found (13 when this was written)
    assert readme_problems(readme, registered, yaml_stems, backbones, complete=False) == []
    mine = registered | {"my_module"}, yaml_stems | {"my_module"}
    assert readme_problems(readme, *mine, backbones, complete=False) == []
    assert "README does not describe my_module" in readme_problems(readme, *mine, backbones, complete=True)
    assert readme_problems(readme, registered - {"gc"}, yaml_stems - {"se_exact"}, backbones, complete=False) == [
        "README describes gc, which is not registered", "README counts attention=se_exact, which has no yaml"]
    stale = readme.replace(f"{documented} attention modules", f"{documented - 1} attention modules", 1)
    assert stale != readme and readme_problems(stale, registered, yaml_stems, backbones, complete=False)[0].startswith(
        f"README's opening should say '{documented} attention modules'")


@pytest.mark.skipif(not os.environ.get(COMPLETE_README), reason=f"{COMPLETE_README}: the project's own check (.ci/run)")
def test_the_readme_describes_every_module_the_project_ships():
    readme, registered, yaml_stems, backbones = _readme_and_conf()
    assert readme_problems(readme, registered, yaml_stems, backbones, complete=True) == []
