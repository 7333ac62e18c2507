"""The launchers (conf/hydra/launcher): ``hydra/launcher=parallel`` runs the jobs of a sweep in n_jobs
worker processes at once (joblib's loky workers, each taking the next job when it finishes one);
``hydra/launcher=slurm`` is one file to edit."""
import pytest

from attn_zoo.config import compose
from tests.helpers import QUICK, results, run_entry_point


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


def test_slurm_launcher_is_one_file_to_edit():
    cfg = compose(["hydra/launcher=slurm", "trainer=ddp", "trainer.num_nodes=2"], hydra_config=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert launcher.nodes == 2 and launcher.timeout_min == 1440 and launcher.signal_delay_s == 120
