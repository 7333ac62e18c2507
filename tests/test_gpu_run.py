"""The GPU training path end to end: one epoch of ``trainer=gpu compile=true`` (bf16-mixed,
channels_last, torch.compile) on the embedded data through run.py. Marked ``gpu``: skipped without
CUDA; ``make test-gpu`` runs it first in every GPU session, so the GPU path cannot regress unseen."""
import json

import pytest

from tests.helpers import run_entry_point


@pytest.mark.gpu
def test_one_compiled_bf16_epoch_on_the_gpu_learns(tmp_path):
    out = tmp_path / "run"
    completed = run_entry_point(
        "trainer=gpu", "compile=true", "trainer.max_epochs=1", "logger=none", "trainer.enable_progress_bar=false",
        f"hydra.run.dir={out}", cwd=tmp_path,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert results["status"] == "completed" and results["epochs"] == 1
    assert results["config"]["trainer"]["accelerator"] == "gpu" and results["config"]["compile"] is True
    # chance is 10 %; one epoch of ResNet-20 on the 5,000 images gets well above it
    assert results["top1"] > 10, results["history"]
