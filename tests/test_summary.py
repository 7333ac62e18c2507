"""``python -m attn_zoo.summary``: a model's parameters, FLOPs and attention sites before training."""
import subprocess
import sys

import attn_zoo
from attn_zoo import summary
from attn_zoo.cost import count_params
from tests.helpers import ROOT, markdown_rows


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
        "error: placement '3x3' does not apply to resnet18 (BasicBlock blocks); valid here: standard, pre, post, identity, "
        "after_3x3_conv"
    )


def test_summary_runs_as_a_module():
    completed = subprocess.run(
        [sys.executable, "-m", "attn_zoo.summary", "backbone=torchvision", "backbone.arch=resnet18", "attention=se",
         "--image-size", "64", "--num-classes", "10"],
        capture_output=True, text=True, cwd=ROOT, timeout=120,
    )
    assert completed.returncode == 0, completed.stderr
    assert "layer4.1.bn2.attention" in completed.stdout and "after layer4.1.bn2 (injected)" in completed.stdout
