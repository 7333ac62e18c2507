"""Every registered attention trains a few real steps through the full run (config → results.json),
in-process: ``python run.py attention=<name> trainer=debug logger=none``."""
import json
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

import attn_zoo
from attn_zoo.train import run

CONF = Path(__file__).resolve().parents[1] / "conf"


@pytest.mark.parametrize("name", attn_zoo.list_attention())
def test_a_few_training_steps(name, tmp_path):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(
            config_name="config",
            overrides=[f"attention={name}", "trainer=debug", "logger=none", "data.batch_size=16", f"paths.output_dir={tmp_path}"],
        )
    results = run(cfg)
    assert results["status"] == "completed" and results["attention"] == name
    assert results["attention_variant"] == name  # the yaml holds the module's defaults
    assert json.loads((tmp_path / "results.json").read_text())["epochs"] == 1
