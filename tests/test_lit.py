"""The Classifier's training options (``attn_zoo.lit``) in real runs: an EMA of the weights, label
smoothing, multistep schedule and norm/bias exclusion together; AdamW on synthetic data through the
device-resident loader; torch.compile, its mode and its checkpoints."""

import torch

from attn_zoo.config import compose
from attn_zoo.lit import Classifier
from attn_zoo.optim import OptimizerFactory
from attn_zoo.train import run
from tests.helpers import QUICK, results, run_entry_point


def _run(tmp_path, *overrides):
    """A QUICK run in-process: the config run.py composes, trained by ``attn_zoo.train.run``."""
    record = run(compose([*QUICK, *overrides, f"paths.output_dir={tmp_path}"]))
    assert results(tmp_path)["status"] == record["status"]
    return record


def test_ema_label_smoothing_multistep_norm_bias_exclusion_and_channels_last_run(tmp_path):
    record = _run(tmp_path, "ema_decay=0.5", "label_smoothing=0.1", "sched=multistep",
                  "optim.exclude_norm_and_bias=true", "attention=se", "channels_last=true")
    assert record["status"] == "completed", record.get("error")
    assert record["channels_last"] is True
    assert 0 <= record["ema_top1"] <= 100 and "ema_top1" in record["history"][0]
    state = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    raw, averaged = state["model.head.weight"], state["ema.module.head.weight"]
    assert not torch.equal(raw, averaged)
    stem = state["model.stem.0.weight"]
    assert stem.is_contiguous(memory_format=torch.channels_last) and not stem.is_contiguous()


def test_adamw_and_synthetic_data_with_device_loader(tmp_path):
    record = _run(tmp_path, "optim=adamw", "data=synthetic", "data.loader=gpu", "data.num_samples=64",
                  "data.batch_size=16")
    assert record["status"] == "completed", record.get("error")
    assert record["channels_last"] is False  # auto, on the CPU
    # one whole epoch (training + validation) takes longer than its training part alone
    (epoch_seconds,) = record["epoch_seconds_by_epoch"]
    assert epoch_seconds > 2 * 16 / record["train_images_per_s"] > 0  # 2 batches of 16


def test_compile_flag_trains(tmp_path):
    """The one torch.compile training run that `make test` keeps (ResNet-20, two steps), in its own
    process: compiling leaves state behind in the process that compiled."""
    out = tmp_path / "run"
    completed = run_entry_point(*QUICK, "compile=true", "attention=se", f"hydra.run.dir={out}", cwd=tmp_path)
    assert completed.returncode == 0, completed.stderr[-2000:]
    assert results(out)["status"] == "completed"
    # the checkpoint of a compiled run loads into the plain model (no `_orig_mod.` keys)
    state = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert "model.head.weight" in state and not any("_orig_mod" in key for key in state)


def test_compile_mode_reaches_torch_compile_with_static_shapes(monkeypatch):
    calls = []
    monkeypatch.setattr(torch, "compile", lambda model, **options: calls.append(options) or model)
    Classifier(torch.nn.Linear(2, 2), 2, OptimizerFactory(torch.optim.SGD, lr=0.1), compile=True, compile_mode="reduce-overhead")
    Classifier(torch.nn.Linear(2, 2), 2, OptimizerFactory(torch.optim.SGD, lr=0.1))
    assert calls == [{"mode": "reduce-overhead", "dynamic": False}]


def test_runs_of_one_seed_with_other_modules_share_the_data_stream_and_say_so(tmp_path):
    """A seed's none and se runs draw the same epoch orders (the generator's state after an epoch,
    saved in last.ckpt, is the same) and record ``paired_by_seed`` for summarize's seed-by-seed Δ."""
    states = []
    for attention in ("none", "se"):
        record = _run(tmp_path / attention, f"attention={attention}", "seed=3")
        assert record["status"] == "completed" and record["paired_by_seed"] is True
        callbacks = torch.load(tmp_path / attention / "checkpoints" / "last.ckpt", weights_only=True)["callbacks"]
        states.append(next(state["torch"] for state in callbacks.values() if isinstance(state, dict) and "torch" in state))
    assert torch.equal(*states)
