"""The launchers (conf/hydra/launcher): ``hydra/launcher=parallel`` runs the jobs of a sweep in n_jobs
worker processes at once (joblib's loky workers, each taking the next job when it finishes one);
``hydra/launcher=slurm`` is one file to edit."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from attn_zoo.config import compose
from tests.helpers import QUICK, ROOT, results, run_entry_point


def test_two_jobs_at_once_each_write_their_own_complete_results(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher")
    sweep = tmp_path / "sweep"
    completed = run_entry_point(
        "-m", "hydra/launcher=parallel", "hydra.launcher.n_jobs=2", *QUICK, "attention=none,se", "optim.lr=0.1,-1",
        f"hydra.sweep.dir={sweep}", cwd=tmp_path,
    )
    records = {folder.name: results(folder) for folder in sweep.iterdir() if folder.is_dir()}
    assert sorted(records) == ["0", "1", "2", "3"]
    by_job = {(r["attention"], r["config"]["optim"]["lr"]): r for r in records.values()}
    for attention in ("none", "se"):
        good, bad = by_job[(attention, 0.1)], by_job[(attention, -1)]
        assert good["status"] == "completed" and good["epochs"] == 1 and good["params"] > 0
        assert bad["status"] == "failed" and "lr" in bad["error"]
    assert len({r["pid"] for r in records.values()}) == 2  # n_jobs worker processes, each taking the next job
    # each speed says how many jobs shared the machine as it was timed (measured: the two may not overlap)
    for record in records.values():
        if record["status"] == "completed":
            [load] = record["parallel_jobs_by_epoch"]  # one epoch: None where the other job began or ended in it
            assert load in {1, 2, None}
            if load is None:
                assert record["train_images_per_s"] is None  # no load it ran at throughout: no speed
            else:
                assert record["hardware"][0].get("parallel_jobs", 1) == load and record["train_images_per_s"] > 0
    assert not (sweep / ".running").exists()  # each job's marker gone with it, the folder with the last
    assert completed.returncode != 0  # the failed jobs fail the sweep at its end
    assert "error:" in completed.stderr


def test_a_job_that_trained_alone_does_not_record_the_launchers_n_jobs(tmp_path):
    """A sweep of one training job (the other fails before training) under n_jobs=2: nothing shared
    the machine, and its speed must compare with single runs, not with runs timed beside another."""
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher")
    sweep = tmp_path / "sweep"
    run_entry_point("-m", "hydra/launcher=parallel", "hydra.launcher.n_jobs=2", *QUICK, "optim.lr=0.1,-1",
                    f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    record = results(sweep / "0")
    assert record["status"] == "completed" and record["parallel_jobs_by_epoch"] == [1]
    assert "parallel_jobs" not in record["hardware"][0] and record["train_images_per_s"] > 0


def test_a_sweep_that_would_start_its_own_ddp_processes_is_refused(tmp_path):
    """Lightning starts DDP's further ranks by rerunning the command line: from a sweep, each rank
    would run every job of the sweep again. Refused per job before training; each job's results.json
    says why."""
    sweep = tmp_path / "sweep"
    completed = run_entry_point("-m", *QUICK, "trainer.devices=2", "trainer.strategy=ddp", "attention=none,se",
                                f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    assert completed.returncode != 0 and "cannot start DDP's 2 processes" in completed.stderr
    records = [results(sweep / job) for job in ("0", "1")]
    assert [record["status"] for record in records] == ["failed", "failed"]
    assert all("hydra/launcher=slurm" in record["error"] for record in records)
    assert sorted(path.name for path in sweep.iterdir()) == ["0", "1", "multirun.yaml"]  # no rank's own sweep


TINY = ("trainer=cpu", "data=embedded", "trainer.limit_train_batches=2", "trainer.limit_val_batches=1", "logger=csv")


def _ctrl_c(sweep, *overrides: str, when) -> subprocess.CompletedProcess:
    """A parallel sweep (2 workers) of ``overrides`` into ``sweep``, sent SIGINT as a terminal's Ctrl-C
    sends it (to the whole process group) once ``when()`` holds; its exit code and stderr."""
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher")
    process = subprocess.Popen(
        [sys.executable, str(ROOT / "run.py"), "-m", "hydra/launcher=parallel", "hydra.launcher.n_jobs=2", *TINY,
         *overrides, f"hydra.sweep.dir={sweep}"],
        cwd=sweep.parent, env={**os.environ, "OMP_NUM_THREADS": "1"}, start_new_session=True,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 240
        while not when():
            assert process.poll() is None and time.monotonic() < deadline, "the jobs never got there"
            time.sleep(0.5)
        time.sleep(1)  # a worker whose job ended back in its queue
        os.killpg(process.pid, signal.SIGINT)
        _, stderr = process.communicate(timeout=240)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    return subprocess.CompletedProcess(process.args, process.returncode, "", stderr)


def _status(run) -> str | None:
    return json.loads((run / "results.json").read_text())["status"] if (run / "results.json").is_file() else None


def test_ctrl_c_stops_a_parallel_sweep_with_every_running_job_saved_and_no_new_one(tmp_path):
    """Ctrl-C (SIGINT to the process group): each running job saves and ends interrupted, the queued
    job never begins, and the sweep exits 130. Before, the first job to end called sys.exit, which
    made joblib kill the other worker mid-save (its results.json left `running`)."""
    sweep = tmp_path / "sweep"
    completed = _ctrl_c(sweep, "trainer.max_epochs=1000", "attention=none,se,eca",
                        when=lambda: all((sweep / job / "checkpoints" / "last.ckpt").is_file() for job in ("0", "1")))
    assert completed.returncode == 130, completed.stderr[-3000:]
    for job in ("0", "1"):
        record = json.loads((sweep / job / "results.json").read_text())
        assert record["status"] == "interrupted" and record["interrupted_by"] == "SIGINT", (job, record.get("error"))
    assert not (sweep / "2" / "results.json").exists()  # stopped before it began


def test_ctrl_c_while_a_worker_is_idle_still_lets_the_busy_one_save(tmp_path):
    """Job 0 (one epoch) ends and its worker waits for work; job 1 trains on. A Ctrl-C reached the idle
    worker as a KeyboardInterrupt, and joblib then killed the busy one mid-save; now a worker ignores
    signals between jobs."""
    sweep = tmp_path / "sweep"
    completed = _ctrl_c(sweep, "trainer.max_epochs=1,1000",
                        when=lambda: (sweep / "1" / "checkpoints" / "last.ckpt").is_file()
                        and _status(sweep / "0") == "completed")
    assert completed.returncode == 130, completed.stderr[-3000:]
    assert _status(sweep / "1") == "interrupted"


def test_slurm_launcher_is_one_file_to_edit():
    cfg = compose(["hydra/launcher=slurm", "trainer=ddp", "trainer.num_nodes=2"], hydra_config=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert launcher.nodes == 2 and launcher.timeout_min == 1440 and launcher.signal_delay_s == 120


def test_a_parallel_sweep_removes_an_earlier_stop_and_a_second_signal_stops_at_once(tmp_path, monkeypatch):
    from attn_zoo import run_folder

    handlers = {}
    monkeypatch.setattr(signal, "signal", lambda signum, handler: handlers.__setitem__(signum, handler))
    for key in (run_folder.SWEEP_STOP_ENV, run_folder.SWEEP_LAUNCHER_ENV):
        monkeypatch.setenv(key, "")  # unset, and restored after the test (the function sets them)
    monkeypatch.setitem(run_folder.parallel_sweep_stop, "signum", None)
    monkeypatch.setitem(run_folder.parallel_sweep_stop, "file", None)
    (tmp_path / ".stop").touch()  # the sweep was stopped before: its rerun must begin its jobs
    run_folder.stop_parallel_sweep_on_signal(tmp_path)
    assert os.environ[run_folder.SWEEP_STOP_ENV] == str(tmp_path / ".stop") and not run_folder.sweep_stopped()
    assert not run_folder.in_worker_process()  # the launching process: a worker is another one
    handlers[signal.SIGTERM](signal.SIGTERM, None)
    assert run_folder.sweep_stopped() and run_folder.parallel_sweep_stop["signum"] == signal.SIGTERM
    with pytest.raises(KeyboardInterrupt):
        handlers[signal.SIGINT](signal.SIGINT, None)
    monkeypatch.setenv(run_folder.SWEEP_STOP_ENV, str(tmp_path / "reproduce.stop"))  # reproduce's own stop
    handlers.clear()
    run_folder.stop_parallel_sweep_on_signal(tmp_path / "other")
    assert handlers == {}


def test_only_a_joblib_launcher_with_more_than_one_job_runs_jobs_in_workers():
    """joblib runs an n_jobs of 1 in the launching process: a Ctrl-C there must end the sweep with
    sys.exit, as under the basic launcher, not record the job and go on to the next."""
    from attn_zoo.run_folder import parallel_jobs

    joblib = "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher"
    assert [parallel_jobs({"_target_": joblib, "n_jobs": n}) for n in (1, 2, 4)] == [1, 2, 4]
    assert parallel_jobs({"_target_": joblib, "n_jobs": -1}) == len(os.sched_getaffinity(0))
    assert parallel_jobs({"_target_": "hydra._internal.core_plugins.basic_launcher.BasicLauncher"}) == 1
    assert parallel_jobs({"_target_": "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher",
                          "n_jobs": 4}) == 1
