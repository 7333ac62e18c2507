"""A run folder holds one config and one history (``attn_zoo.run_folder``, issue 17): a completed
folder is never rewritten, a changed config never continues a run, divergence is final, and the
folder claim is a kernel lock that one run at a time holds."""
import fcntl
import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest

from attn_zoo import run_folder
from attn_zoo.config_check import ConfigError
from tests.helpers import QUICK, ROOT, TWO_EPOCHS, RunPy, as_killed, error_lines, hold_lock, results, run_entry_point

# ---------------------------------------------------------------- a completed folder, another config


def test_rerun_into_a_completed_folder_does_not_overwrite(two_epoch_copy):
    run_copy = two_epoch_copy
    first = (run_copy / "results.json").read_text()
    again = run_entry_point(*TWO_EPOCHS, f"hydra.run.dir={run_copy}", cwd=run_copy.parent)
    assert again.returncode == 0 and "already holds a completed run" in again.stderr + again.stdout
    assert (run_copy / "results.json").read_text() == first


@pytest.mark.parametrize("rank", [{"RANK": "1", "LOCAL_RANK": "1"}, {"SLURM_PROCID": "1"}])
def test_a_further_ddp_rank_rerun_into_a_completed_folder_trains_nothing(rank, monkeypatch, tmp_path):
    """torchrun and srun start every rank themselves: rank 0 left the completed run alone, and rank 1
    built its trainer and waited for rank 0 in the process group's start until its timeout (30 min)."""
    from attn_zoo import train
    from tests.helpers import compose_run

    completed = {"status": "completed", "top1": 50.0}
    (tmp_path / "results.json").write_text(json.dumps(completed))
    for name, value in rank.items():
        monkeypatch.setenv(name, value)

    def trained(*args, **kwargs):
        raise AssertionError("rank 1 began a run rank 0 does not train")

    monkeypatch.setattr(train, "prepare", trained)
    assert train.run(compose_run(output_dir=tmp_path)) == completed
    resumed = compose_run(f"resume={tmp_path}", output_dir=tmp_path)  # extending it trains on every rank
    with pytest.raises(AssertionError, match="rank 1 began"):
        train.run(resumed)
    # and where rank 0 refuses the folder, so does every rank (under srun the others waited for rank 0)
    (tmp_path / "results.json").write_text(json.dumps({"status": "diverged", "diverged_at_step": 7}))
    with pytest.raises(ConfigError, match="diverged at step 7"):
        train.run(compose_run(output_dir=tmp_path))


@pytest.mark.parametrize("holder, refused", [
    (" in job 8", True),  # another job's rank 0 runs there: this job's rank 0 is refused, and so is this rank
    (" in job 7", False),  # this job's own rank 0
    ("", True),  # a holder that names no job (an older attn_zoo, a run outside SLURM): not this job's
    (None, False),  # nobody holds it
])
def test_a_further_rank_is_refused_where_another_job_holds_the_folder(tmp_path, monkeypatch, holder, refused):
    """Under srun the further ranks checked results.json but not the lock: rank 0 was refused ("in use")
    and left, and they waited for it in the process group's start (30 min)."""
    monkeypatch.setenv("SLURM_JOB_ID", "7")
    (tmp_path / ".lock").touch()
    process = hold_lock(tmp_path, holder) if holder is not None else None
    try:
        if refused:
            with pytest.raises(ConfigError, match="is in use by a running job"):
                run_folder.check_not_held_by_another_job(tmp_path, settle_s=0)
        else:
            run_folder.check_not_held_by_another_job(tmp_path, settle_s=0)
    finally:
        if process is not None:
            process.kill()
            process.wait()


def test_a_further_rank_of_a_run_checks_the_lock_before_anything_else(tmp_path, monkeypatch):
    from attn_zoo import train
    from tests.helpers import compose_run

    for name, value in {"SLURM_JOB_ID": "7", "SLURM_PROCID": "1"}.items():
        monkeypatch.setenv(name, value)
    process = hold_lock(tmp_path, " in job 8")
    try:
        with pytest.raises(ConfigError, match="is in use by a running job"):
            train.run(compose_run(output_dir=tmp_path))
    finally:
        process.kill()
        process.wait()


def test_rank_0_names_its_job_in_the_lock_it_holds(tmp_path, monkeypatch):
    monkeypatch.setenv("SLURM_JOB_ID", "7")
    with run_folder.claimed(tmp_path):
        assert (tmp_path / ".lock").read_text(encoding="utf-8").strip().endswith(" in job 7")


def test_a_rerun_of_another_config_into_a_completed_folder_is_refused_naming_the_keys(two_epoch_copy):
    """Exit 0 with the folder's results.json would hand a script another config's result."""
    run_copy = two_epoch_copy
    record, first = (run_copy / ".hydra" / "config.yaml").read_text(), (run_copy / "results.json").read_text()
    assert "seed: 3" in record
    again = run_entry_point(*TWO_EPOCHS, "seed=5", "trainer.max_epochs=3", f"hydra.run.dir={run_copy}", cwd=run_copy.parent)
    assert again.returncode == 2 and len(error_lines(again)) == 1, again.stderr[-2000:]
    message = error_lines(again)[0]
    assert "holds a completed run with another config (differs in seed, trainer.max_epochs)" in message
    assert f"resume={run_copy} trainer.max_epochs=3" in message  # how to extend it instead
    assert (run_copy / ".hydra" / "config.yaml").read_text() == record
    assert (run_copy / "results.json").read_text() == first


def test_a_rerun_with_another_config_is_refused_naming_the_keys(two_epoch_copy):
    run_copy = two_epoch_copy
    as_killed(run_copy)
    before = (run_copy / "results.json").read_text()
    again = run_entry_point(*TWO_EPOCHS, "seed=7", "optim.lr=0.01", f"hydra.run.dir={run_copy}", cwd=run_copy.parent)
    assert again.returncode == 2 and len(error_lines(again)) == 1, again.stderr[-2000:]
    assert "holds a run with another config (differs in optim.lr, seed)" in error_lines(again)[0]
    assert (run_copy / "results.json").read_text() == before


def test_checkpoints_without_their_results_json_are_checked_against_the_config_they_record(two_epoch_copy):
    """Checkpoints copied without results.json (or a results.json deleted): the config check read
    results.json only, so a rerun with another learning rate continued the run and recorded the new one."""
    run_copy = two_epoch_copy
    (run_copy / "results.json").unlink()
    again = run_entry_point(*TWO_EPOCHS, "optim.lr=0.01", "trainer.max_epochs=3", f"hydra.run.dir={run_copy}",
                            cwd=run_copy.parent)
    assert again.returncode == 2 and len(error_lines(again)) == 1, again.stderr[-2000:]
    assert "holds a run with another config (differs in optim.lr)" in error_lines(again)[0]
    assert not (run_copy / "results.json").exists()
    same = run_entry_point(*TWO_EPOCHS, "trainer.max_epochs=3", f"hydra.run.dir={run_copy}", cwd=run_copy.parent)
    assert same.returncode == 0, same.stderr[-2000:]
    record = results(run_copy)
    assert record["status"] == "completed" and record["resumed_from"].endswith("last.ckpt")
    assert [row["epoch"] for row in record["history"]] == [0, 1, 2]


@pytest.mark.parametrize("how", ["own_folder", "resume_named"])
def test_a_run_resumes_with_as_many_epochs_or_more_never_fewer(two_epoch_copy, how):
    """A shorter trainer.max_epochs was accepted on resume: the schedule's drops moved behind the
    step the run stood at, or the run ended at once and was recorded completed."""
    run_copy = two_epoch_copy
    as_killed(run_copy)
    before = (run_copy / "results.json").read_text()
    named = (f"resume={run_copy}",) if how == "resume_named" else ()
    out = run_copy.parent / "shorter" if named else run_copy
    again = run_entry_point(*TWO_EPOCHS, *named, "trainer.max_epochs=1", f"hydra.run.dir={out}", cwd=run_copy.parent)
    assert again.returncode == 2 and len(error_lines(again)) == 1, again.stderr[-2000:]
    assert "holds a run of trainer.max_epochs=2; it resumes with as many or more, not 1" in error_lines(again)[0]
    assert (run_copy / "results.json").read_text() == before


def test_config_differences_follow_a_moved_folder_and_allow_resumable_keys():
    recorded = {"paths": {"output_dir": "/a/run"}, "logger": {"csv": {"save_dir": "/a/run"}},
                "trainer": {"max_epochs": 2}, "seed": 0, "optim": {"lr": 0.1}}
    moved = {"paths": {"output_dir": "/b/run"}, "logger": {"csv": {"save_dir": "/b/run"}},
             "trainer": {"max_epochs": 4}, "seed": 0, "optim": {"lr": 0.1}}
    assert run_folder.config_differences(recorded, moved) == []
    assert run_folder.config_differences(recorded, {**moved, "seed": 1, "extra": 2}) == ["extra", "seed"]


# ---------------------------------------------------------------- divergence


def test_a_diverged_run_exits_non_zero_and_is_not_resumed(tmp_path):
    out = tmp_path / "run"
    diverging = (*QUICK, "sched=none", "optim.lr=1e30", "trainer.limit_train_batches=6", f"hydra.run.dir={out}")
    first = run_entry_point(*diverging, cwd=tmp_path)
    assert first.returncode == 3 and "diverged: non-finite loss at step" in first.stderr, first.stderr[-2000:]
    before = results(out)
    assert before["status"] == "diverged"
    # diverged in its first epoch: no epoch ended with finite weights, so there is no result to report
    assert before["epochs"] == 0 and "top1" not in before and "best_top1" not in before
    assert not (out / "checkpoints" / "best.ckpt").exists()
    again = run_entry_point(*diverging, cwd=tmp_path)
    assert again.returncode == 2 and len(error_lines(again)) == 1, again.stderr[-2000:]
    assert f"diverged at step {before['diverged_at_step']}" in error_lines(again)[0]
    assert "choose another hydra.run.dir or delete the folder" in error_lines(again)[0]
    assert results(out) == before


@pytest.mark.parametrize("named", ["folder", "checkpoint"])
def test_resume_naming_a_diverged_run_is_refused_as_its_own_folder_rerun_is(two_epoch_copy, named):
    """A run that diverged in its second epoch keeps the first epoch's last.ckpt: ``resume=`` it into a
    new folder was accepted and the run came back completed."""
    record = results(two_epoch_copy)
    record.update(status="diverged", diverged_at_step=4)
    (two_epoch_copy / "results.json").write_text(json.dumps(record))
    target = two_epoch_copy if named == "folder" else two_epoch_copy / "checkpoints" / "last.ckpt"
    out = two_epoch_copy.parent / "resumed"
    again = run_entry_point(*TWO_EPOCHS, f"resume={target}", "trainer.max_epochs=3", f"hydra.run.dir={out}",
                            cwd=two_epoch_copy.parent)
    assert again.returncode == 2 and len(error_lines(again)) == 1, again.stderr[-2000:]
    assert f"resume: {two_epoch_copy} holds a run that diverged at step 4" in error_lines(again)[0]
    assert results(out)["status"] == "failed"


# ---------------------------------------------------------------- the folder claim


def test_two_runs_at_once_one_is_refused_before_writing_anything(tmp_path):
    out = tmp_path / "run"
    holder = hold_lock(out)
    try:
        second = run_entry_point("trainer=debug", "logger=csv", f"hydra.run.dir={out}", cwd=tmp_path)
        assert second.returncode == 2 and len(error_lines(second)) == 1, second.stderr[-2000:]
        assert f"is in use by a running job (pid {holder.pid} on host)" in error_lines(second)[0]
        assert sorted(path.name for path in out.iterdir()) == [".lock", "run.log"], "the refused run wrote"
    finally:
        holder.kill()
        holder.wait()
    with run_folder.claimed(out):  # the lock died with its process: the folder is free at once
        pass


def test_two_identical_runs_started_together_one_trains_one_is_refused(tmp_path):
    out = tmp_path / "run"
    processes = [RunPy("trainer=debug", "trainer.max_epochs=2", "logger=csv", f"hydra.run.dir={out}", cwd=tmp_path)
                 for _ in range(2)]
    outcomes = sorted((run.returncode, run.stderr) for run in (process.wait(timeout=600) for process in processes))
    assert [code for code, _ in outcomes] == [0, 2], outcomes[-1][1][-2000:]
    assert "is in use by a running job (pid" in outcomes[1][1]
    assert results(out)["status"] == "completed" and results(out)["epochs"] == 2
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


def test_a_refusal_names_the_config_groups_choice_before_its_options():
    """Another module differs in many options: attention.name came ninth and was cut off."""
    keys = [f"attention.{option}" for option in ("act", "axis", "divisor", "gate", "kernel_size", "min_width",
                                                  "mlp_bias", "reduction", "squeeze")] + ["attention.name"]
    assert run_folder._shown(keys).startswith("attention.name, attention.act, ")
    assert run_folder._shown(keys).endswith("and 2 more")


# ---------------------------------------------------------------- the data a run resumes on


@pytest.mark.parametrize("how", ["own_folder", "resume_named"])
def test_a_run_resumes_on_the_same_data_at_another_root_never_on_other_data(tmp_path, how):
    """``data.root`` may change on resume (the data moved), so it was never compared: a copy with one
    image re-made under the same name resumed the run, and results.json showed the second data set's
    fingerprint alone. The checkpoint now carries the fingerprint it trained on."""
    import shutil

    from tests.helpers import IMAGEFOLDER, image, image_tree

    original = image_tree(tmp_path / "a", per_class=4)
    shutil.copytree(original, tmp_path / "moved")
    shutil.copytree(original, tmp_path / "other")
    image(tmp_path / "other" / "train" / "cat" / "0.png", seed=99, size=(9, 9))
    overrides = (*QUICK, *IMAGEFOLDER, "attention=none")
    first = tmp_path / "first"
    completed = run_entry_point(*overrides, f"data.root={original}", f"hydra.run.dir={first}", cwd=tmp_path)
    assert completed.returncode == 0, completed.stderr[-2000:]
    if how == "own_folder":
        as_killed(first)
        target, resume = first, ()
    else:
        target, resume = tmp_path / "second", (f"resume={first}", "trainer.max_epochs=2")
    again = run_entry_point(*overrides, *resume, f"data.root={tmp_path / 'other'}", f"hydra.run.dir={target}",
                            cwd=tmp_path)
    assert again.returncode == 2, again.stderr[-2000:]
    assert "the checkpoint was trained on other data" in error_lines(again)[0]
    moved = run_entry_point(*overrides, *resume, f"data.root={tmp_path / 'moved'}", f"hydra.run.dir={target}",
                            cwd=tmp_path)
    assert moved.returncode == 0, moved.stderr[-2000:]
    record = results(target)
    assert record["status"] == "completed" and record["data_fingerprint"] == results(first)["data_fingerprint"]
    assert record["resumed_from"].startswith(str(first))


def test_a_killed_runs_forked_children_do_not_keep_its_folder_locked(tmp_path):
    """A data loader's workers are forks of the run and shared its lock: a run killed outright (out of
    memory) left its folder "in use" to a rerun until every worker had noticed and ended."""
    script = textwrap.dedent(f"""
        import os, sys, time
        from pathlib import Path
        from attn_zoo.run_folder import claimed
        with claimed(Path({str(tmp_path / 'run')!r})):
            child = os.fork()
            if child == 0:  # a loader worker
                time.sleep(60)
                os._exit(0)
            print(child, flush=True)
            time.sleep(60)
    """)
    run = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True,
                           env={**os.environ, "PYTHONPATH": str(ROOT)})
    worker = int(run.stdout.readline())
    try:
        run.kill()
        run.wait(timeout=30)
        with run_folder.claimed(tmp_path / "run"):  # the worker still lives
            os.kill(worker, 0)
    finally:
        os.kill(worker, signal.SIGKILL)
