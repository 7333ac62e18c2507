"""``TrainThroughput``: training images/s exclude validation; the epoch's wall time includes it; a
mid-epoch resume clocks the resumed epoch from its first batch and carries the earlier records and
wall time in the checkpoint."""
import logging
import os
import statistics
import time

import lightning as L
import pytest
import torch

from attn_zoo.throughput import TrainThroughput, cpu_model
from tests.lightning_toys import VALIDATION_PAUSE_S, SlowValidation, loader


class _Stopped(Exception):
    pass


class StopMidEpoch(L.Callback):
    """Save a checkpoint after epoch 1's first batch and stop, as ``GracefulStop`` does."""

    def __init__(self, path):
        self.path, self.saving_at = path, None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_index):
        if trainer.current_epoch == 1 and batch_index == 0:
            self.saving_at = time.perf_counter()
            trainer.save_checkpoint(self.path)
            raise _Stopped


def _trainer(*callbacks) -> L.Trainer:
    return L.Trainer(accelerator="cpu", max_epochs=2, logger=False, enable_checkpointing=False,
                     enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                     callbacks=list(callbacks))


def _interrupted(path) -> tuple[TrainThroughput, float]:
    """A run stopped mid-epoch 1 with its checkpoint at ``path``: (its throughput, the least wall
    time its checkpoint can hold)."""
    throughput = TrainThroughput()
    made_at, stop = time.perf_counter(), StopMidEpoch(path)
    with pytest.raises(_Stopped):
        _trainer(throughput, stop).fit(SlowValidation(), loader(32), loader(32))
    return throughput, stop.saving_at - made_at


def _resumed(path) -> tuple[TrainThroughput, float]:
    """(the throughput of a run resumed from ``path``, the seconds its ``fit`` took)."""
    throughput = TrainThroughput()
    started = time.perf_counter()
    _trainer(throughput).fit(SlowValidation(), loader(32), loader(32), ckpt_path=path)
    return throughput, time.perf_counter() - started


def test_epoch_seconds_hold_validation_and_the_rate_does_not():
    throughput = TrainThroughput()
    trainer = L.Trainer(accelerator="cpu", max_epochs=2, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                        callbacks=[throughput])
    trainer.fit(SlowValidation(), loader(32), loader(32))  # 4 training and 4 validation batches per epoch
    summary = throughput.summary()
    assert len(summary["epoch_seconds_by_epoch"]) == len(summary["train_images_per_s_by_epoch"]) == 2
    for seconds, rate in zip(summary["epoch_seconds_by_epoch"], summary["train_images_per_s_by_epoch"]):
        training_seconds = 32 / rate
        assert training_seconds < 4 * VALIDATION_PAUSE_S  # the rate's clock stopped before validation
        assert seconds >= training_seconds + 4 * VALIDATION_PAUSE_S


def test_a_validation_mid_epoch_pauses_the_rate_and_the_epoch_keeps_one_rate():
    """``val_check_interval=0.5``: two validations per epoch; the rate's clock pauses for each, and each
    epoch records one rate (it recorded one per validation, the second timed over the first's pause)."""
    throughput = TrainThroughput()
    trainer = L.Trainer(accelerator="cpu", max_epochs=2, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                        val_check_interval=0.5, callbacks=[throughput])
    trainer.fit(SlowValidation(), loader(32), loader(32))  # 4 training batches, validated after 2 and 4
    summary = throughput.summary()
    assert len(summary["train_images_per_s_by_epoch"]) == len(summary["epoch_seconds_by_epoch"]) == 2
    for seconds, rate in zip(summary["epoch_seconds_by_epoch"], summary["train_images_per_s_by_epoch"]):
        training_seconds = 32 / rate  # every training image of the epoch, in one rate
        assert training_seconds < 4 * VALIDATION_PAUSE_S  # neither validation counted
        assert seconds >= training_seconds + 8 * VALIDATION_PAUSE_S


def test_a_mid_epoch_resume_times_the_rest_of_that_epoch_and_carries_the_rest(tmp_path):
    interrupted, carried_at_least = _interrupted(tmp_path / "mid.ckpt")
    resumed, fit_seconds = _resumed(tmp_path / "mid.ckpt")
    summary = resumed.summary()
    seconds, rates = summary["epoch_seconds_by_epoch"], summary["train_images_per_s_by_epoch"]
    assert seconds[:1] == interrupted.summary()["epoch_seconds_by_epoch"] and len(seconds) == len(rates) == 2
    resumed_training_seconds = 24 / rates[1]  # the 3 batches of 8 left in epoch 1
    # the rate stops before validation, the epoch's seconds after it; both started in this process
    assert resumed_training_seconds + 4 * VALIDATION_PAUSE_S <= seconds[1] < fit_seconds
    assert resumed.wall_time_s() >= carried_at_least + fit_seconds


def test_a_checkpoint_without_the_records_resumes_counting_from_zero_and_says_so(tmp_path, caplog):
    """Checkpoints saved before the records existed still resume: the lists hold the epochs from the
    resume on (the resumed one timed from its first batch), the wall time this process's alone."""
    _interrupted(tmp_path / "mid.ckpt")
    checkpoint = torch.load(tmp_path / "mid.ckpt", weights_only=True)
    del checkpoint["callbacks"]["TrainThroughput"]
    torch.save(checkpoint, tmp_path / "old.ckpt")
    with caplog.at_level(logging.WARNING, logger="attn_zoo.throughput"):
        resumed, fit_seconds = _resumed(tmp_path / "old.ckpt")
    summary = resumed.summary()
    assert len(summary["epoch_seconds_by_epoch"]) == len(summary["train_images_per_s_by_epoch"]) == 1
    assert summary["epoch_seconds_by_epoch"][0] < fit_seconds <= resumed.wall_time_s() < fit_seconds + 1.0
    assert "holds no training time records" in caplog.text


def test_the_summary_names_the_hardware_that_gave_the_speed():
    throughput = TrainThroughput(parallel_jobs=3, loader_workers=2)
    _trainer(throughput).fit(SlowValidation(), loader(32), loader(32))
    [entry] = throughput.summary()["hardware"]
    assert entry == {"device": cpu_model(), "threads": torch.get_num_threads(), "processes": 1, "parallel_jobs": 3,
                     "loader_workers": 2, "torch": torch.__version__}
    assert entry["device"] and entry["device"] != "cpu"  # the CPU's model, not the device type


def test_a_run_resumed_on_other_hardware_lists_both(tmp_path):
    """The checkpoint carries the hardware of the process that saved it; a resume on another machine
    (here: another thread count) adds its own, in order; the same hardware again adds nothing."""
    _interrupted(tmp_path / "mid.ckpt")
    same, _ = _resumed(tmp_path / "mid.ckpt")
    assert len(same.summary()["hardware"]) == 1
    threads = torch.get_num_threads()
    torch.set_num_threads(threads + 1)
    try:
        other, _ = _resumed(tmp_path / "mid.ckpt")
    finally:
        torch.set_num_threads(threads)
    assert [entry["threads"] for entry in other.summary()["hardware"]] == [threads, threads + 1]


def test_a_resume_under_another_torch_adds_an_entry_and_an_entry_without_torch_is_the_same(tmp_path):
    """torch's version joined the record on 2026-12-07: a checkpoint saved before, resumed on the same
    machine, is the same hardware (an added entry dropped the run's speed from every table); a
    checkpoint saved under another torch is not."""
    _interrupted(tmp_path / "mid.ckpt")
    checkpoint = torch.load(tmp_path / "mid.ckpt", weights_only=True)
    [entry] = checkpoint["callbacks"]["TrainThroughput"]["hardware"]
    for name, earlier in (("before.ckpt", {k: v for k, v in entry.items() if k != "torch"}),
                          ("other.ckpt", {**entry, "torch": "2.11.0"})):
        checkpoint["callbacks"]["TrainThroughput"]["hardware"] = [earlier]
        torch.save(checkpoint, tmp_path / name)
    assert len(_resumed(tmp_path / "before.ckpt")[0].summary()["hardware"]) == 1
    other = _resumed(tmp_path / "other.ckpt")[0].summary()["hardware"]
    assert [entry.get("torch") for entry in other] == ["2.11.0", str(torch.__version__)]


def test_a_checkpoint_from_before_the_hardware_record_counts_as_unknown_hardware(tmp_path):
    _interrupted(tmp_path / "mid.ckpt")
    checkpoint = torch.load(tmp_path / "mid.ckpt", weights_only=True)
    del checkpoint["callbacks"]["TrainThroughput"]["hardware"]
    torch.save(checkpoint, tmp_path / "old.ckpt")
    resumed, _ = _resumed(tmp_path / "old.ckpt")
    assert [entry["device"] for entry in resumed.summary()["hardware"]] == ["unknown", cpu_model()]


@pytest.mark.parametrize("name, expected", [
    ("AMD EPYC 7763 64-Core Processor", "AMD EPYC 7763 64-Core Processor"),
    ("AMD EPYC", "AMD EPYC (family 25, model 17)"),  # a virtual machine's name: two generations looked alike
])
def test_a_cpu_named_without_its_model_number_is_told_apart_by_family_and_model(tmp_path, name, expected):
    cpuinfo = tmp_path / "cpuinfo"
    block = f"processor\t: {{}}\nvendor_id\t: AuthenticAMD\ncpu family\t: {{}}\nmodel\t\t: {{}}\nmodel name\t: {name}\n"
    cpuinfo.write_text(block.format(0, 25, 17) + "\n" + block.format(1, 23, 1))
    assert cpu_model(cpuinfo) == expected


class Loads:
    """A sweep's measured load, read in turn: each epoch samples it at its start and its end."""

    def __init__(self, *samples):
        self.samples = list(samples)

    def __call__(self) -> int:
        return self.samples.pop(0)


def test_the_speed_is_timed_at_the_load_the_epochs_ran_at_not_the_launchers_setting():
    """n_jobs=3, but the run trained beside one other job (its sweep had two): the record says 2 jobs
    at once. Epoch 0 (warm-up) is left out as always; an epoch whose load changed while it ran
    (a neighbour finished) is too, so the speed is the median of the epochs at load 2."""
    throughput = TrainThroughput(parallel_jobs=3, load=Loads(2, 2, 2, 2, 2, 1, 2, 2))
    trainer = L.Trainer(accelerator="cpu", max_epochs=4, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                        callbacks=[throughput])
    trainer.fit(SlowValidation(), loader(32), loader(32))
    summary = throughput.summary()
    assert summary["parallel_jobs_by_epoch"] == [2, 2, None, 2]
    rates = summary["train_images_per_s_by_epoch"]
    assert summary["train_images_per_s"] == pytest.approx((rates[1] + rates[3]) / 2)
    assert summary["hardware"][0]["parallel_jobs"] == 2
    assert throughput.hardware[0]["parallel_jobs"] == 3  # the checkpoint's entry: the setting, compared on resume


@pytest.mark.parametrize("loads, speed_from, recorded", [
    ([2, 1, 1], [1, 2], None),  # alone from epoch 1 on (the sweep's last job): no parallel_jobs at all
    ([3, 3, 3, 2, 2], [1, 2, 3, 4], 3),  # ties between loads: the fuller one
    ([None, None], [], 2),  # every later epoch's load changed: no speed
])
def test_the_load_most_later_epochs_ran_at_gives_the_speed(loads, speed_from, recorded):
    from attn_zoo.throughput import _speed_epochs

    rates = [100.0 + index for index in range(len(loads))]
    timed, load = _speed_epochs(rates, loads)
    assert timed == [rates[index] for index in speed_from if loads[index] == load]
    throughput = TrainThroughput(parallel_jobs=2)
    throughput.hardware = [{"device": "CPU", "parallel_jobs": 2, "torch": "x"}]
    throughput.epoch_rates, throughput.epoch_loads = rates, loads
    summary = throughput.summary()
    assert summary["hardware"][0].get("parallel_jobs") == recorded
    assert summary["train_images_per_s"] == (statistics.median(timed) if timed else None)


def test_a_sweep_load_counts_the_jobs_training_now_and_not_a_killed_ones_marker(tmp_path):
    import subprocess
    import sys

    from attn_zoo.throughput import SweepLoad

    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    with SweepLoad(tmp_path) as load:
        assert load() == 1
        (tmp_path / ".running" / gone.stdout.strip()).touch()  # a job killed before it removed its marker
        (tmp_path / ".running" / "notes.txt").touch()
        assert load() == 1
        (tmp_path / ".running" / str(os.getppid())).touch()  # another job training (a live process)
        assert load() == 2
    left = {path.name for path in (tmp_path / ".running").iterdir()}
    assert left == {gone.stdout.strip(), str(os.getppid()), "notes.txt"}  # this job's marker removed


def test_epochs_saved_before_loads_were_measured_take_the_load_their_own_launcher_had():
    """A single run's checkpoint (no epoch loads, hardware without parallel_jobs) resumed in a sweep of
    n_jobs=4: its epochs ran alone, not beside three others."""
    throughput = TrainThroughput(parallel_jobs=4)
    throughput.load_state_dict({"epoch_rates": [10.0, 20.0], "epoch_seconds": [1.0, 1.0], "wall_time_s": 2.0,
                                "hardware": [{"device": "CPU", "processes": 1}]})
    assert throughput.epoch_loads == [1, 1]


def test_a_sweep_load_forgets_only_dead_markers_and_an_unreadable_folder_is_an_unknown_load(tmp_path):
    import subprocess
    import sys

    from attn_zoo.throughput import SweepLoad

    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    load = SweepLoad(tmp_path)
    assert load() is None  # no folder yet: unknown, not a crash inside the training loop
    (tmp_path / ".running").mkdir()
    for name in (gone.stdout.strip(), str(os.getpid())):
        (tmp_path / ".running" / name).touch()
    load.forget_the_dead()
    assert [path.name for path in (tmp_path / ".running").iterdir()] == [str(os.getpid())]
