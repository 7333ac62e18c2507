"""The SE-paper experiment configs compose into the intended sweeps; the summary CLI reports the model."""
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.types import RunMode

import attn_zoo
from attn_zoo import summary
from attn_zoo.profile import count_params

ROOT = Path(__file__).resolve().parents[1]


def compose_experiment(name):
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        return compose("config", overrides=[f"+experiment={name}"], return_hydra_config=True)


def sweep(cfg):
    """{key: [values]} as Hydra's sweeper will expand ``hydra.sweeper.params``."""
    parser = OverridesParser.create()
    overrides = parser.parse_overrides([f"{key}={value}" for key, value in cfg.hydra.sweeper.params.items()])
    return {o.key_or_group: list(o.sweep_iterator()) for o in overrides}


@pytest.mark.parametrize(
    "experiment,key,values,params",
    [
        ("se_table13", "backbone.stages", [[1], [2], [3], [1, 2, 3, 4]], [25_582_424, 25_690_280, 26_349_992, 28_088_024]),
        ("se_table14", "backbone.placement", ["standard", "pre", "post", "identity"], [28_088_024, 27_562_656, 28_088_024, 28_088_024]),
        ("se_table15", "backbone.placement", ["standard", "3x3"], [28_088_024, 25_719_776]),
    ],
)
def test_se_paper_experiments_sweep_the_right_thing(experiment, key, values, params):
    cfg = compose_experiment(experiment)
    assert cfg.hydra.mode == RunMode.MULTIRUN
    assert (cfg.backbone.name, cfg.attention.name) == ("resnet50", "se")
    assert sweep(cfg) == {key: values}
    option = key.split(".")[1]
    for value, expected in zip(values, params):
        options = {**summary._options(cfg.backbone), option: value}
        with torch.device("meta"):
            model = attn_zoo.create_model("resnet50", "se", backbone_options=options)
        assert count_params(model) == expected


def test_summary_prints_params_flops_and_attention_sites(capsys):
    assert summary.main(["backbone=resnet20", "attention=se", "backbone.stages=[2,3]"]) == 0
    out = capsys.readouterr().out
    plain = count_params(attn_zoo.create_model("resnet20"))
    gates = 3 * (2 * 32 * 8 + 8 + 32) + 3 * (2 * 64 * 8 + 8 + 64)
    assert f"params             {plain + gates:,}   (attention {gates:,}" in out
    assert "forward MACs" in out and "forward FLOPs" in out and "2 x MACs" in out
    assert "image 3x32x32" in out and "attention modules  6" in out
    assert "stages.1.0.attention" in out and "stages.2.2.attention" in out and "stages.0.0.attention" not in out
    assert "placement standard" in out and "in 32x16x16" in out


def test_summary_uses_224_for_imagenet_stems_and_reports_errors_in_one_line(capsys):
    assert summary.default_image_size(summary.compose(["backbone=resnet50"])) == 224
    assert summary.default_image_size(summary.compose(["backbone=resnet50", "backbone.stem=cifar"])) == 32
    assert summary.main(["backbone=resnet18", "attention=se", "backbone.placement=3x3"]) == 2
    err = capsys.readouterr().err
    assert err.strip() == (
        "error: placement '3x3' does not apply to resnet18 (BasicBlock blocks); valid here: standard, pre, post, identity"
    )


def test_summary_runs_as_a_module():
    completed = subprocess.run(
        [sys.executable, "-m", "attn_zoo.summary", "backbone=torchvision", "backbone.arch=resnet18", "attention=se",
         "--image-size", "64", "--num-classes", "10"],
        capture_output=True, text=True, cwd=ROOT, timeout=120,
    )
    assert completed.returncode == 0, completed.stderr
    assert "layer4.1.bn2.attention" in completed.stdout and "after layer4.1.bn2 (injected)" in completed.stdout
