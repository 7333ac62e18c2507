"""A run that is stopped loses nothing: SIGKILL mid-training, then the same command resumes to the
uninterrupted run's weights; SIGTERM or SIGINT mid-epoch saves a batch-end checkpoint (the EMA of the
weights included), records why, and the same command resumes to the uninterrupted run's weights,
history and CSV log, with data loader workers too."""
import os
import signal

import pytest
import torch

from attn_zoo.callbacks import GracefulStop, LoaderPosition
from tests.helpers import TWO_EPOCHS, results, run_entry_point, signal_after_first_checkpoint

DETERMINISTIC = (
    "trainer.max_epochs=4", "trainer.limit_train_batches=3", "trainer.limit_val_batches=2",
    "trainer.deterministic=true", "trainer.enable_progress_bar=false", "logger=none", "data.batch_size=32",
)


def _weights(folder):
    return torch.load(folder / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]


@pytest.mark.parametrize("workers", [0, 2])
def test_sigkill_mid_training_then_rerun_resumes_to_the_same_result(tmp_path, workers):
    """With loader workers too: a resumed process makes a new DataLoader iterator, which must not shift
    the epoch seeds that the uninterrupted run drew after its first epoch."""
    overrides = (*DETERMINISTIC, f"data.num_workers={workers}")
    reference = run_entry_point(*overrides, f"hydra.run.dir={tmp_path / 'reference'}", cwd=tmp_path)
    assert reference.returncode == 0, reference.stderr[-2000:]

    killed_dir = tmp_path / "killed"
    # 0.3 s after the checkpoint appears: let its write finish
    signal_after_first_checkpoint(*overrides, out=killed_dir, cwd=tmp_path, signum=signal.SIGKILL, settle_s=0.3)
    assert results(killed_dir)["status"] == "running", "the run finished before it could be killed"

    resumed = run_entry_point(*overrides, f"hydra.run.dir={killed_dir}", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    after, expected = results(killed_dir), results(tmp_path / "reference")
    assert after["status"] == "completed" and after["resumed_from"].endswith("last.ckpt")
    assert [row["top1"] for row in after["history"]] == [row["top1"] for row in expected["history"]]
    assert after["top1"] == expected["top1"] and after["epochs"] == 4
    weights = [_weights(folder) for folder in (killed_dir, tmp_path / "reference")]
    for name, tensor in weights[0].items():  # deterministic: the same weights bit for bit
        assert torch.equal(tensor, weights[1][name]), name


@pytest.fixture(scope="module")
def sigterm_run(tmp_path_factory):
    """A TWO_EPOCHS run stopped by SIGTERM after its first checkpoint, then resumed by the same command:
    (its folder, exit code and stderr when stopped, results.json when stopped, last.ckpt's step when
    stopped, the resuming process)."""
    out = tmp_path_factory.mktemp("sigterm") / "run"
    # lands in epoch 1, of 3 batches: stops after its current batch
    returncode, stderr = signal_after_first_checkpoint(*TWO_EPOCHS, out=out, cwd=out.parent, signum=signal.SIGTERM)
    stopped = results(out)
    step = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)["global_step"]
    resumed = run_entry_point(*TWO_EPOCHS, f"hydra.run.dir={out}", cwd=out.parent)
    return out, returncode, stderr, stopped, step, resumed


def _assert_interrupted(folder, returncode, stderr, record, signum, epochs):
    checkpoint = folder / "checkpoints" / "last.ckpt"
    assert record["status"] == "interrupted", (record["status"], stderr[-2000:])
    assert record["interrupted_by"] == signum.name and returncode == 128 + signum
    assert f"checkpoint saved to {checkpoint}; rerun the same command to resume" in stderr
    assert record["epochs"] < epochs


def test_a_sigterm_saves_a_checkpoint_and_a_rerun_resumes(sigterm_run):
    out, returncode, stderr, stopped, _, resumed = sigterm_run
    _assert_interrupted(out, returncode, stderr, stopped, signal.SIGTERM, epochs=2)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    after = results(out)
    assert after["status"] == "completed" and after["resumed_from"] == str(out / "checkpoints" / "last.ckpt")
    assert [row["epoch"] for row in after["history"]] == [0, 1]


def test_a_sigint_saves_a_checkpoint(tmp_path):
    """The same checkpoint as SIGTERM's: resuming it is checked once, for SIGTERM."""
    out = tmp_path / "run"
    returncode, stderr = signal_after_first_checkpoint(*TWO_EPOCHS, out=out, cwd=tmp_path, signum=signal.SIGINT)
    _assert_interrupted(out, returncode, stderr, results(out), signal.SIGINT, epochs=2)


def test_sigterm_mid_epoch_resumes_to_the_same_weights_and_log(sigterm_run, two_epoch_run):
    out, returncode, stderr, _, step, resumed = sigterm_run
    assert returncode == 143, stderr[-2000:]
    assert step % 3 != 0, f"precondition: interrupted mid-epoch (step {step})"
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    # Lightning cannot see that LoaderPosition resumes the order, and says the results are unreliable
    assert "dataloader is not resumable" not in resumed.stderr
    after, expected = results(out), results(two_epoch_run)
    assert after["history"] == expected["history"]
    # bytes, not text: reading text would turn the native \r\n into \n and hide mixed line endings
    assert (out / "csv" / "metrics.csv").read_bytes() == (two_epoch_run / "csv" / "metrics.csv").read_bytes()
    weights = [_weights(folder) for folder in (out, two_epoch_run)]
    assert all(torch.equal(weights[0][key], weights[1][key]) for key in weights[1])


def test_a_mid_epoch_resume_times_every_epoch_and_the_whole_run(sigterm_run):
    """Lightning does not start a resumed epoch (no ``on_train_epoch_start``): its clock starts at
    the resumed process's first batch. The earlier epochs' records and the interrupted process's
    wall time come from the checkpoint."""
    out, _, _, stopped, _, resumed = sigterm_run
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    after = results(out)
    seconds, rates = after["epoch_seconds_by_epoch"], after["train_images_per_s_by_epoch"]
    assert len(seconds) == len(rates) == 2
    assert seconds[0] == stopped["epoch_seconds_by_epoch"][0] and rates[0] == stopped["train_images_per_s_first_epoch"]
    assert 0 < sum(seconds) < after["wall_time_s"]
    assert all(rate * after["wall_time_s"] > 64 for rate in rates)  # at least one batch of 64 in the run's time
    # the interrupted process's time up to its checkpoint counts (its own record adds its stopping, < 1 s)
    assert after["wall_time_s"] > stopped["wall_time_s"] - 1.0 + seconds[1]


@pytest.mark.parametrize("loader", [("data.num_workers=2",), ("data.loader=gpu",)], ids=["workers", "device_resident"])
def test_sigterm_mid_epoch_with_another_loader_resumes_to_the_same_weights(tmp_path, loader):
    """Worker processes augment with random states of their own; each sample's augmentation is seeded
    from the epoch's seed and the sample's index, so it is the same whichever worker draws it, when.
    The device-resident loader (on the CPU here) takes the same sampler's order and draws an epoch's
    crops from a generator seeded with the epoch's seed."""
    from attn_zoo.config import compose
    from attn_zoo.train import run

    overrides = (*TWO_EPOCHS, *loader, "logger=none")
    reference = tmp_path / "reference"  # in-process: the same computation as run.py's, without its start-up
    assert run(compose([*overrides, f"paths.output_dir={reference}"]))["status"] == "completed"
    out = tmp_path / "interrupted"
    returncode, stderr = signal_after_first_checkpoint(*overrides, out=out, cwd=tmp_path, signum=signal.SIGTERM)
    assert returncode == 143, stderr[-2000:]
    step = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)["global_step"]
    assert step % 3 != 0, f"precondition: interrupted mid-epoch (step {step})"
    resumed = run_entry_point(*overrides, f"hydra.run.dir={out}", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert results(out)["history"] == results(reference)["history"]
    weights = [_weights(folder) for folder in (out, reference)]
    assert all(torch.equal(weights[0][key], weights[1][key]) for key in weights[1])


def test_sigterm_mid_epoch_with_ema_resumes_the_average_too(sigterm_run, two_epoch_run):
    """The EMA update is part of the step, so a batch-end checkpoint holds it."""
    out, *_, resumed = sigterm_run
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    states = [_weights(folder) for folder in (two_epoch_run, out)]
    averaged = [key for key in states[0] if key.startswith("ema.")]
    assert averaged and all(torch.equal(states[0][key], states[1][key]) for key in averaged)
    assert results(out)["ema_top1"] == results(two_epoch_run)["ema_top1"]


def _signal_at_step_then_resume(monkeypatch, cfg, step: int, signum: int = signal.SIGTERM) -> dict:
    """Run ``cfg`` in this process with ``signum`` to itself in global step ``step`` (the stop's
    hand-over, ``RunInterrupted.then``, called as run.py does), then resume it by the same call to
    completion; the stopped run's results.json."""
    from pathlib import Path

    from attn_zoo.callbacks import RunInterrupted
    from attn_zoo.lit import Classifier
    from attn_zoo.train import run

    training_step = Classifier.training_step

    def signal_in_the_step(self, batch, batch_index):
        if self.global_step == step:
            os.kill(os.getpid(), signum)
        return training_step(self, batch, batch_index)

    monkeypatch.setattr(Classifier, "training_step", signal_in_the_step)
    with pytest.raises(RunInterrupted) as stop:
        run(cfg)
    if stop.value.then is not None:
        stop.value.then(stop.value.signum, None)
    stopped = results(Path(cfg.paths.output_dir))
    monkeypatch.setattr(Classifier, "training_step", training_step)
    assert run(cfg)["status"] == "completed"
    return stopped


def _same_weights(folder, reference) -> bool:
    weights = [_weights(run) for run in (folder, reference)]
    return all(torch.equal(weights[0][key], weights[1][key]) for key in weights[1])


def test_a_signal_in_an_epochs_last_batch_stops_after_that_epochs_validation(tmp_path, monkeypatch, two_epoch_run):
    """A checkpoint taken after an epoch's last batch but before its validation resumes past that
    validation: the epoch would have no row. The stop waits for the epoch's end (in-process runs)."""
    from attn_zoo.config import compose

    cfg = compose([*TWO_EPOCHS, f"paths.output_dir={tmp_path}"])
    stopped = _signal_at_step_then_resume(monkeypatch, cfg, step=2)  # epoch 0's third and last batch
    assert stopped["status"] == "interrupted" and [row["epoch"] for row in stopped["history"]] == [0]
    assert results(tmp_path)["history"] == results(two_epoch_run)["history"]
    assert _same_weights(tmp_path, two_epoch_run)


def test_a_signal_in_a_batch_before_a_mid_epoch_validation_stops_after_that_validation(tmp_path, monkeypatch):
    """With ``val_check_interval`` < 1 a validation runs after some mid-epoch batches; a checkpoint
    taken at such a batch's end resumes past that validation (its row would be missing). The stop
    waits one batch: the history and weights equal the uninterrupted run's (in-process runs)."""
    from attn_zoo.config import compose
    from attn_zoo.train import run

    overrides = [*TWO_EPOCHS, "trainer.limit_train_batches=4", "+trainer.val_check_interval=0.5"]
    reference = tmp_path / "reference"
    assert run(compose([*overrides, f"paths.output_dir={reference}"]))["status"] == "completed"
    assert len(results(reference)["history"]) == 4, "precondition: two validations an epoch"
    cfg = compose([*overrides, f"paths.output_dir={tmp_path / 'run'}"])
    # epoch 0's second batch, validated after (every 2 of 4 batches)
    stopped = _signal_at_step_then_resume(monkeypatch, cfg, step=1)
    assert stopped["status"] == "interrupted" and len(stopped["history"]) == 1
    assert results(tmp_path / "run")["history"] == results(reference)["history"]
    assert _same_weights(tmp_path / "run", reference)


def test_a_signal_mid_accumulation_stops_at_the_optimiser_step(tmp_path, monkeypatch):
    """Under gradient accumulation a checkpoint between two micro-batches loses the accumulated
    gradients (``.grad`` is not saved): the resumed step used the later micro-batches alone. The stop
    waits for the step; the history and weights equal the uninterrupted run's (in-process runs)."""
    from attn_zoo.config import compose
    from attn_zoo.train import run

    overrides = [*TWO_EPOCHS, "trainer.limit_train_batches=4", "+trainer.accumulate_grad_batches=2"]
    reference = tmp_path / "reference"
    assert run(compose([*overrides, f"paths.output_dir={reference}"]))["status"] == "completed"
    cfg = compose([*overrides, f"paths.output_dir={tmp_path / 'run'}"])
    stopped = _signal_at_step_then_resume(monkeypatch, cfg, step=0)  # in the first micro-batch
    assert stopped["status"] == "interrupted" and not stopped.get("history")
    assert results(tmp_path / "run")["history"] == results(reference)["history"]
    assert _same_weights(tmp_path / "run", reference)


def test_a_requeue_signal_under_submitit_saves_at_the_batch_end_then_hands_over(tmp_path, monkeypatch):
    """Under hydra-submitit-launcher SLURM sends SIGUSR2 (submitit's ``--signal``) before the time
    limit, and submitit's handler requeues the job and exits at once: the requeued job lost the epoch
    since the last epoch end. A handler found installed for SIGUSR1/SIGUSR2 when training starts is now
    called after GracefulStop saved at the batch end (here a stand-in for submitit's), and results.json
    says interrupted by SIGUSR2; the resumed run equals the uninterrupted one."""
    import signal as signals

    from attn_zoo.config import compose
    from attn_zoo.train import run

    overrides = [*TWO_EPOCHS, "trainer.limit_train_batches=4"]
    reference = tmp_path / "reference"
    assert run(compose([*overrides, f"paths.output_dir={reference}"]))["status"] == "completed"
    calls = []

    def submitit_requeue(signum, frame):
        calls.append((signum, torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)["global_step"]))

    submitit_requeue.__module__ = "submitit.core.job_environment"  # where SignalHandler lives

    previous = signals.signal(signals.SIGUSR2, submitit_requeue)
    try:
        cfg = compose([*overrides, f"paths.output_dir={tmp_path / 'run'}"])
        stopped = _signal_at_step_then_resume(monkeypatch, cfg, step=5, signum=signals.SIGUSR2)
    finally:
        signals.signal(signals.SIGUSR2, previous)
    assert stopped["status"] == "interrupted" and stopped["interrupted_by"] == "SIGUSR2"
    assert calls == [(signals.SIGUSR2, 6)]  # after the checkpoint of step 5's batch end (epoch 1, mid-way)
    assert results(tmp_path / "run")["history"] == results(reference)["history"]
    assert _same_weights(tmp_path / "run", reference)

def test_a_sigterm_after_submitits_sigusr2_still_hands_over_to_its_requeue():
    """SLURM may send SIGTERM while the stop waits for a batch end: the requeue SIGUSR2 asked for counts."""
    import signal as signals

    from attn_zoo.callbacks import GracefulStop

    def submitit_requeue(signum, frame):
        pass

    submitit_requeue.__module__ = "submitit.core.job_environment"
    previous = signals.signal(signals.SIGUSR2, submitit_requeue)
    stop = GracefulStop(None)
    try:
        stop.on_train_start(None, None)
        stop._request_stop(signals.SIGUSR2, None)
        stop._request_stop(signals.SIGTERM, None)
        assert stop.received == signals.SIGTERM and stop.requeue_handler() is submitit_requeue
    finally:
        stop.teardown(None, None, "fit")
        signals.signal(signals.SIGUSR2, previous)


def test_after_training_the_handlers_from_before_lightning_are_back():
    """Lightning installs its SIGTERM handler after ``on_fit_start`` and restores the one from before
    in its teardown, which runs before the callbacks'; the stop put back what it found at
    ``on_train_start``, Lightning's, which stayed installed after fit: under DDP its handler
    broadcasts from inside the signal handler on the one rank that got the signal."""
    import signal as signals

    from attn_zoo.callbacks import GracefulStop

    def before(signum, frame):
        pass

    def lightnings(signum, frame):
        pass

    previous = signals.signal(signals.SIGTERM, before)
    stop = GracefulStop(None)
    try:
        stop.on_fit_start(None, None)
        signals.signal(signals.SIGTERM, lightnings)  # register_signal_handlers
        stop.on_train_start(None, None)
        signals.signal(signals.SIGTERM, before)  # Lightning's _teardown, before the callbacks' teardown
        stop.teardown(None, None, "fit")
        assert signals.getsignal(signals.SIGTERM) is before
    finally:
        signals.signal(signals.SIGTERM, previous)


def test_with_a_validation_after_every_batch_the_stop_waits_one_batch_only(tmp_path, monkeypatch):
    """The stop waits for a due mid-epoch validation once: with one after every batch it waited for the
    epoch's end, past a launcher's or SLURM's grace before SIGKILL."""
    from attn_zoo.config import compose

    cfg = compose([*TWO_EPOCHS, "trainer.limit_train_batches=4", "+trainer.val_check_interval=1",
                   "trainer.limit_val_batches=1", f"paths.output_dir={tmp_path}"])
    steps = []
    monkeypatch.setattr(GracefulStop, "resume_point", lambda self: steps.append(
        torch.load(self.checkpoint, weights_only=True)["global_step"]) or str(self.checkpoint))
    stopped = _signal_at_step_then_resume(monkeypatch, cfg, step=1)
    assert stopped["status"] == "interrupted" and steps == [3]  # saved after batch 2, not at the epoch end (4)


def test_another_programs_sigusr1_handler_keeps_its_signal():
    """Only submitit's handler is taken over: a stack dump on SIGUSR1 (say) still dumps."""
    import signal as signals

    from attn_zoo.callbacks import GracefulStop

    def dump_stacks(signum, frame):
        pass

    previous = signals.signal(signals.SIGUSR1, dump_stacks)
    stop = GracefulStop(None)
    try:
        stop.on_train_start(None, None)
        assert signals.getsignal(signals.SIGUSR1) is dump_stacks and signals.getsignal(signals.SIGTERM) == stop._request_stop
    finally:
        stop.teardown(None, None, "fit")
        signals.signal(signals.SIGUSR1, previous)

def test_an_interrupted_run_in_a_default_folder_names_the_folder_a_rerun_resumes_in(tmp_path):
    """The default output folder is new for every command (a timestamp): "rerun the same command"
    started over in another folder. The message names the folder; that command resumes."""
    import re
    import time

    from tests.helpers import RunPy

    overrides = (*TWO_EPOCHS, "trainer.limit_train_batches=8")  # 7 batches of epoch 1 for the signal to land in
    process = RunPy(*overrides, cwd=tmp_path)
    deadline = time.time() + 300
    while not list(tmp_path.glob("outputs/*/*/checkpoints/last.ckpt")) and time.time() < deadline:
        time.sleep(0.02)
    process.send_signal(signal.SIGTERM)
    stopped = process.wait(timeout=120)
    folder = next(tmp_path.glob("outputs/*/*"))
    assert stopped.returncode == 143, stopped.stderr[-2000:]
    assert f"rerun the same command with hydra.run.dir={folder} to resume" in stopped.stderr
    rerun = re.search(r"hydra\.run\.dir=(\S+)", stopped.stderr).group(0)
    resumed = run_entry_point(*overrides, rerun, cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert results(folder)["status"] == "completed" and results(folder)["resumed_from"].endswith("last.ckpt")
    assert len(list(tmp_path.glob("outputs/*/*"))) == 1


def _run_py(monkeypatch, mode="RUN", hydra_config=None):
    """run.py as a module, its ``HydraConfig`` ``hydra_config`` (default: a single run into a named folder)."""
    import importlib.util

    from hydra.types import RunMode
    from omegaconf import OmegaConf

    from tests.helpers import ROOT

    spec = importlib.util.spec_from_file_location("run_py", ROOT / "run.py")
    run_py = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(run_py)
    hydra_config = OmegaConf.create(hydra_config or {"overrides": {"hydra": ["hydra.run.dir=mine"]}})
    hydra_config.mode = RunMode[mode]  # an enum: set after create, which would take it as a string
    monkeypatch.setattr(run_py.HydraConfig, "get", staticmethod(lambda: hydra_config))
    return run_py


@pytest.mark.parametrize("shared, rank, code", [(True, "1", 0), (False, "1", 143), (True, "0", 143)])
def test_a_further_ddp_rank_exits_0_only_after_a_stop_every_rank_shared(monkeypatch, shared, rank, code):
    """A rank stopped alone (a SIGTERM to it while the data loaded) that exited 0 let rank 0 wait for it
    in the next collective (30 min); one that stopped with every rank after the same batch exits 0, so
    Lightning's launcher does not kill rank 0 while it reports the stop."""
    from attn_zoo import train
    from attn_zoo.callbacks import RunInterrupted

    run_py = _run_py(monkeypatch)
    monkeypatch.setenv("LOCAL_RANK", rank)

    def stopped(cfg):
        raise RunInterrupted(signal.SIGTERM, shared=shared)

    monkeypatch.setattr(train, "run", stopped)
    with pytest.raises(SystemExit) as end:
        run_py._job(None)
    assert end.value.code == code


@pytest.mark.parametrize("mode,hydra_overrides,expected", [
    ("RUN", [], "rerun the same command with hydra.run.dir=/w/outputs/2026-12-06/01-02-03-000004"),
    ("RUN", ["hydra.run.dir=mine"], "rerun the same command"),
    ("MULTIRUN", [], "rerun the same command with hydra.sweep.dir=/w/multirun/2026-12-06/01-02-03-000004"),
    ("MULTIRUN", ["hydra.sweep.dir=mine"], "rerun the same command"),
])
def test_the_rerun_a_stopped_run_names_is_into_its_own_folder(monkeypatch, mode, hydra_overrides, expected):
    """A sweep resumes when rerun into its sweep folder (each job's folder is its number there)."""
    run_py = _run_py(monkeypatch, mode, {
        "overrides": {"hydra": hydra_overrides}, "sweep": {"dir": "/w/multirun/2026-12-06/01-02-03-000004"},
        "runtime": {"output_dir": "/w/outputs/2026-12-06/01-02-03-000004" if mode == "RUN" else "/w/multirun/x/0"},
    })
    assert run_py._rerun() == expected

DDP_RUN = (
    "trainer=debug", "logger=none", "trainer.devices=2", "trainer.strategy=ddp", "data=synthetic", "data.num_samples=2048",
    "data.batch_size=16", "trainer.max_epochs=2", "trainer.limit_train_batches=1.0", "trainer.limit_val_batches=1",
    "trainer.enable_progress_bar=false", "seed=3",
)


# to rank 0 also resumes and compares with an uninterrupted run: three DDP runs, about 80 s (make test-slow)
@pytest.mark.parametrize("rank", [pytest.param(0, marks=pytest.mark.slow), 1], ids=["to_rank_0", "to_rank_1_alone"])
def test_sigterm_under_ddp_stops_every_rank_after_the_same_batch_and_saves_there(tmp_path, rank):
    """Under DDP a SIGTERM left the last epoch-end checkpoint as the resume point (up to an epoch of
    work lost; on ImageNet, hours) and said "start again"; one that reached another rank alone
    stopped that rank only. The ranks now share the signal at each batch end and all save and stop
    after the same batch; resumed, the run ends with the uninterrupted run's weights."""
    out = tmp_path / "interrupted"
    # as soon as epoch 0's checkpoint exists: the first batches of epoch 1, of 64 a rank (a fixed wait
    # of 1 s could outlast the epoch on a fast machine)
    returncode, stderr = signal_after_first_checkpoint(*DDP_RUN, out=out, cwd=tmp_path, signum=signal.SIGTERM,
                                                       rank=rank)
    _assert_interrupted(out, returncode, stderr, results(out), signal.SIGTERM, epochs=2)
    assert stderr.count("interrupted by SIGTERM") == 1, stderr[-2000:]  # said once, not by each process
    saved = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)
    assert 64 < saved["global_step"] < 128, f"saved at step {saved['global_step']}: not inside epoch 1"
    assert saved[LoaderPosition.KEY]["samples"] == (saved["global_step"] - 64) * 16  # each rank's share drawn so far
    if rank != 0:
        return  # resuming is the same as below
    reference = tmp_path / "reference"
    completed = run_entry_point(*DDP_RUN, f"hydra.run.dir={reference}", cwd=tmp_path)
    assert completed.returncode == 0, completed.stderr[-2000:]
    resumed = run_entry_point(*DDP_RUN, f"hydra.run.dir={out}", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    after = results(out)
    assert after["status"] == "completed" and after["history"] == results(reference)["history"]
    weights = [_weights(folder) for folder in (out, reference)]
    assert all(torch.equal(weights[0][key], weights[1][key]) for key in weights[1])


# what SLURM sets for a one-task job (Lightning's SLURMEnvironment.detect and its task layout)
SLURM_JOB = {"SLURM_NTASKS": "1", "SLURM_NTASKS_PER_NODE": "1", "SLURM_JOB_NAME": "train", "SLURM_JOB_ID": "7",
             "SLURM_NODELIST": "localhost", "SLURM_PROCID": "0", "SLURM_LOCALID": "0", "SLURM_NODEID": "0"}


def test_under_slurm_a_new_run_does_not_take_a_lightning_hpc_checkpoint_it_finds(tmp_path, two_epoch_run):
    """Lightning, under SLURM, starts a run given no checkpoint from the newest ``hpc_ckpt_*.ckpt`` in
    its ``default_root_dir``, which was the folder the sweep was launched from, shared by all its
    jobs, where its own SIGUSR1 handler saves one: a new job continued another run's weights, past
    every config check. Runs now keep Lightning's files in their own folder, and Lightning's SLURM
    requeue (and its hpc checkpoint) is off: a preempted job resumes from its own last.ckpt."""
    import shutil

    shutil.copy(two_epoch_run / "checkpoints" / "last.ckpt", tmp_path / "hpc_ckpt_1.ckpt")  # seed 3's weights
    out = tmp_path / "run"
    overrides = [*(o for o in TWO_EPOCHS if not o.startswith("seed=")), "seed=4", f"hydra.run.dir={out}"]
    completed = run_entry_point(*overrides, cwd=tmp_path, env={**os.environ, **SLURM_JOB})
    assert completed.returncode == 0, completed.stderr[-2000:]
    assert "hpc_ckpt" not in completed.stdout + completed.stderr
    record = results(out)
    assert record["status"] == "completed" and "resumed_from" not in record
    assert [row["epoch"] for row in record["history"]] == [0, 1]
    assert not torch.equal(*(_weights(folder)["model.head.weight"] for folder in (out, two_epoch_run)))


def test_the_interrupt_message_says_which_checkpoint_a_rerun_resumes_from():
    """A stop Lightning handled (before training began, or Ctrl-C's second press) saved nothing now:
    the message said "start again" though the rerun resumes from the last epoch end."""
    from attn_zoo.callbacks import RunInterrupted

    assert str(RunInterrupted(signal.SIGTERM, "/r/last.ckpt")) == (
        "interrupted by SIGTERM; checkpoint saved to /r/last.ckpt; rerun the same command to resume")
    assert str(RunInterrupted(signal.SIGINT, "/r/last.ckpt", saved_now=False)) == (
        "interrupted by SIGINT; rerun the same command to resume from /r/last.ckpt (saved earlier)")
    assert str(RunInterrupted(signal.SIGTERM)) == "interrupted by SIGTERM; rerun the same command to start again"


@pytest.mark.parametrize("environment, zero", [
    ({}, True),
    (SLURM_JOB, True),
    # srun's second task of a 2-task DDP job: submitit and srun set no LOCAL_RANK (every task took
    # itself for rank 0 and claimed the folder: all but one failed "in use by a running job")
    ({**SLURM_JOB, "SLURM_NTASKS": "2", "SLURM_PROCID": "1", "SLURM_LOCALID": "1"}, False),
    ({"LOCAL_RANK": "1"}, False),  # a process Lightning started
    ({"LOCAL_RANK": "0", "NODE_RANK": "1"}, False),
    ({"RANK": "3", "LOCAL_RANK": "0"}, False),  # torchrun, a second node's first process
    ({**SLURM_JOB, "LOCAL_RANK": "1"}, False),  # Lightning's process under a one-task SLURM job
], ids=["alone", "slurm_task_0", "slurm_task_1", "lightning_rank_1", "node_1", "torchrun_rank_3", "slurm_one_task_rank_1"])
def test_only_the_first_process_of_any_launcher_holds_the_run_folder(monkeypatch, environment, zero):
    from attn_zoo.train import RANK_VARIABLES, _is_rank_zero

    for name in RANK_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    assert _is_rank_zero() is zero
