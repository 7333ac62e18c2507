"""A run folder holds one config and one history (issue 17): last.ckpt is the newest state and a
broken one never blocks a rerun, a changed config never continues a run, divergence is final,
empty work is an error, the folder claim is a kernel lock, a completed folder's record is never
rewritten, and a resumed run's CSV log is the uninterrupted run's."""
import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import lightning as L
import pytest
import torch

from attn_zoo import checkpoints, run_folder
from attn_zoo.config_check import ConfigError
from tests.helpers import ROOT, run_entry_point, signal_after_first_checkpoint
from tests.lightning_toys import loader

# two epochs of 3 steps
TWO_EPOCHS = (
    "trainer.max_epochs=2", "trainer.limit_train_batches=3", "trainer.limit_val_batches=2",
    "trainer.enable_progress_bar=false", "logger=csv", "data.batch_size=64", "seed=3",
)


def _results(folder):
    return json.loads((folder / "results.json").read_text())


def _as_killed(folder):
    """What SIGKILL after the last checkpoint leaves: results.json still says running."""
    results = _results(folder)
    results["status"] = "running"
    (folder / "results.json").write_text(json.dumps(results))


def _error_lines(completed):
    return [line for line in completed.stderr.splitlines() if line.startswith("error:")]


@pytest.fixture(scope="module")
def two_epoch_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("two_epochs") / "run"
    completed = run_entry_point(*TWO_EPOCHS, f"hydra.run.dir={out}", cwd=out.parent)
    assert completed.returncode == 0, completed.stderr[-2000:]
    return out


@pytest.fixture
def run_copy(two_epoch_run, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(two_epoch_run, out)
    return out


class ScriptedTop1(L.LightningModule):
    """Validation top-1 as scripted per epoch: a drop that does not depend on what training learns."""

    def __init__(self, top1_by_epoch):
        super().__init__()
        self.layer, self.top1_by_epoch = torch.nn.Linear(4, 2), top1_by_epoch

    def training_step(self, batch, batch_index):
        return torch.nn.functional.cross_entropy(self.layer(batch[0]), batch[1])

    def validation_step(self, batch, batch_index):
        self.log("val/top1", float(self.top1_by_epoch[self.current_epoch]))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_last_checkpoint_is_the_last_epoch_even_when_top1_drops(tmp_path):
    folder = tmp_path / "checkpoints"
    best = checkpoints.AtomicModelCheckpoint(
        dirpath=folder, filename="best", monitor="val/top1", mode="max", save_top_k=1, save_last=False,
        auto_insert_metric_name=False, enable_version_counter=False,
    )
    trainer = L.Trainer(accelerator="cpu", max_epochs=3, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, callbacks=[best, checkpoints.LastCheckpoint(folder)])
    trainer.fit(ScriptedTop1([50.0, 40.0, 30.0]), loader(24), loader(8))  # 3 steps an epoch
    last, best = (torch.load(folder / name, weights_only=True) for name in ("last.ckpt", "best.ckpt"))
    assert (last["epoch"], last["global_step"]) == (2, 9) and best["global_step"] == 3
    assert torch.load(folder / "previous.ckpt", weights_only=True)["global_step"] == 6
    names = sorted(path.name for path in folder.iterdir())
    assert names == ["best.ckpt", "last.ckpt", "previous.ckpt"], "no last-v1.ckpt, no temporary file left"


def test_a_truncated_last_checkpoint_falls_back_and_says_why(run_copy):
    _as_killed(run_copy)
    last = run_copy / "checkpoints" / "last.ckpt"
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 3])  # a disk that filled during the save
    # the newest of the others: previous.ckpt (epoch 0), or best.ckpt when epoch 1 was the best
    steps = {name: torch.load(run_copy / "checkpoints" / name, weights_only=True)["global_step"]
             for name in ("previous.ckpt", "best.ckpt")}
    newest = max(steps, key=steps.get)
    again = run_entry_point(*TWO_EPOCHS, "trainer.max_epochs=3", f"hydra.run.dir={run_copy}", cwd=run_copy.parent)
    assert again.returncode == 0, again.stderr[-2000:]
    after = _results(run_copy)
    assert after["status"] == "completed" and after["resumed_from"] == str(run_copy / "checkpoints" / newest)
    assert len(after["resume_skipped"]) == 1 and after["resume_skipped"][0].startswith(f"{last} does not load")
    assert f"not resuming from {last} does not load" in again.stdout + again.stderr
    assert [row["epoch"] for row in after["history"]] == [0, 1, 2]
    # the truncated file did not replace the good previous.ckpt when the new last.ckpt was written
    assert torch.load(run_copy / "checkpoints" / "previous.ckpt", weights_only=True)["global_step"] >= steps["previous.ckpt"]


def test_a_rerun_with_another_config_is_refused_naming_the_keys(run_copy):
    _as_killed(run_copy)
    before = (run_copy / "results.json").read_text()
    again = run_entry_point(*TWO_EPOCHS, "seed=7", "optim.lr=0.01", f"hydra.run.dir={run_copy}", cwd=run_copy.parent)
    assert again.returncode == 2 and len(_error_lines(again)) == 1, again.stderr[-2000:]
    assert "holds a run with another config (differs in optim.lr, seed)" in _error_lines(again)[0]
    assert (run_copy / "results.json").read_text() == before


def test_resume_into_its_own_folder_extends_it_only_with_its_config(run_copy):
    """resume=<folder> continues even a completed run, with a longer trainer.max_epochs, never with
    another learning rate."""
    refused = run_entry_point(*TWO_EPOCHS, f"resume={run_copy}", "optim.lr=0.01", f"hydra.run.dir={run_copy}",
                              cwd=run_copy.parent)
    assert refused.returncode == 2 and "differs in optim.lr)" in _error_lines(refused)[0], refused.stderr[-2000:]
    longer = run_entry_point(*TWO_EPOCHS, f"resume={run_copy}", "trainer.max_epochs=3", f"hydra.run.dir={run_copy}",
                             cwd=run_copy.parent)
    assert longer.returncode == 0, longer.stderr[-2000:]
    assert [row["epoch"] for row in _results(run_copy)["history"]] == [0, 1, 2]


def test_a_rerun_into_a_completed_folder_keeps_its_config_record(run_copy):
    record = (run_copy / ".hydra" / "config.yaml").read_text()
    assert "seed: 3" in record
    again = run_entry_point(*TWO_EPOCHS, "seed=5", f"hydra.run.dir={run_copy}", cwd=run_copy.parent)
    assert again.returncode == 0 and "already holds a completed run" in again.stdout + again.stderr
    assert (run_copy / ".hydra" / "config.yaml").read_text() == record


def test_a_resumed_run_appends_to_the_metrics_log(run_copy, two_epoch_run):
    """Killed after epoch 0's checkpoint (the rows of epoch 1 written or not), resumed: the log is
    the uninterrupted run's, row for row."""
    _as_killed(run_copy)
    reference = (two_epoch_run / "csv" / "metrics.csv").read_text()
    shutil.copy(run_copy / "checkpoints" / "previous.ckpt", run_copy / "checkpoints" / "last.ckpt")
    (run_copy / "checkpoints" / "previous.ckpt").unlink()
    (run_copy / "checkpoints" / "best.ckpt").unlink()
    again = run_entry_point(*TWO_EPOCHS, f"hydra.run.dir={run_copy}", cwd=run_copy.parent)
    assert again.returncode == 0, again.stderr[-2000:]
    assert _results(run_copy)["resumed_from"].endswith("last.ckpt")
    assert (run_copy / "csv" / "metrics.csv").read_text() == reference
    resumed = torch.load(run_copy / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    original = torch.load(two_epoch_run / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert all(torch.equal(resumed[key], original[key]) for key in original)


# ---------------------------------------------------------------- divergence


def test_a_diverged_run_exits_non_zero_and_is_not_resumed(tmp_path):
    out = tmp_path / "run"
    diverging = ("trainer=debug", "logger=none", "sched=none", "optim.lr=1e30", "trainer.limit_train_batches=6",
                 f"hydra.run.dir={out}")
    first = run_entry_point(*diverging, cwd=tmp_path)
    assert first.returncode == 3 and "diverged: non-finite loss at step" in first.stderr, first.stderr[-2000:]
    before = _results(out)
    assert before["status"] == "diverged"
    again = run_entry_point(*diverging, cwd=tmp_path)
    assert again.returncode == 2 and len(_error_lines(again)) == 1, again.stderr[-2000:]
    assert f"diverged at step {before['diverged_at_step']}" in _error_lines(again)[0]
    assert "choose another hydra.run.dir or delete the folder" in _error_lines(again)[0]
    assert _results(out) == before


def test_a_checkpoint_with_non_finite_weights_is_skipped(tmp_path):
    model = torch.nn.Linear(2, 2)
    state = {f"model.{key}": value.clone() for key, value in model.state_dict().items()}
    state["model.weight"][0, 0] = float("nan")
    torch.save({"state_dict": state, "global_step": 5}, tmp_path / "last.ckpt")
    torch.save({"state_dict": {f"model.{k}": v for k, v in model.state_dict().items()}, "global_step": 2},
               tmp_path / "best.ckpt")
    chosen, skipped = checkpoints.choose([checkpoints.load(tmp_path / name) for name in ("last.ckpt", "best.ckpt")],
                                         model)
    assert chosen.path == tmp_path / "best.ckpt"
    assert skipped == [f"{tmp_path / 'last.ckpt'} holds non-finite numbers in 1 tensors (the run diverged)"]


# ---------------------------------------------------------------- the folder claim


def _hold_lock(folder):
    """A process that holds the folder's lock, as a live run does."""
    folder.mkdir(parents=True, exist_ok=True)
    code = (f"import fcntl, os, time; h = os.open({str(folder / '.lock')!r}, os.O_RDWR | os.O_CREAT); "
            f"fcntl.flock(h, fcntl.LOCK_EX); os.pwrite(h, b'pid %d on host' % os.getpid(), 0); print('held', flush=True); "
            f"time.sleep(120)")
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    return holder


def test_two_runs_at_once_one_is_refused_before_writing_anything(tmp_path):
    out = tmp_path / "run"
    holder = _hold_lock(out)
    try:
        second = run_entry_point("trainer=debug", "logger=csv", f"hydra.run.dir={out}", cwd=tmp_path)
        assert second.returncode == 2 and len(_error_lines(second)) == 1, second.stderr[-2000:]
        assert f"is in use by a running job (pid {holder.pid} on host)" in _error_lines(second)[0]
        assert sorted(path.name for path in out.iterdir()) == [".lock", "run.log"], "the refused run wrote"
    finally:
        holder.kill()
        holder.wait()
    with run_folder.claimed(out):  # the lock died with its process: the folder is free at once
        pass


def test_two_identical_runs_started_together_one_trains_one_is_refused(tmp_path):
    out = tmp_path / "run"
    command = [sys.executable, str(ROOT / "run.py"), "trainer=debug", "trainer.max_epochs=2", "logger=csv",
               f"hydra.run.dir={out}"]
    processes = [subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
                 for _ in range(2)]
    outcomes = sorted((process.wait(timeout=600), process.stderr.read()) for process in processes)
    assert [code for code, _ in outcomes] == [0, 2], outcomes[-1][1][-2000:]
    assert "is in use by a running job (pid" in outcomes[1][1]
    assert _results(out)["status"] == "completed" and _results(out)["epochs"] == 2
    epochs = [line.split(",")[0] for line in (out / "csv" / "metrics.csv").read_text().splitlines()[1:]]
    assert sorted(set(epochs)) == ["0", "1"], "the metrics log lost an epoch"


def test_a_stale_record_with_a_reused_pid_does_not_hold_the_folder(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "results.json").write_text(json.dumps({"schema": 1, "status": "running", "pid": os.getppid()}))
    (out / ".lock").write_text(f"pid {os.getppid()} on host\n")
    with run_folder.claimed(out):
        assert (out / ".lock").read_text() == f"pid {os.getpid()} on {os.uname().nodename}\n"


def test_the_claim_is_exclusive_within_one_host(tmp_path):
    with run_folder.claimed(tmp_path):
        handle = os.open(tmp_path / ".lock", os.O_RDWR)
        with pytest.raises(BlockingIOError):
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.close(handle)
        with pytest.raises(ConfigError, match="is in use by a running job"):
            with run_folder.claimed(tmp_path):
                pass


def test_config_differences_follow_a_moved_folder_and_allow_resumable_keys():
    recorded = {"paths": {"output_dir": "/a/run"}, "logger": {"csv": {"save_dir": "/a/run"}},
                "trainer": {"max_epochs": 2}, "seed": 0, "optim": {"lr": 0.1}}
    moved = {"paths": {"output_dir": "/b/run"}, "logger": {"csv": {"save_dir": "/b/run"}},
             "trainer": {"max_epochs": 4}, "seed": 0, "optim": {"lr": 0.1}}
    assert run_folder.config_differences(recorded, moved) == []
    assert run_folder.config_differences(recorded, {**moved, "seed": 1, "extra": 2}) == ["extra", "seed"]


# ---------------------------------------------------------------- mid-epoch interrupt


def test_sigterm_mid_epoch_resumes_to_the_same_weights_and_log(two_epoch_run, tmp_path):
    out = tmp_path / "run"
    # lands in epoch 1, of 3 batches: stops after its current batch
    returncode, stderr = signal_after_first_checkpoint(*TWO_EPOCHS, out=out, cwd=tmp_path, signum=signal.SIGTERM)
    assert returncode == 143, stderr[-2000:]
    last = out / "checkpoints" / "last.ckpt"
    step = torch.load(last, weights_only=True)["global_step"]
    assert step % 3 != 0, f"precondition: interrupted mid-epoch (step {step})"

    resumed = run_entry_point(*TWO_EPOCHS, f"hydra.run.dir={out}", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    after, expected = _results(out), _results(two_epoch_run)
    assert after["history"] == expected["history"]
    assert (out / "csv" / "metrics.csv").read_text() == (two_epoch_run / "csv" / "metrics.csv").read_text()
    weights = [torch.load(folder / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
               for folder in (out, two_epoch_run)]
    assert all(torch.equal(weights[0][key], weights[1][key]) for key in weights[1])


def test_sigterm_mid_epoch_with_loader_workers_resumes_to_the_same_weights(tmp_path):
    """Worker processes augment with random states of their own; each sample's augmentation is seeded
    from the epoch's seed and the sample's index, so it is the same whichever worker draws it, when."""
    workers = (*TWO_EPOCHS, "data.num_workers=2", "logger=none")
    reference = tmp_path / "reference"
    assert run_entry_point(*workers, f"hydra.run.dir={reference}", cwd=tmp_path).returncode == 0
    out = tmp_path / "interrupted"
    returncode, stderr = signal_after_first_checkpoint(*workers, out=out, cwd=tmp_path, signum=signal.SIGTERM)
    assert returncode == 143, stderr[-2000:]
    step = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)["global_step"]
    assert step % 3 != 0, f"precondition: interrupted mid-epoch (step {step})"
    resumed = run_entry_point(*workers, f"hydra.run.dir={out}", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert _results(out)["history"] == _results(reference)["history"]
    weights = [torch.load(folder / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
               for folder in (out, reference)]
    assert all(torch.equal(weights[0][key], weights[1][key]) for key in weights[1])


def test_sigterm_mid_epoch_with_ema_resumes_the_average_too(tmp_path):
    """The EMA update is part of the step, so a batch-end checkpoint holds it."""
    runs = {name: tmp_path / name for name in ("reference", "interrupted")}
    ema = (*TWO_EPOCHS, "ema_decay=0.5", "logger=none")
    assert run_entry_point(*ema, f"hydra.run.dir={runs['reference']}", cwd=tmp_path).returncode == 0
    out = runs["interrupted"]
    process = subprocess.Popen([sys.executable, str(ROOT / "run.py"), *ema, f"hydra.run.dir={out}"], cwd=tmp_path,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while not (out / "checkpoints" / "last.ckpt").is_file() and process.poll() is None:
        time.sleep(0.02)
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=120) == 143
    assert run_entry_point(*ema, f"hydra.run.dir={out}", cwd=tmp_path).returncode == 0
    states = [torch.load(folder / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"] for folder in runs.values()]
    assert all(torch.equal(states[0][key], states[1][key]) for key in states[0] if key.startswith("ema."))
    assert _results(out)["ema_top1"] == _results(runs["reference"])["ema_top1"]


@pytest.fixture
def small_disk(tmp_path):
    """A 6 MB tmpfs: room for two checkpoints of this model and a bit (needs root to mount)."""
    mount = tmp_path / "small"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=6m", "tmpfs", str(mount)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_disk_that_fills_during_a_save_keeps_the_last_checkpoint_whole(small_disk, tmp_path):
    out = small_disk / "run"
    full = run_entry_point(*TWO_EPOCHS, "logger=none", f"hydra.run.dir={out}", cwd=tmp_path)
    assert full.returncode != 0 and "No space left on device" in full.stdout + full.stderr, full.stderr[-2000:]
    names = sorted(path.name for path in (out / "checkpoints").iterdir())
    assert not [name for name in names if name.endswith(".tmp")], "the partial file was left on the full disk"
    assert torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 3
    moved = tmp_path / "moved"
    shutil.copytree(out, moved)
    again = run_entry_point(*TWO_EPOCHS, "logger=none", f"hydra.run.dir={moved}", cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-2000:]
    assert _results(moved)["resumed_from"] == str(moved / "checkpoints" / "last.ckpt")
    assert [row["epoch"] for row in _results(moved)["history"]] == [0, 1]
