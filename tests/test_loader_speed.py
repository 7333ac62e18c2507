"""``python -m attn_zoo.tools.loader_speed``: the input pipeline timed alone, on the embedded data."""
from types import SimpleNamespace

import pytest
import torch

from attn_zoo.data import EmbeddedCIFAR10
from attn_zoo.tools import loader_speed
from tests.helpers import markdown_rows


@pytest.mark.parametrize("loader", ["cpu", "gpu"])
def test_prints_one_rate_per_epoch(loader, capsys):
    assert loader_speed.main([f"data.loader={loader}", "data.batch_size=500", "--epochs", "2", "--device", "cpu"]) == 0
    header, *rows = markdown_rows(capsys.readouterr().out)
    assert header == ["loader", "num_workers", "batch", "device", "epoch", "img/s"]
    assert [cells[:5] for cells in rows] == [[loader, "0", "500", "cpu", "1"], [loader, "0", "500", "cpu", "2"]]
    assert all(float(cells[5].replace(",", "")) > 0 for cells in rows)


def test_the_device_loader_serves_every_training_image_once_on_the_chosen_device(monkeypatch):
    datamodule = EmbeddedCIFAR10(batch_size=1000, loader="gpu")
    clock = iter([0.0, 1.0])  # one second per epoch: the rate is the image count
    monkeypatch.setattr(loader_speed, "time", SimpleNamespace(perf_counter=lambda: next(clock)))
    assert loader_speed.epoch_rates(datamodule, torch.device("cpu"), epochs=1) == [5000.0]
    assert datamodule.train_dataloader().device == torch.device("cpu")


def test_bad_override_fails_in_one_line(capsys):
    assert loader_speed.main(["data=imagefolder"]) == 2
    assert capsys.readouterr().err == "error: data.root must be set (no default): add e.g. data.root=<value>\n"
    assert loader_speed.main(["data=imagefolder", "data.root=/nonexistent/images"]) == 2
    assert capsys.readouterr().err.count("\n") == 1
