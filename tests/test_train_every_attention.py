"""Every registered attention trains a few real steps through the full run (config → results.json),
in-process: ``python run.py attention=<name> trainer=debug logger=none``."""
import json

import pytest

import attn_zoo
from attn_zoo.config import compose
from attn_zoo.train import run


@pytest.mark.parametrize("name", attn_zoo.list_attention())
def test_a_few_training_steps(name, tmp_path):
    cfg = compose([f"attention={name}", "trainer=debug", "logger=none", "data.batch_size=16", f"paths.output_dir={tmp_path}"])
    results = run(cfg)
    assert results["status"] == "completed" and results["attention"] == name
    assert results["attention_variant"] == name  # the yaml holds the module's defaults
    assert json.loads((tmp_path / "results.json").read_text())["epochs"] == 1
