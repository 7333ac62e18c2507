"""``python -m attn_zoo.tools.reproduce``: a results table's sweep, several runs at once, stopped at a
time limit with every run saved, and packed as results/ keeps it (analysis/results_md.py reads it)."""
import json
import os
import shutil
import statistics
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
import yaml

from analysis import results_md
from attn_zoo.throughput import cpu_model
from attn_zoo.tools import reproduce
from tests.helpers import ROOT

TINY = ("trainer=cpu", "data=embedded", "trainer.max_epochs=1", "trainer.limit_train_batches=2",
        "trainer.limit_val_batches=1", "logger=csv")


def test_a_table_runs_two_at_once_and_packs_for_results_md(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher")
    runs, packed = tmp_path / "runs", tmp_path / "results"
    assert reproduce.main(["classic", "--jobs", "2", "--runs", str(runs), "--pack", str(packed), *TINY]) == 0
    table = packed / "1-classic"
    records = {folder.name: json.loads((folder / "results.json").read_text()) for folder in table.iterdir() if folder.is_dir()}
    assert sorted(records) == ["0", "1", "2", "3"]
    assert {(r["attention"], r["seed"], r["status"]) for r in records.values()} == {
        (attention, seed, "completed") for attention in ("none", "se") for seed in (0, 1)}
    assert len({r["pid"] for r in records.values()}) == 2  # two worker processes
    assert (table / "0" / "csv" / "metrics.csv").is_file() and (runs / "0" / "checkpoints" / "last.ckpt").is_file()
    assert not list(table.rglob("*.ckpt")) and not list(table.rglob(".lock"))
    meta = yaml.safe_load((table / "table.yaml").read_text())
    assert meta["command"].startswith("python run.py -m +experiment=cifar_resnet backbone.shortcut=pad seed=0,1 attention=none,se_exact ")
    assert meta["device"].startswith("CPU") and meta["notes"].startswith("Runs: 4 completed.")
    speed = json.loads((table / "speed.json").read_text())
    assert (speed["jobs"], speed["runs"], speed["completed"]) == (2, 4, 4) and speed["wall_s"] > 0
    # the median of the runs timed while both jobs trained (each run's measured load), twice; runs
    # whose one epoch saw the other job begin or end have no speed
    full = [r["train_images_per_s"] for r in records.values()
            if r["train_images_per_s"] is not None and r["hardware"][0].get("parallel_jobs") == 2]
    assert speed["runs_timed_at_full_load"] == len(full)
    assert speed["aggregate_train_images_per_s"] == (pytest.approx(2 * statistics.median(full)) if full else None)
    text = results_md.render(packed)
    assert "## Classic schedule (He et al. 2016, 164 epochs), CIFAR-10, ResNet-20" in text
    summary = text.split("Against the paper")[0]
    rows = [line for line in summary.splitlines() if line.startswith("| embedded | resnet20 ")]
    assert [row.split("|")[3].strip() for row in rows] == ["none", reproduce.SE_EXACT] and all("|   2 |" in row for row in rows)
    # the published figure beside the row it names
    assert meta["paper"]["top1"] == {"none": 91.25}
    assert "Against the paper (He et al. 2016, Table 6: ResNet-20, 8.75 % error):" in text
    [against] = [[cell.strip() for cell in line.strip("|").split("|")]
                 for line in text.split("Against the paper")[1].splitlines() if line.startswith("| embedded ")]
    here = statistics.mean(r["top1"] for r in records.values() if r["attention"] == "none")
    assert against == ["embedded", "resnet20", "none", "", "2", f"{here:.2f}", "91.25",
                       f"{here - 91.25:+.2f}".replace("-", "−")]


def test_the_time_limit_stops_every_process_of_the_sweep_and_waits_for_them(tmp_path):
    """SIGTERM reaches the launcher and its worker, not the worker's own helper processes (torch.compile's
    compile workers: without a handler they died, and a job compiling then failed instead of saving);
    the launcher exits at once, the worker takes a while to save, and ``run_until`` returns only once
    the worker has saved. The stop file a job started after the stop checks exists by the SIGTERM,
    and is gone afterwards."""
    script = textwrap.dedent(f"""
        import os, signal, subprocess, sys, time
        def stop(signum, frame):
            if len(sys.argv) == 3:  # the worker's helper: it must not get the stop
                open(os.path.join({str(tmp_path)!r}, "helper-stopped"), "w").close()
                sys.exit(0)
            if len(sys.argv) > 1:
                time.sleep(1.5)  # a worker saving its checkpoint
            seen = str(os.path.exists(os.environ["{reproduce_stop_env()}"]))
            with open(os.path.join({str(tmp_path)!r}, str(os.getpid())), "w") as marker:
                marker.write(seen)
            sys.exit(0)
        signal.signal(signal.SIGTERM, stop)
        if len(sys.argv) < 3:
            child = subprocess.Popen([sys.executable, __file__, *sys.argv[1:], "worker"])
        time.sleep(60)
    """)
    path = tmp_path / "sweep.py"
    path.write_text(script)
    started = time.monotonic()
    saved = lambda: list(tmp_path.glob("[0-9]*"))  # noqa: E731
    stop_file = tmp_path / "runs" / ".stopped"
    code, stopped = reproduce.run_until([sys.executable, str(path)], 2, still_saving=lambda: len(saved()) < 2, grace_s=30,
                                        stop_file=stop_file)
    assert stopped and code == 0 and time.monotonic() - started < 30
    assert [marker.read_text() for marker in saved()] == ["True", "True"]  # the launcher and its worker both saved
    assert not (tmp_path / "helper-stopped").exists()  # killed with the group at the end, never asked to stop
    assert not stop_file.exists()


def reproduce_stop_env() -> str:
    from attn_zoo.run_folder import SWEEP_STOP_ENV

    return SWEEP_STOP_ENV


def test_a_job_of_a_stopped_sweep_ends_before_it_begins(tmp_path, monkeypatch):
    """A launcher's worker takes queued jobs after the stop's SIGTERM, which they never see: they
    trained through the whole grace period (90 s of a GPU call) and were killed."""
    from attn_zoo.callbacks import RunInterrupted
    from attn_zoo.config import compose
    from attn_zoo.train import run

    (tmp_path / ".stopped").touch()
    monkeypatch.setenv(reproduce_stop_env(), str(tmp_path / ".stopped"))
    with pytest.raises(RunInterrupted):
        run(compose(["trainer=debug", "logger=none", f"paths.output_dir={tmp_path / 'run'}"]))
    assert not (tmp_path / "run").exists()
    # under Hydra the job's folder and its empty run.log exist first: left behind, summarize read the
    # folder as a run that lost its results.json; a folder holding anything else is kept as it is
    fresh, earlier, logged, other = (tmp_path / name for name in ("fresh", "earlier", "logged", "other"))
    for folder in (fresh, earlier, logged):
        folder.mkdir()
        (folder / "run.log").touch()
    (earlier / "checkpoints").mkdir()
    (logged / "run.log").write_text("an earlier attempt's log\n")
    other.mkdir()
    (other / "notes.log").touch()  # a user's own empty log in a hydra.run.dir
    for folder in (fresh, earlier, logged, other):
        with pytest.raises(RunInterrupted):
            run(compose(["trainer=debug", "logger=none", f"paths.output_dir={folder}"]))
    assert not fresh.exists()
    assert sorted(path.name for path in earlier.iterdir()) == ["checkpoints", "run.log"]
    assert (logged / "run.log").read_text() == "an earlier attempt's log\n" and (other / "notes.log").is_file()


def test_what_is_left_of_the_group_is_killed_and_a_run_still_saving_is_waited_for(tmp_path):
    """Idle workers ignore SIGTERM and never exit: they are killed once no run says ``running``."""
    script = "import subprocess, sys, time\n" \
             "subprocess.Popen([sys.executable, '-c', 'import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)'])\n" \
             "time.sleep(600)\n"
    (tmp_path / "runs" / "0").mkdir(parents=True)
    record = tmp_path / "runs" / "0" / "results.json"
    record.write_text(json.dumps({"status": "running"}))
    started = time.time()

    def still_saving():
        if time.time() - started > 4:  # the run records its stop 4 s in
            record.write_text(json.dumps({"status": "interrupted"}))
        return reproduce.runs_still_running(tmp_path / "runs", since=started - 1)()

    code, stopped = reproduce.run_until([sys.executable, "-c", script], 1, still_saving, grace_s=60)
    assert stopped and code == -15 and 4 < time.time() - started < 30  # the launcher died of the SIGTERM


CHOICES = {"+experiment": ["cifar_resnet"], "seed": [0, 1], "attention": ["none", "se"]}


def _run_folder(folder, status, overrides=("+experiment=cifar_resnet", "seed=0", "attention=se")):
    (folder / "checkpoints").mkdir(parents=True)
    (folder / ".hydra").mkdir()
    (folder / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(list(overrides)))
    (folder / "results.json").write_text(json.dumps({"status": status}))
    for name in ("last.ckpt", "best.ckpt"):
        (folder / "checkpoints" / name).write_bytes(b"weights")


@pytest.mark.parametrize("keep", [False, True])
def test_pack_carries_only_the_unfinished_runs_last_checkpoint_and_only_when_asked(tmp_path, keep):
    runs = tmp_path / "runs"
    _run_folder(runs / "0", "completed")
    _run_folder(runs / "1", "interrupted")
    statuses, left_out = reproduce.pack(runs, tmp_path / "pack", keep, CHOICES)
    assert statuses == {"completed": 1, "interrupted": 1} and left_out == []
    packed = sorted(path.relative_to(tmp_path / "pack").as_posix() for path in (tmp_path / "pack").rglob("*.ckpt"))
    assert packed == (["1/checkpoints/last.ckpt"] if keep else [])


def test_packing_again_replaces_a_runs_earlier_pack_and_its_checkpoint(tmp_path):
    """A run packed interrupted with its last.ckpt, then completed and packed again: the old
    checkpoint stayed in the pack (copied over, never removed) beside the completed run."""
    runs = tmp_path / "runs"
    _run_folder(runs / "0", "interrupted")
    (runs / "0" / "interrupted.log").write_text("stopped")
    reproduce.pack(runs, tmp_path / "pack", True, CHOICES)
    assert (tmp_path / "pack" / "0" / "checkpoints" / "last.ckpt").is_file()
    (runs / "0" / "results.json").write_text(json.dumps({"status": "completed"}))
    (runs / "0" / "interrupted.log").unlink()
    reproduce.pack(runs, tmp_path / "pack", True, CHOICES)
    assert sorted(path.relative_to(tmp_path / "pack").as_posix() for path in (tmp_path / "pack").rglob("*")) == [
        "0", "0/.hydra", "0/.hydra/overrides.yaml", "0/results.json"]


def test_pack_leaves_out_runs_another_command_left_in_the_sweep_folder(tmp_path):
    """The sweep folder is named by the table alone: ``reproduce short`` and ``reproduce short
    trainer=cpu`` share it, and a job refuses a folder holding another config's completed run, which
    then stayed and was packed under the new command's heading as one of its runs."""
    runs = tmp_path / "runs"
    _run_folder(runs / "0", "completed", ("+experiment=cifar_resnet", "seed=1", "attention=none"))
    _run_folder(runs / "1", "completed", ("+experiment=cifar_resnet", "seed=1", "attention=none", "trainer=cpu"))
    _run_folder(runs / "2", "completed", ("+experiment=cifar_resnet", "seed=2", "attention=none"))
    _run_folder(runs / "3", "completed", ("+experiment=cifar_resnet_short", "seed=0", "attention=se"))
    (runs / "4").mkdir()
    (runs / "4" / "results.json").write_text(json.dumps({"status": "completed"}))  # no record of its overrides
    _run_folder(runs / "5", "completed", ("+experiment=cifar_resnet", "seed=2", "attention=none"))
    (runs / "5" / ".hydra" / "overrides.yaml").write_text("- seed=2\n- attention: [none\n")  # not YAML: was a traceback
    _run_folder(runs / "6", "completed", ("+experiment=cifar_resnet", "seed=2", "attention=none"))
    (runs / "6" / ".hydra" / "overrides.yaml").write_text("- seed=2\n- attention=[no\n")  # YAML, not an override
    statuses, left_out = reproduce.pack(runs, tmp_path / "pack", False, CHOICES)
    assert statuses == {"completed": 1} and [run.name for run in left_out] == ["1", "2", "3", "4", "5", "6"]
    assert sorted(path.name for path in (tmp_path / "pack").iterdir()) == ["0"]
    assert "Left out: 4 runs of another sweep" in reproduce.table_record(reproduce.TABLES["classic"], ["p", "run.py"], statuses, 4)["notes"]


def test_sweep_choices_are_the_commands_task_overrides_as_hydra_reads_them(tmp_path):
    command = reproduce.sweep_command(reproduce.TABLES["classic"], tmp_path, 2, None, ["trainer=cpu"], gpu=False)
    choices = reproduce.sweep_choices(command)
    assert choices == {"+experiment": ["cifar_resnet"], "backbone.shortcut": ["pad"], "seed": [0, 1],
                       "attention": ["none", "se_exact"], "trainer.enable_progress_bar": [False], "trainer": ["cpu"]}
    _run_folder(tmp_path / "run", "completed", ("+experiment=cifar_resnet", "backbone.shortcut=pad", "seed=1",
                                                 "attention=se_exact", "trainer.enable_progress_bar=False", "trainer=cpu"))
    assert reproduce.is_job_of(tmp_path / "run", choices)
    # where the data lie may change on resume (run_folder.RESUMABLE_KEYS): the same job
    moved = {**choices, "data": ["cifar10_jpg"], "data.archive": ["/new/c.tar.gz"]}
    _run_folder(tmp_path / "old", "completed", ("+experiment=cifar_resnet", "backbone.shortcut=pad", "seed=1", "attention=se_exact",
                                                 "trainer.enable_progress_bar=False", "trainer=cpu", "data=cifar10_jpg",
                                                 "data.archive=/old/c.tar.gz"))
    assert reproduce.is_job_of(tmp_path / "old", moved)
    assert not reproduce.is_job_of(tmp_path / "old", {**moved, "trainer.max_epochs": [30]})  # a longer run is not


def test_a_run_copied_without_its_hidden_hydra_folder_is_known_by_its_results_json(tmp_path):
    """``cp -r run/*`` leaves ``.hydra/`` behind: such a run was named another sweep's and not packed."""
    job, copied = ("+experiment=cifar_resnet", "seed=0", "attention=se"), tmp_path / "runs" / "0"
    _run_folder(copied, "completed", job)
    shutil.rmtree(copied / ".hydra")
    (copied / "results.json").write_text(json.dumps({"status": "completed", "overrides": list(job)}))
    record = json.loads((copied / "results.json").read_text())
    assert reproduce.is_job_of(copied, CHOICES, record)
    assert not reproduce.is_job_of(copied, CHOICES, {"status": "completed"})  # no record of its command
    assert not reproduce.is_job_of(copied, CHOICES, {"overrides": ["seed=[0"]})  # one cut short
    assert not reproduce.is_job_of(copied, CHOICES, {"overrides": [*job[:2], "attention=eca"]})
    statuses, left_out = reproduce.pack(tmp_path / "runs", tmp_path / "pack", False, CHOICES)
    assert statuses == {"completed": 1} and left_out == []
    # .hydra/ where it is (Hydra's own record) wins; one that is not text is as good as none
    _run_folder(tmp_path / "whole", "completed", (*job[:2], "attention=eca"))
    assert not reproduce.is_job_of(tmp_path / "whole", CHOICES, record)
    (tmp_path / "whole" / ".hydra" / "overrides.yaml").write_bytes(b"\xff\xfe\x00garbage")
    assert reproduce.is_job_of(tmp_path / "whole", CHOICES, record)


def test_pack_refuses_a_folder_holding_another_commands_pack_and_updates_its_own(tmp_path, capsys):
    """Runs laid over another sweep's pack were read as this command's (its table.yaml rewritten)."""
    runs, packed = tmp_path / "runs", tmp_path / "pack"
    (packed / "1-classic" / "0").mkdir(parents=True)
    arguments = ["classic", "--runs", str(runs), "--pack", str(packed), *TINY]
    with pytest.raises(SystemExit):
        reproduce.main(arguments)
    assert "1-classic holds files but no table.yaml naming their command; pack into another folder" in capsys.readouterr().err
    (packed / "1-classic" / "table.yaml").write_text(yaml.safe_dump({"command": "python run.py -m seed=0 trainer=cpu"}))
    with pytest.raises(SystemExit):
        reproduce.main(arguments)
    assert "holds the pack of another command (python run.py -m seed=0 trainer=cpu)" in capsys.readouterr().err
    assert not runs.exists()  # refused before any run
    command = reproduce.shown_command(reproduce.sweep_command(reproduce.TABLES["classic"], runs.resolve(), 4, None, TINY, False))
    assert reproduce.earlier_pack_problem(packed / "1-classic", command) is not None
    (packed / "1-classic" / "table.yaml").write_text(yaml.safe_dump({"command": command}))
    assert reproduce.earlier_pack_problem(packed / "1-classic", command) is None  # the same sweep, packed again
    other_launch = reproduce.shown_command(reproduce.sweep_command(
        reproduce.TABLES["classic"], tmp_path / "elsewhere", 2, tmp_path / "moved.tar.gz", TINY, False))
    assert reproduce.earlier_pack_problem(packed / "1-classic", other_launch) is None  # jobs, folder, data path aside
    assert reproduce.earlier_pack_problem(packed / "2-short", command) is None  # a new folder


def test_gpu_runs_get_the_fast_settings_and_the_archive_its_data_group(tmp_path):
    table = reproduce.TABLES["short"]
    on_gpu = reproduce.sweep_command(table, tmp_path, 8, tmp_path / "c.tar.gz", ["seed=0"], gpu=True)
    assert {"compile=true", "compile_mode=reduce-overhead", "data.loader=gpu", "data=cifar10_jpg"} <= set(on_gpu)
    assert on_gpu[-1] == "seed=0" and "hydra.launcher.n_jobs=8" in on_gpu
    on_cpu = reproduce.sweep_command(table, tmp_path, 1, None, [], gpu=False)
    assert not set(reproduce.GPU_SPEED) & set(on_cpu) and "hydra/launcher=parallel" not in on_cpu


@pytest.mark.parametrize("name", sorted(reproduce.TABLES))
def test_a_table_cut_short_has_every_attention_module_before_a_second_seed(name):
    # a time limit stops a sweep part-way: its first runs must be one seed of each module (a
    # comparison), not every seed of the first module (Hydra's sweep varies the first override slowest)
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    overrides = OverridesParser.create().parse_overrides(list(reproduce.TABLES[name].overrides))
    jobs = [dict(item.split("=", 1) for item in job) for job in BasicSweeper.split_arguments(overrides, None)[0]]
    modules = next(o for o in overrides if o.key_or_group == "attention").value().list
    assert [job["attention"] for job in jobs[:len(modules)]] == modules
    assert {job["seed"] for job in jobs[:len(modules)]} == {"0"}


def test_a_run_still_running_after_the_kill_is_recorded_as_interrupted(tmp_path, monkeypatch):
    """A job handed to a worker just after the SIGTERM never saw it: killed at the end of the grace
    period, its record said ``running`` for good (the pack counted it so). Only this sweep's records
    since the start change."""
    runs = tmp_path / "runs"
    _run_folder(runs / "0", "running")  # a run of an earlier session, written before this one started
    old = runs / "0" / "results.json"
    os.utime(old, (time.time() - 3600, time.time() - 3600))

    def stopped_with_a_killed_run(command, time_limit_s, still_saving, stop_file, start_limit_s):
        _run_folder(runs / "1", "running")
        (runs / "1" / "results.json").write_text(json.dumps({"status": "running", "seed": 1}))
        _run_folder(runs / "2", "interrupted")
        return -9, True

    monkeypatch.setattr(reproduce, "run_until", stopped_with_a_killed_run)
    # stopped at the limit as asked: exit 0 (the stopped launcher's own code is SIGTERM's, which said 1)
    assert reproduce.main(["short", "--runs", str(runs), "--jobs", "1", "--time-limit", "1"]) == 0
    assert json.loads((runs / "1" / "results.json").read_text()) == {
        "status": "interrupted", "interrupted_by": "SIGKILL", "seed": 1}
    assert json.loads(old.read_text()) == {"status": "running"}
    assert json.loads((runs / "2" / "results.json").read_text()) == {"status": "interrupted"}


def test_a_cpu_table_names_the_cpus_model(monkeypatch):
    """table.yaml's device on a CPU: the model /proc/cpuinfo gives (platform.processor() says x86_64)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert reproduce.device_name() == f"CPU ({cpu_model()}, {os.cpu_count()} cores)"
    assert cpu_model() not in ("", "x86_64", "unknown CPU") or not Path("/proc/cpuinfo").is_file()


@pytest.mark.slow  # about 2.5 min of one core (an inner pytest, a sweep, a resume): make test-slow, which CI runs
def test_the_gpu_session_script_dry_runs_on_the_cpu_and_leaves_what_the_device_brings_back(tmp_path):
    """``.ci/gpu-session``, the prepared command of a GPU call: the GPU checks (skipped here, said so),
    then the table's sweep, stopped at its time limit with its runs saved. The device brings back at
    most 8 files of $OUT, 16 MiB each, 2 folders down: the pack was written there as a tree (78
    files for the short table, checkpoints 3 folders down), so nearly all of it would have stayed
    behind; now one archive, the checkpoints in parts, and the logs."""
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher")
    out = tmp_path / "out"
    out.mkdir()
    env = {**os.environ, "OUT": str(out), "PYTHON": sys.executable, "ARCHIVE": "", "RUNS": str(tmp_path / "runs"),
           "JOBS": "2", "OMP_NUM_THREADS": "1", "BUDGET": "900", "PACK": str(tmp_path / "pack")}
    endless = ("trainer=cpu", "data=embedded", "trainer.max_epochs=1000", "trainer.limit_train_batches=2",
               "trainer.limit_val_batches=1", "logger=csv")
    completed = subprocess.run(["bash", str(ROOT / ".ci" / "gpu-session"), "classic", "60", *endless],
                               capture_output=True, text=True, cwd=ROOT, env=env, timeout=600)
    assert completed.returncode == 0, completed.stdout + completed.stderr
    lines = completed.stdout.splitlines()
    assert lines[0].startswith("test-gpu: exit 0 (") and "skipped" in lines[0]
    assert "reproduce: exit 0 (60 s of training)" in lines and any(line.startswith("stopped at the time limit") for line in lines)
    files = [path for path in out.rglob("*") if path.is_file()]
    assert len(files) <= 8 and all(len(path.relative_to(out).parts) <= 3 for path in files)
    assert all(path.stat().st_size <= 16 * 2**20 for path in files)
    unpacked = tmp_path / "unpacked"
    unpacked.mkdir()
    subprocess.run(["tar", "-xzf", str(out / "pack.tgz"), "-C", str(unpacked)], check=True)
    parts = sorted(out.glob("checkpoints.tar.part-*"))
    subprocess.run(["tar", "-x", "-C", str(unpacked)], input=b"".join(part.read_bytes() for part in parts), check=True)
    records = {path.parent.name: json.loads(path.read_text()) for path in (unpacked / "1-classic").glob("*/results.json")}
    assert records and {record["status"] for record in records.values()} == {"interrupted"}
    # each stopped run comes back with its overrides and, once it trained a batch, its checkpoint
    saved = [name for name in records if (unpacked / "1-classic" / name / "checkpoints" / "last.ckpt").is_file()]
    assert saved
    assert all((unpacked / "1-classic" / name / ".hydra" / "overrides.yaml").is_file() for name in records)
    assert (unpacked / "1-classic" / "table.yaml").is_file() and (unpacked / "1-classic" / "speed.json").is_file()
    assert (out / "test-gpu.log").is_file() and (out / "reproduce.log").is_file()
    # the next call (another machine, another folder) resumes them, as the script's header says, with
    # the same command (a shorter trainer.max_epochs is refused on resume), and stops them again at its
    # time limit further on
    runs = tmp_path / "next-call" / "runs"
    shutil.copytree(unpacked / "1-classic", runs)
    resumed = subprocess.run([sys.executable, "-m", "attn_zoo.tools.reproduce", "classic", "--runs", str(runs), "--jobs", "2",
                              "--time-limit", "40", *endless], capture_output=True, text=True, cwd=ROOT,
                             env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=600)
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-2000:]
    for name, record in records.items():
        after = json.loads((runs / name / "results.json").read_text())
        assert after.get("resumed_from") == (str(runs / name / "checkpoints" / "last.ckpt") if name in saved else None)
        assert after["status"] == "interrupted" and after.get("epochs", 0) >= record.get("epochs", 0)
        if name in saved:  # the earlier call's epochs are the resumed run's first ones
            assert after["history"][: len(record["history"])] == record["history"]


def test_the_gpu_session_script_stops_before_the_gpu_checks_without_its_data(tmp_path):
    """A call without the carried archive would spend its GPU checks, then fail in the sweep."""
    env = {**os.environ, "OUT": str(tmp_path), "PYTHON": sys.executable, "ARCHIVE": str(tmp_path / "none.tar.gz")}
    completed = subprocess.run(["bash", str(ROOT / ".ci" / "gpu-session"), "short", "60"],
                               capture_output=True, text=True, cwd=ROOT, env=env, timeout=120)
    assert completed.returncode == 1 and completed.stdout.strip() == f"missing: {tmp_path / 'none.tar.gz'} (carry .data)"
    assert list(tmp_path.iterdir()) == []


def test_a_gpu_session_without_tests_brings_back_only_the_last_checkpoints_of_an_unpacked_sweep(tmp_path):
    """TESTS=0 (a later call that only resumes) skips the GPU tests. A sweep that ended before packing
    came back as its runs folder with every checkpoint (last, previous, best: three times the parts,
    over the 8 files a call brings back); a resume reads only last.ckpt."""
    runs = tmp_path / "runs"
    for job in ("0", "1"):
        (runs / job / "checkpoints").mkdir(parents=True)
        for name in ("last", "previous", "best"):
            (runs / job / "checkpoints" / f"{name}.ckpt").write_bytes(name.encode())
        (runs / job / "results.json").write_text("{}")
    (runs / ".running").mkdir()
    (runs / ".running" / "4242").touch()  # a job's marker: a process number of this machine, not the next
    (runs / ".stopped").touch()
    out = tmp_path / "out"
    out.mkdir()
    env = {**os.environ, "OUT": str(out), "PYTHON": sys.executable, "ARCHIVE": "", "RUNS": str(runs), "TESTS": "0",
           "PACK": str(tmp_path / "pack")}
    completed = subprocess.run(["bash", str(ROOT / ".ci" / "gpu-session"), "no_such_table", "60"],  # ends unpacked
                               capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
    assert completed.returncode == 1
    lines = completed.stdout.splitlines()
    assert lines[0] == "test-gpu: not run (TESTS=0)" and f"nothing packed: bringing back {runs} as it is" in lines
    listing = subprocess.run(["tar", "-t"], input=b"".join(p.read_bytes() for p in sorted(out.glob("checkpoints.tar.part-*"))),
                             capture_output=True, check=True).stdout.decode().split()
    assert sorted(listing) == ["./0/checkpoints/last.ckpt", "./1/checkpoints/last.ckpt"]
    packed = subprocess.run(["tar", "-tzf", str(out / "pack.tgz")], capture_output=True, check=True, text=True).stdout.split()
    assert "./0/results.json" in packed and not any(".running" in name or ".stop" in name for name in packed)
    assert not (out / "test-gpu.log").exists()


def test_a_sweep_that_ends_early_with_an_error_exits_1(tmp_path, monkeypatch):
    monkeypatch.setattr(reproduce, "run_until", lambda command, time_limit_s, still_saving, stop_file, start_limit_s: (1, False))
    assert reproduce.main(["short", "--runs", str(tmp_path / "runs"), "--jobs", "1", "--time-limit", "100"]) == 1


def _jobs(table: reproduce.Table) -> list[list[str]]:
    """The sweep's jobs in Hydra's order (job i: folder i), each its overrides."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    return BasicSweeper.split_arguments(OverridesParser.create().parse_overrides(list(table.overrides)), None)[0]


@pytest.mark.parametrize("name", sorted(reproduce.TABLES))
def test_a_table_extended_with_more_seeds_keeps_its_finished_jobs_numbers(name):
    """Job i is folder i: more seeds must add jobs after the table's own, not renumber them (the ResNet-110 table
    named its seed after the modules, so a second seed would have put it between them)."""
    table = reproduce.TABLES[name]
    own = _jobs(table)
    seeds = len({override for job in own for override in job if override.startswith("seed=")})
    assert seeds >= 1, f"table {name} names no seeds"
    extended = _jobs(reproduce.with_seeds(table, seeds + 2))
    assert extended[:len(own)] == own
    assert len(extended) == len(own) * (seeds + 2) // seeds
    assert {override for job in extended[len(own):] for override in job if override.startswith("seed=")} == {
        f"seed={seeds}", f"seed={seeds + 1}"}
    assert reproduce.with_seeds(table, None) == table and _jobs(reproduce.with_seeds(table, 1)) == own[:len(own) // seeds]


def test_more_seeds_pack_over_the_tables_own_pack_and_a_zero_count_is_refused(tmp_path, capsys):
    runs, packed = tmp_path / "runs", tmp_path / "pack" / "2-short"
    command = lambda seeds: reproduce.shown_command(reproduce.sweep_command(  # noqa: E731
        reproduce.with_seeds(reproduce.TABLES["short"], seeds), runs, 1, None, TINY, False))
    assert "seed=0,1,2,3,4 attention=none,se,eca,cbam" in command(5)
    packed.mkdir(parents=True)
    (packed / "table.yaml").write_text(yaml.safe_dump({"command": command(None)}))
    assert reproduce.earlier_pack_problem(packed, command(5)) is None  # the same runs and more
    assert reproduce.earlier_pack_problem(packed, command(2)) is not None  # seed 2's runs are not this command's
    with pytest.raises(SystemExit):
        reproduce.main(["short", "--seeds", "0", "--runs", str(runs)])
    assert "--seeds must be >= 1, got 0" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # Hydra would take the later of the two seed lists without a word
        reproduce.main(["short", "--seeds", "4", "--runs", str(runs), "seed=7"])
    assert "--seeds and seed=7 both name the seeds: give one" in capsys.readouterr().err
    assert not runs.exists()
    with pytest.raises(ValueError, match="names no seeds"):
        reproduce.with_seeds(reproduce.Table("9-x", "x", ("attention=none,se",)), 2)


def test_a_finished_sweep_extended_with_a_seed_runs_only_the_new_seeds_jobs(tmp_path):
    runs = tmp_path / "runs"
    assert reproduce.main(["classic", "--seeds", "1", "--jobs", "1", "--runs", str(runs), *TINY]) == 0
    first = {run: (run / "results.json").read_text() for run in (runs / "0", runs / "1")}
    assert reproduce.main(["classic", "--seeds", "2", "--jobs", "1", "--runs", str(runs), *TINY]) == 0
    assert {run: (run / "results.json").read_text() for run in first} == first  # left as they were
    records = {folder.name: json.loads((folder / "results.json").read_text()) for folder in runs.iterdir() if folder.is_dir()}
    assert {name: (r["attention"], r["seed"], r["status"]) for name, r in records.items()} == {
        "0": ("none", 0, "completed"), "1": ("se", 0, "completed"),
        "2": ("none", 1, "completed"), "3": ("se", 1, "completed")}


def test_pack_only_packs_the_finished_runs_without_running_and_keeps_the_hand_written_notes(tmp_path, monkeypatch, capsys):
    """A CPU session packed a finished classic run by hand: --pack started the sweep's next job first,
    and packing again rewrote the notes a person had written."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # the command a CPU sweep ran
    runs, packed = tmp_path / "runs", tmp_path / "pack"
    command = reproduce.sweep_command(reproduce.TABLES["classic"], runs.resolve(), 1, None, TINY, False)
    jobs = _jobs(reproduce.Table("1-classic", "x", tuple(a for a in command[3:] if not a.startswith("hydra"))))
    _run_folder(runs / "0", "completed", jobs[0])
    _run_folder(runs / "1", "interrupted", jobs[1])
    monkeypatch.setattr(reproduce, "run_until", lambda *_, **__: pytest.fail("--pack-only ran the sweep"))
    arguments = ["classic", "--jobs", "1", "--runs", str(runs), "--pack", str(packed), "--pack-only", *TINY]
    assert reproduce.main(arguments) == 0
    table = packed / "1-classic"
    assert sorted(path.name for path in table.iterdir()) == ["0", "1", "table.yaml"]  # no speed.json: nothing ran
    meta = yaml.safe_load((table / "table.yaml").read_text())
    assert meta["notes"] == f"Runs: 1 completed, 1 interrupted. {reproduce.MADE_BY}"
    meta.update(title="Classic, on a CPU", notes="Written by hand:  \r\nwhy the\trun falls short.\n", date="2020-01-01",
                speed=False)  # trailing spaces, \r and tabs: PyYAML quoted the whole notes rather than write a | block
    (table / "table.yaml").write_text(yaml.safe_dump(meta))
    _run_folder(runs / "2", "completed", jobs[2])
    capsys.readouterr()
    assert reproduce.main(arguments) == 0
    assert (table / "2" / "results.json").is_file()
    text = (table / "table.yaml").read_text()
    again = yaml.safe_load(text)
    assert (again["title"], again["notes"]) == ("Classic, on a CPU", "Written by hand:\nwhy the run falls short.\n")
    # as a person keeps it: notes last, as a | block (they came back as quoted lines between blank ones)
    assert text.endswith("notes: |\n  Written by hand:\n  why the run falls short.\n")
    assert f"command: {again['command']}\n" in text  # one line, however long
    assert again["date"] != "2020-01-01" and again["paper"] == meta["paper"]  # refreshed
    assert again["speed"] is False  # a key the pack does not write stays
    assert "Runs: 2 completed, 1 interrupted. (table.yaml keeps its hand-written title, device and notes: update them)" \
        in capsys.readouterr().out
    # nothing to pack: a mistyped sweep folder, or runs of another command, fail instead of packing "none"
    with pytest.raises(SystemExit):
        reproduce.main(["classic", "--runs", str(tmp_path / "typo"), "--pack", str(packed), "--pack-only", *TINY])
    assert "--pack-only: no sweep folder" in capsys.readouterr().err
    assert reproduce.main(["classic", "--runs", str(runs), "--pack", str(tmp_path / "other"), "--pack-only"]) == 1
    assert "no run in" in capsys.readouterr().err and not (tmp_path / "other" / "1-classic" / "0").exists()
    # the command recorded as this tool's own (as a person writes it) names the same sweep: kept
    tool_command = f"python -m attn_zoo.tools.reproduce classic --jobs 1 --runs {runs} {' '.join(TINY)}"
    (table / "table.yaml").write_text(yaml.safe_dump({**again, "command": tool_command}))
    assert reproduce.main(arguments) == 0
    assert yaml.safe_load((table / "table.yaml").read_text())["command"] == tool_command
    (table / "table.yaml").write_text(yaml.safe_dump({**again, "command": tool_command.replace("classic", "short")}))
    with pytest.raises(SystemExit):
        reproduce.main(arguments)
    assert "holds the pack of another command (python -m attn_zoo.tools.reproduce short" in capsys.readouterr().err
    (table / "table.yaml").write_text(yaml.safe_dump({**again, "command": "python -m attn_zoo.tools.reproduce nonesuch"}))
    with pytest.raises(SystemExit):
        reproduce.main(arguments)
    assert "holds the pack of another command" in capsys.readouterr().err
    # a CPU table beside the GPU one: its own folder name
    assert reproduce.main([*arguments, "--pack-folder", "1-classic-cpu"]) == 0
    assert sorted(path.name for path in (packed / "1-classic-cpu").iterdir()) == ["0", "1", "2", "table.yaml"]
    for wrong in (["--pack-folder", "a/b", "--pack", str(packed)], ["--pack-folder", "x"]):
        with pytest.raises(SystemExit):
            reproduce.main(["classic", "--runs", str(runs), *wrong])
        assert "--pack-folder names one folder under --pack" in capsys.readouterr().err
    for wrong in (["--pack-only"], ["--pack-only", "--pack", str(packed), "--time-limit", "60"],
                  ["--pack-only", "--pack", str(packed), "--start-limit", "60", "--jobs", "1"]):
        with pytest.raises(SystemExit):
            reproduce.main(["classic", "--runs", str(runs), *wrong])
        assert "--pack-only packs without running: give --pack, and no --time-limit or --start-limit" in \
            capsys.readouterr().err


def test_the_start_limit_lets_the_running_job_finish_and_begins_no_other(tmp_path):
    """A CPU session killed the reproduce parent by hand so that its time limit would not cut a
    two-and-a-half-hour run a few epochs short, then touched .stopped so the next job ended at once."""
    script = textwrap.dedent(f"""
        import os, sys, time
        stop = os.environ["{reproduce_stop_env()}"]
        for job in range(int(sys.argv[1])):  # a sequential sweep: each job checks the stop file as it begins
            if os.path.exists(stop):
                sys.exit(143)  # run.py's exit for a job stopped before it began
            if job == 0:  # the long run: still training when the start limit passes
                deadline = time.monotonic() + 30
                while not os.path.exists(stop) and time.monotonic() < deadline:
                    time.sleep(0.05)
            open(os.path.join({str(tmp_path)!r}, f"finished-{{job}}"), "w").close()
    """)
    path, stop_file = tmp_path / "sweep.py", tmp_path / "runs" / ".stopped"
    path.write_text(script)
    finished = lambda: sorted(marker.name for marker in tmp_path.glob("finished-*"))  # noqa: E731
    code, stopped = reproduce.run_until([sys.executable, str(path), "3"], 60, lambda: False, stop_file=stop_file,
                                        start_limit_s=2)
    assert (code, stopped, finished()) == (143, True, ["finished-0"]) and not stop_file.exists()
    # the sweep's last job ends after the start limit: nothing was stopped
    code, stopped = reproduce.run_until([sys.executable, str(path), "1"], 60, lambda: False, stop_file=stop_file,
                                        start_limit_s=2)
    assert (code, stopped) == (0, False)


def test_a_sweep_stopped_at_the_start_limit_did_what_was_asked_unless_a_run_failed(tmp_path, monkeypatch, capsys):
    calls = []
    monkeypatch.setattr(reproduce, "run_until", lambda *args, **kwargs: calls.append(kwargs) or (143, True))
    assert reproduce.main(["classic", "--jobs", "1", "--runs", str(tmp_path), "--start-limit", "1", *TINY]) == 0
    assert calls[0]["start_limit_s"] == 1 and "stopped at the start limit (1 s)" in capsys.readouterr().out

    def stopped_after_a_failure(*_, **__):
        _run_folder(tmp_path / "5", "failed")
        return 143, True

    monkeypatch.setattr(reproduce, "run_until", stopped_after_a_failure)
    assert reproduce.main(["classic", "--jobs", "1", "--runs", str(tmp_path), "--start-limit", "1", *TINY]) == 1
    assert f"{tmp_path / '5'}: failed" in capsys.readouterr().out
    with pytest.raises(SystemExit):  # joblib aborts every worker when one exits: the running ones would die
        reproduce.main(["classic", "--jobs", "2", "--runs", str(tmp_path), "--start-limit", "1"])
    assert "--start-limit needs --jobs 1" in capsys.readouterr().err


@pytest.mark.parametrize("count, expected", [(1, "NVIDIA H200"), (8, "NVIDIA H200 (GPU 0 of 8 visible: every job trained on it)")])
def test_a_gpu_table_names_the_one_gpu_its_jobs_shared(monkeypatch, count, expected):
    """Every job's trainer=gpu takes GPU 0: a node of 8 is not "8 × H200" for a table trained on one."""
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index=0: "NVIDIA H200")
    assert reproduce.device_name() == expected
