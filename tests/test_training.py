"""Training features through the real entry point: resume after SIGKILL, failing sweep jobs,
wandb offline, DDP on two CPU processes, EMA, label smoothing, schedules."""
import json
import os
import signal
import subprocess
import sys

import torch

from tests.helpers import QUICK, ROOT, run_entry_point, signal_after_first_checkpoint

DETERMINISTIC = (
    "trainer.max_epochs=4", "trainer.limit_train_batches=3", "trainer.limit_val_batches=2",
    "trainer.deterministic=true", "trainer.enable_progress_bar=false", "logger=none", "data.batch_size=32",
)


def _results(folder):
    return json.loads((folder / "results.json").read_text())


def test_sigkill_mid_training_then_rerun_resumes_to_the_same_result(tmp_path):
    reference = run_entry_point(*DETERMINISTIC, f"hydra.run.dir={tmp_path / 'reference'}", cwd=tmp_path)
    assert reference.returncode == 0, reference.stderr[-2000:]

    killed_dir = tmp_path / "killed"
    # 0.3 s after the checkpoint appears: let its write finish
    signal_after_first_checkpoint(*DETERMINISTIC, out=killed_dir, cwd=tmp_path, signum=signal.SIGKILL, settle_s=0.3)
    assert _results(killed_dir)["status"] == "running", "the run finished before it could be killed"

    resumed = run_entry_point(*DETERMINISTIC, f"hydra.run.dir={killed_dir}", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    after, expected = _results(killed_dir), _results(tmp_path / "reference")
    assert after["status"] == "completed" and after["resumed_from"].endswith("last.ckpt")
    assert [row["top1"] for row in after["history"]] == [row["top1"] for row in expected["history"]]
    assert after["top1"] == expected["top1"] and after["epochs"] == 4
    weights = [
        torch.load(folder / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
        for folder in (killed_dir, tmp_path / "reference")
    ]
    for name, tensor in weights[0].items():
        torch.testing.assert_close(tensor, weights[1][name], msg=name)


def test_rerun_into_a_completed_folder_does_not_overwrite(tmp_path):
    out = tmp_path / "run"
    assert run_entry_point(*QUICK, f"hydra.run.dir={out}", cwd=tmp_path).returncode == 0
    first = (out / "results.json").read_text()
    again = run_entry_point(*QUICK, f"hydra.run.dir={out}", cwd=tmp_path)
    assert again.returncode == 0 and "already holds a completed run" in again.stderr + again.stdout
    assert (out / "results.json").read_text() == first


def test_a_failing_job_is_recorded_and_the_sweep_goes_on(tmp_path):
    sweep = tmp_path / "sweep"
    completed = run_entry_point(
        "-m", *QUICK, "attention=se", "attention.reduction=-1,8", f"hydra.sweep.dir={sweep}", cwd=tmp_path
    )
    assert completed.returncode != 0  # the sweep reports its failure at the end
    failed, finished = _results(sweep / "0"), _results(sweep / "1")
    assert failed["status"] == "failed" and "reduction must be > 0" in failed["error"]
    assert finished["status"] == "completed"


def test_wandb_without_api_key_logs_offline_by_itself(tmp_path):
    out = tmp_path / "run"
    env = {key: value for key, value in os.environ.items() if not key.startswith("WANDB")}
    env.update(HOME=str(tmp_path), NETRC=str(tmp_path / "no-netrc"))
    completed = subprocess.run(
        [sys.executable, str(ROOT / "run.py"), "trainer=debug", "logger=wandb", "attention=se", "seed=4",
         f"hydra.run.dir={out}"],
        capture_output=True, text=True, cwd=tmp_path, env=env, timeout=600,
    )
    assert completed.returncode == 0, completed.stderr[-2000:]
    assert "logging offline" in completed.stdout + completed.stderr
    runs = list((out / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and list(runs[0].glob("run-*.wandb"))
    assert _results(out)["status"] == "completed"


def test_ddp_on_two_cpu_processes_writes_one_result(tmp_path):
    out = tmp_path / "ddp"
    completed = run_entry_point(
        *QUICK, "trainer.devices=2", "trainer.strategy=ddp", f"hydra.run.dir={out}", cwd=tmp_path
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    results = _results(out)
    assert results["status"] == "completed" and results["epochs"] == 1
    assert results["config"]["trainer"]["devices"] == 2
    assert [p.name for p in tmp_path.iterdir()] == ["ddp"], "DDP made a second output folder"


def test_ema_label_smoothing_multistep_and_norm_bias_exclusion_run(tmp_path):
    out = tmp_path / "run"
    completed = run_entry_point(
        *QUICK, "ema_decay=0.5", "label_smoothing=0.1", "sched=multistep", "optim.exclude_norm_and_bias=true",
        "attention=se", f"hydra.run.dir={out}", cwd=tmp_path,
    )
    assert completed.returncode == 0, completed.stderr[-2000:]
    results = _results(out)
    assert 0 <= results["ema_top1"] <= 100 and "ema_top1" in results["history"][0]
    state = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    raw, averaged = state["model.head.weight"], state["ema.module.head.weight"]
    assert not torch.equal(raw, averaged)


def test_adamw_and_synthetic_data_with_device_loader(tmp_path):
    out = tmp_path / "run"
    completed = run_entry_point(
        *QUICK, "optim=adamw", "data=synthetic", "data.loader=gpu", "data.num_samples=64", "data.batch_size=16",
        f"hydra.run.dir={out}", cwd=tmp_path,
    )
    assert completed.returncode == 0, completed.stderr[-2000:]
    results = _results(out)
    assert results["status"] == "completed"
    # one whole epoch (training + validation) takes longer than its training part alone
    (epoch_seconds,) = results["epoch_seconds_by_epoch"]
    assert epoch_seconds > 2 * 16 / results["train_images_per_s"] > 0  # 2 batches of 16


def test_compile_flag_trains(tmp_path):
    """The one torch.compile training run that `make test` keeps (ResNet-20, two steps)."""
    out = tmp_path / "run"
    completed = run_entry_point(*QUICK, "compile=true", "attention=se", f"hydra.run.dir={out}", cwd=tmp_path)
    assert completed.returncode == 0, completed.stderr[-2000:]
    assert _results(out)["status"] == "completed"
    # the checkpoint of a compiled run loads into the plain model (no `_orig_mod.` keys)
    state = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert "model.head.weight" in state and not any("_orig_mod" in key for key in state)


def test_compile_mode_reaches_torch_compile_with_static_shapes(monkeypatch):
    from functools import partial

    from attn_zoo.lit import Classifier

    calls = []
    monkeypatch.setattr(torch, "compile", lambda model, **options: calls.append(options) or model)
    Classifier(torch.nn.Linear(2, 2), 2, partial(torch.optim.SGD, lr=0.1), compile=True, compile_mode="reduce-overhead")
    Classifier(torch.nn.Linear(2, 2), 2, partial(torch.optim.SGD, lr=0.1))
    assert calls == [{"mode": "reduce-overhead", "dynamic": False}]
