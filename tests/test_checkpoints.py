"""Checkpoints (``attn_zoo.checkpoints``): last.ckpt is the newest state and a broken one never blocks
a rerun, non-finite weights are never resumed, a full disk leaves the last checkpoint whole,
``resume=<folder>`` extends a run only with its config, a resumed run's CSV log is the
uninterrupted run's, and nothing in the code loads a checkpoint or a pickle unsafely."""
import errno
import re
import shutil
import subprocess

import lightning as L
import pytest
import torch

from lightning.pytorch.loggers import Logger

from attn_zoo import checkpoints
from tests.helpers import ROOT, TWO_EPOCHS, as_killed, error_lines, results, run_entry_point
from tests.lightning_toys import loader


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


def _checkpointing_trainer(folder, max_epochs: int, *callbacks) -> L.Trainer:
    """A Trainer that keeps best.ckpt (by val/top1) and last.ckpt in ``folder`` as training does."""
    best = checkpoints.AtomicModelCheckpoint(
        dirpath=folder, filename="best", monitor="val/top1", mode="max", save_top_k=1, save_last=False,
        auto_insert_metric_name=False, enable_version_counter=False,
    )
    return L.Trainer(accelerator="cpu", max_epochs=max_epochs, logger=False, enable_progress_bar=False,
                     enable_model_summary=False, callbacks=[best, checkpoints.LastCheckpoint(folder), *callbacks])


def test_last_checkpoint_is_the_last_epoch_even_when_top1_drops(tmp_path):
    folder = tmp_path / "checkpoints"
    trainer = _checkpointing_trainer(folder, 3)
    trainer.fit(ScriptedTop1([50.0, 40.0, 30.0]), loader(24), loader(8))  # 3 steps an epoch
    last, best = (torch.load(folder / name, weights_only=True) for name in ("last.ckpt", "best.ckpt"))
    assert (last["epoch"], last["global_step"]) == (2, 9) and best["global_step"] == 3
    assert torch.load(folder / "previous.ckpt", weights_only=True)["global_step"] == 6
    names = sorted(path.name for path in folder.iterdir())
    assert names == ["best.ckpt", "last.ckpt", "previous.ckpt"], "no last-v1.ckpt, no temporary file left"


class StopInSecondEpoch(L.Callback):
    def on_train_batch_end(self, trainer, *args):
        if trainer.current_epoch == 1:
            trainer.should_stop = True  # as trainer.max_time does


def test_a_validation_in_an_epoch_cut_short_is_not_the_best_even_in_the_callbacks_record(tmp_path):
    """best.ckpt was not written there, but Lightning had already taken its score as the best: the
    checkpoint wandb uploads as "best" (log_model) carried the cut epoch's score."""
    folder = tmp_path / "checkpoints"
    trainer = _checkpointing_trainer(folder, 3, StopInSecondEpoch())
    trainer.fit(ScriptedTop1([50.0, 90.0, 30.0]), loader(24), loader(8))
    assert float(trainer.checkpoint_callback.best_model_score) == 50.0
    assert torch.load(folder / "best.ckpt", weights_only=True)["global_step"] == 3


class CheckpointWatcher(Logger):
    """A logger that records the checkpoint callbacks it is told about, as WandbLogger does to upload
    them (``logger.wandb.log_model``)."""

    def __init__(self):
        super().__init__()
        self.saved: list[str] = []

    name, version = "watcher", 0

    def log_metrics(self, metrics, step=None) -> None:
        pass

    def log_hyperparams(self, params, *args, **kwargs) -> None:
        pass

    def after_save_checkpoint(self, checkpoint_callback) -> None:
        self.saved.append(checkpoint_callback.best_model_path)


def test_the_loggers_hear_of_each_best_checkpoint(tmp_path):
    """WandbLogger uploads checkpoints (``log_model``) only of the callbacks it is told about: best.ckpt,
    written atomically by our own save, was never told, so ``log_model=true`` uploaded nothing."""
    folder, watcher = tmp_path / "checkpoints", CheckpointWatcher()
    trainer = _checkpointing_trainer(folder, 3)
    trainer.loggers = [watcher]
    trainer.fit(ScriptedTop1([50.0, 60.0, 30.0]), loader(24), loader(8))
    assert watcher.saved == [str(folder / "best.ckpt")] * 2  # epochs 0 and 1 improved, epoch 2 did not


class StopAfterStep(L.Callback):
    """Sets ``should_stop`` after optimiser step ``step``, as ``trainer.max_time``'s Timer does: the
    epoch under way ends early. Deterministic, where a real time budget ends wherever the clock says."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_end(self, trainer, *args) -> None:
        if trainer.global_step == self.step:
            trainer.should_stop = True


def test_no_checkpoint_is_taken_in_an_epoch_cut_short(tmp_path):
    """A checkpoint of the cut epoch 1 (step 5 of 3-step epochs) resumed the rest of it as epoch 2
    and ended a whole epoch short: last.ckpt and best.ckpt stay at epoch 0's end (step 3)."""
    folder = tmp_path / "checkpoints"
    trainer = _checkpointing_trainer(folder, 4, StopAfterStep(5))
    trainer.fit(ScriptedTop1([50.0, 60.0, 70.0, 80.0]), loader(24), loader(8))  # top-1 rises every epoch
    assert trainer.global_step == 5
    last = torch.load(folder / "last.ckpt", weights_only=True)
    assert last["global_step"] == 3 and last["loops"]["fit_loop"]["epoch_progress"]["current"]["processed"] == 1
    assert torch.load(folder / "best.ckpt", weights_only=True)["global_step"] == 3


class ScriptedSaves:
    """The part of a Trainer that ``save_atomic`` uses: each save writes a checkpoint of the next
    step, or, with ``disk_full``, half of one and then fails as a full disk does."""

    is_global_zero = True

    def __init__(self, step: int, disk_full: bool = False):
        self.step, self.disk_full = step, disk_full

    def save_checkpoint(self, path, weights_only=False) -> None:
        torch.save({"global_step": self.step}, path)
        if self.disk_full:
            path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
            raise OSError(errno.ENOSPC, "No space left on device")


def _checkpoint_at(path, step: int) -> bytes:
    torch.save({"global_step": step}, path)
    return path.read_bytes()


def test_a_truncated_last_checkpoint_never_replaces_a_whole_previous_one(tmp_path):
    previous = _checkpoint_at(tmp_path / "previous.ckpt", 1)
    last = tmp_path / "last.ckpt"
    last.write_bytes(_checkpoint_at(last, 2)[:100])  # cut short by a full disk or a kill
    checkpoints.save_atomic(ScriptedSaves(step=3), last, keep_previous=True)
    assert (tmp_path / "previous.ckpt").read_bytes() == previous
    assert torch.load(last, weights_only=True)["global_step"] == 3
    # a whole last.ckpt does move to previous.ckpt
    checkpoints.save_atomic(ScriptedSaves(step=4), last, keep_previous=True)
    assert [torch.load(tmp_path / name, weights_only=True)["global_step"] for name in ("previous.ckpt", "last.ckpt")] == [3, 4]


def test_a_disk_that_fills_during_a_save_leaves_both_checkpoints_and_no_partial_file(tmp_path):
    """The mount-based test below needs root; this one runs everywhere."""
    previous, last = (_checkpoint_at(tmp_path / name, step) for name, step in (("previous.ckpt", 1), ("last.ckpt", 2)))
    with pytest.raises(OSError, match="No space left on device"):
        checkpoints.save_atomic(ScriptedSaves(step=3, disk_full=True), tmp_path / "last.ckpt", keep_previous=True)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["last.ckpt", "previous.ckpt"]
    assert [(tmp_path / name).read_bytes() for name in ("previous.ckpt", "last.ckpt")] == [previous, last]


def test_a_truncated_last_checkpoint_falls_back_and_says_why(two_epoch_copy):
    run_copy = two_epoch_copy
    as_killed(run_copy)
    last = run_copy / "checkpoints" / "last.ckpt"
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 3])  # a disk that filled during the save
    # the newest of the others: previous.ckpt (epoch 0), or best.ckpt when epoch 1 was the best
    steps = {name: torch.load(run_copy / "checkpoints" / name, weights_only=True)["global_step"]
             for name in ("previous.ckpt", "best.ckpt")}
    newest = max(steps, key=steps.get)
    again = run_entry_point(*TWO_EPOCHS, "trainer.max_epochs=3", f"hydra.run.dir={run_copy}", cwd=run_copy.parent)
    assert again.returncode == 0, again.stderr[-2000:]
    after = results(run_copy)
    assert after["status"] == "completed" and after["resumed_from"] == str(run_copy / "checkpoints" / newest)
    assert len(after["resume_skipped"]) == 1 and after["resume_skipped"][0].startswith(f"{last} does not load")
    assert f"not resuming from {last} does not load" in again.stdout + again.stderr
    assert [row["epoch"] for row in after["history"]] == [0, 1, 2]
    # the truncated file did not replace the good previous.ckpt when the new last.ckpt was written
    assert torch.load(run_copy / "checkpoints" / "previous.ckpt", weights_only=True)["global_step"] >= steps["previous.ckpt"]


def test_resume_into_its_own_folder_extends_it_only_with_its_config(two_epoch_copy):
    """resume=<folder> continues even a completed run, with a longer trainer.max_epochs, never with
    another learning rate."""
    run_copy = two_epoch_copy
    refused = run_entry_point(*TWO_EPOCHS, f"resume={run_copy}", "optim.lr=0.01", f"hydra.run.dir={run_copy}",
                              cwd=run_copy.parent)
    assert refused.returncode == 2 and "differs in optim.lr)" in error_lines(refused)[0], refused.stderr[-2000:]
    longer = run_entry_point(*TWO_EPOCHS, f"resume={run_copy}", "trainer.max_epochs=3", f"hydra.run.dir={run_copy}",
                             cwd=run_copy.parent)
    assert longer.returncode == 0, longer.stderr[-2000:]
    assert [row["epoch"] for row in results(run_copy)["history"]] == [0, 1, 2]
    # scheduled for 2 epochs of 3 steps, rebuilt for 3 at step 6: not a run scheduled for 3 from the start
    assert results(run_copy)["max_epochs_history"] == [[0, 2], [6, 3]]
    assert torch.load(run_copy / "checkpoints" / "last.ckpt", weights_only=True)[checkpoints.RUN_RECORD][
        "max_epochs_history"] == [[0, 2], [6, 3]]


def test_resume_from_another_folder_continues_only_its_config(two_epoch_copy, tmp_path):
    """resume=<another run> into a new folder continues that run: another batch size (or learning
    rate, seed, ...) would rebuild the schedule and record a config the first epochs never had, so it
    is refused before any data loads; trainer.max_epochs may grow, as in its own folder."""
    run_copy = two_epoch_copy
    elsewhere = tmp_path / "elsewhere"
    refused = run_entry_point(*TWO_EPOCHS, f"resume={run_copy}", "data.batch_size=32", "trainer.max_epochs=3",
                              f"hydra.run.dir={elsewhere}", cwd=tmp_path)
    assert refused.returncode == 2, refused.stderr[-2000:]
    assert error_lines(refused)[0].startswith(f"error: resume: {run_copy / 'checkpoints'}")
    assert "differs in data.batch_size" in error_lines(refused)[0] and "backbone.weights" in error_lines(refused)[0]
    assert results(elsewhere)["status"] == "failed"
    longer = run_entry_point(*TWO_EPOCHS, f"resume={run_copy}", "trainer.max_epochs=3", f"hydra.run.dir={elsewhere}",
                             cwd=tmp_path)
    assert longer.returncode == 0, longer.stderr[-2000:]
    assert [row["epoch"] for row in results(elsewhere)["history"]] == [0, 1, 2]


def test_a_resumed_run_appends_to_the_metrics_log(two_epoch_copy, two_epoch_run):
    """Killed after epoch 0's checkpoint (the rows of epoch 1 written or not), resumed: the log is
    the uninterrupted run's, row for row."""
    run_copy = two_epoch_copy
    as_killed(run_copy)
    reference = (two_epoch_run / "csv" / "metrics.csv").read_bytes()  # line endings too
    shutil.copy(run_copy / "checkpoints" / "previous.ckpt", run_copy / "checkpoints" / "last.ckpt")
    (run_copy / "checkpoints" / "previous.ckpt").unlink()
    (run_copy / "checkpoints" / "best.ckpt").unlink()
    again = run_entry_point(*TWO_EPOCHS, f"hydra.run.dir={run_copy}", cwd=run_copy.parent)
    assert again.returncode == 0, again.stderr[-2000:]
    assert results(run_copy)["resumed_from"].endswith("last.ckpt")
    assert results(run_copy)["max_epochs_history"] == results(two_epoch_run)["max_epochs_history"] == [[0, 2]]
    assert (run_copy / "csv" / "metrics.csv").read_bytes() == reference
    resumed = torch.load(run_copy / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    original = torch.load(two_epoch_run / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert all(torch.equal(resumed[key], original[key]) for key in original)


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


# TWO_EPOCHS without the EMA: a checkpoint of the model and its optimiser alone
NO_EMA = (*(override for override in TWO_EPOCHS if not override.startswith("ema_decay=")), "logger=none")


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
    full = run_entry_point(*NO_EMA, f"hydra.run.dir={out}", cwd=tmp_path)
    assert full.returncode != 0 and "No space left on device" in full.stdout + full.stderr, full.stderr[-2000:]
    names = sorted(path.name for path in (out / "checkpoints").iterdir())
    assert not [name for name in names if name.endswith(".tmp")], "the partial file was left on the full disk"
    assert torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 3
    moved = tmp_path / "moved"
    shutil.copytree(out, moved)
    again = run_entry_point(*NO_EMA, f"hydra.run.dir={moved}", cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-2000:]
    assert results(moved)["resumed_from"] == str(moved / "checkpoints" / "last.ckpt")
    assert [row["epoch"] for row in results(moved)["history"]] == [0, 1]


SOURCES = [*sorted((ROOT / "attn_zoo").rglob("*.py")), *sorted((ROOT / "analysis").rglob("*.py")), ROOT / "run.py"]


@pytest.mark.parametrize("path", SOURCES, ids=lambda path: str(path.relative_to(ROOT)))
def test_checkpoints_and_pickles_are_never_loaded_unsafely(path):
    source = path.read_text()
    for call in re.finditer(r"torch\.load\(", source):
        arguments = source[call.end(): call.end() + 300]
        assert re.match(r"[^()]*(\([^()]*\)[^()]*)*weights_only=True", arguments), f"{path}: torch.load without weights_only=True"
    assert not re.search(r"\bpickle\.loads?\(|\bUnpickler\(|\bdill\.load|\bjoblib\.load\(", source), f"{path}: unpickling"
    for fit in re.finditer(r"\.fit\(", source):
        call_text = source[fit.end(): fit.end() + 200]
        if "ckpt_path" in call_text:
            assert "weights_only=True" in call_text, f"{path}: trainer.fit resumes without weights_only=True"


def test_the_best_score_so_far_follows_the_run_into_a_moved_or_new_folder(tmp_path):
    """Lightning restores its top-k state only in the folder it was saved in: after a resume elsewhere
    the first validation wrote best.ckpt whatever its top-1 (0.6 here replaced the 0.7 of epoch 80)."""
    old, new = str(tmp_path / "old" / "checkpoints"), str(tmp_path / "new" / "checkpoints")
    callback = checkpoints.AtomicModelCheckpoint(dirpath=new, filename="best", monitor="val/top1", mode="max",
                                                 save_top_k=1, enable_version_counter=False)
    saved = {"monitor": "val/top1", "best_model_score": torch.tensor(0.7), "best_model_path": f"{old}/best.ckpt",
             "current_score": torch.tensor(0.65), "dirpath": old, "best_k_models": {f"{old}/best.ckpt": torch.tensor(0.7)},
             "kth_best_model_path": f"{old}/best.ckpt", "kth_value": torch.tensor(0.7), "last_model_path": ""}
    callback.load_state_dict(saved)
    assert callback.best_model_score == torch.tensor(0.7)
    assert callback.best_k_models == {f"{new}/best.ckpt": torch.tensor(0.7)}
    assert callback.best_model_path == callback.kth_best_model_path == f"{new}/best.ckpt"
    from types import SimpleNamespace

    alone = SimpleNamespace(strategy=SimpleNamespace(reduce_boolean_decision=lambda decision, **_: decision))
    assert not callback.check_monitor_top_k(alone, torch.tensor(0.6)) and callback.check_monitor_top_k(alone, torch.tensor(0.8))


@pytest.mark.parametrize("where", ["moved_folder", "new_folder"])
def test_after_a_resume_elsewhere_best_ckpt_holds_the_epoch_results_json_calls_best(two_epoch_copy, where):
    if where == "moved_folder":
        out = shutil.move(two_epoch_copy, two_epoch_copy.parent / "moved")
        resume = out
    else:
        out, resume = two_epoch_copy.parent / "new", two_epoch_copy
    again = run_entry_point(*TWO_EPOCHS, f"resume={resume}", "trainer.max_epochs=4", f"hydra.run.dir={out}",
                            cwd=two_epoch_copy.parent)
    assert again.returncode == 0, again.stderr[-2000:]
    record = results(out)
    best_row = next(row for row in record["history"] if row["epoch"] == record["best_epoch"])
    best = torch.load(out / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=True)
    assert best["global_step"] == best_row["step"] and best["epoch"] == record["best_epoch"]


@pytest.mark.parametrize("begun_before", [False, True], ids=["begun_paired", "begun_before_pairing"])
def test_a_resumed_run_is_paired_by_seed_only_if_it_began_so(two_epoch_copy, begun_before):
    """A run begun before attention modules drew from streams of their own shares nothing with the
    other modules' runs of its seed, whatever code resumes it: summarize must not pair it."""
    if begun_before:
        for path in (two_epoch_copy / "checkpoints").glob("*.ckpt"):
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
            del checkpoint[checkpoints.RUN_RECORD]["paired_by_seed"]
            torch.save(checkpoint, path)
    again = run_entry_point(*TWO_EPOCHS, f"resume={two_epoch_copy}", "trainer.max_epochs=3",
                            f"hydra.run.dir={two_epoch_copy}", cwd=two_epoch_copy.parent)
    assert again.returncode == 0, again.stderr[-2000:]
    record = results(two_epoch_copy)
    assert record["status"] == "completed" and record["resumed_from"]
    assert record["paired_by_seed"] is (not begun_before)
    last = torch.load(two_epoch_copy / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert last[checkpoints.RUN_RECORD]["paired_by_seed"] is (not begun_before)


def test_a_resume_by_another_number_of_ddp_processes_is_refused(two_epoch_copy):
    """``trainer.devices=-1`` is the same config on 4 GPUs and on 8, and ``data.batch_size`` is per
    process: a resume with another world size changed the global batch and the schedule's length mid-run."""
    run_copy = two_epoch_copy
    last = run_copy / "checkpoints" / "last.ckpt"
    saved = torch.load(last, weights_only=True)
    assert saved[checkpoints.RUN_RECORD]["world_size"] == 1 and results(run_copy)["world_size"] == 1
    saved[checkpoints.RUN_RECORD]["world_size"] = 8  # as if trained by 8 processes
    torch.save(saved, last)
    as_killed(run_copy)
    refused = run_entry_point(*TWO_EPOCHS, f"hydra.run.dir={run_copy}", cwd=run_copy.parent)
    assert refused.returncode == 2, refused.stderr[-2000:]
    assert "the checkpoint was trained by 8 process(es) (DDP world size), this run has 1" in error_lines(refused)[0]


@pytest.mark.parametrize("loader, position, paired", [
    ("dali", True, False), ("dali", False, True), ("gpu", True, True), ("cpu", True, True), (None, True, True),
])
def test_a_dali_run_resumed_inside_an_epoch_is_no_longer_paired(loader, position, paired):
    """DALI's crop and flip generators are not checkpointed: the rest of an epoch resumed inside it
    draws augmentations the run's pair did not, and the run still said ``paired_by_seed``."""
    from attn_zoo.callbacks import LoaderPosition
    from attn_zoo.train import _paired_by_seed

    saved = {checkpoints.RUN_RECORD: {"paired_by_seed": True}, **({LoaderPosition.KEY: {"samples": 8}} if position else {})}
    assert _paired_by_seed(checkpoints.Candidate(ROOT / "last.ckpt", saved), loader) is paired
    assert _paired_by_seed(None, loader) is True
