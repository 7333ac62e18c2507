"""The SE-paper experiment configs compose into the intended sweeps; the summary CLI reports the model."""
import subprocess
import sys

import pytest
import torch
from hydra.types import RunMode

import attn_zoo
from attn_zoo import summary
from attn_zoo.config import compose, options
from attn_zoo.cost import count_params
from tests.helpers import ROOT, markdown_rows, sweep_params

@pytest.mark.parametrize(
    "experiment,key,values,params",
    [
        ("se_table13", "backbone.stages", [[1], [2], [3], [1, 2, 3, 4]], [25_582_424, 25_690_280, 26_349_992, 28_088_024]),
        ("se_table14", "backbone.placement", ["standard", "pre", "post", "identity"], [28_088_024, 27_562_656, 28_088_024, 28_088_024]),
        ("se_table15", "backbone.placement", ["standard", "3x3"], [28_088_024, 25_719_776]),
    ],
)
def test_se_paper_experiments_sweep_the_right_thing(experiment, key, values, params):
    cfg = compose([f"+experiment={experiment}"], hydra_config=True)
    assert cfg.hydra.mode == RunMode.MULTIRUN
    assert (cfg.backbone.name, cfg.attention.name) == ("resnet50", "se")
    assert sweep_params(cfg) == {key: values}
    option = key.split(".")[1]
    for value, expected in zip(values, params):
        backbone_options = {**options(cfg.backbone), option: value}
        with torch.device("meta"):
            model = attn_zoo.create_model("resnet50", "se", backbone_options=backbone_options)
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
    sites = {cells[0]: cells for cells in markdown_rows(out)[1:]}
    assert sites["stages.1.0.attention"][2:5] == ["placement standard", "32x16x16", f"{2 * 32 * 8 + 8 + 32:,}"]


def test_summary_reports_errors_in_one_line(capsys):  # its image size: the run's (test_cli.py)
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
