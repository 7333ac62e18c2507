"""wandb as its users expect, checked on real offline runs read back from their ``.wandb`` files:
the flattened resolved config as the run config, the sweep as the group, the variant as the job
type; and ``summarize.py --wandb`` maps exactly what those runs wrote onto results.json's keys."""
import json
import math
import os
import subprocess
import sys

import pytest

from attn_zoo.config import compose
from analysis.summarize import is_completed, scan, summarize, wandb_records
from attn_zoo.train import _wandb_run_fields, flat_config
from tests.helpers import ROOT, run_entry_point
from tests.wandb_file import offline_run, records

SWEEP_LRS = ("0.1", "1e30", "1e300")  # 1e30 diverges at once (wandb state still finished); 1e300 overflows: fails


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """Three real offline runs of one Hydra sweep (``logger=csv_wandb``, ``trainer=debug``)."""
    home = tmp_path_factory.mktemp("home")
    folder = home / "sweep"
    env = {key: value for key, value in os.environ.items() if not key.startswith("WANDB")}
    env.update(HOME=str(home), NETRC=str(home / "no-netrc"), WANDB_MODE="offline", OMP_NUM_THREADS="1")
    completed = run_entry_point(
        "-m", "trainer=debug", "logger=csv_wandb", "attention=se", "attention.reduction=8", "seed=5",
        f"optim.lr={','.join(SWEEP_LRS)}", f"hydra.sweep.dir={folder}", cwd=home, env=env,
    )
    # the diverged and the failed job both fail the sweep; Hydra names the first of them
    assert completed.returncode == 1 and "diverged: non-finite loss" in completed.stderr, completed.stderr[-3000:]
    jobs = [folder / str(number) for number in range(len(SWEEP_LRS))]
    return folder, [(json.loads((job / "results.json").read_text()), offline_run(job)) for job in jobs]


def test_an_offline_run_carries_the_flat_config_the_sweep_group_and_the_variant(sweep):
    folder, jobs = sweep
    (first, first_run), (_, second_run), _ = jobs
    assert [results["status"] for results, _ in jobs] == ["completed", "diverged", "failed"]
    assert [run.state for _, run in jobs] == ["finished", "finished", "failed"]  # wandb's exit code
    for results, run in jobs:
        # every resolved key, dotted, with the name, group and job type the run got (the config's are null)
        got = {"logger.wandb.name": run.name, "logger.wandb.group": run.group, "logger.wandb.job_type": run.job_type}
        assert run.config == {**flat_config(results["config"]), **got}
        assert results["config"]["logger"]["wandb"]["group"] is None
        assert run.group == str(folder) and run.job_type == "se[reduction=8]"
        assert run.name == "resnet20-se[reduction=8]-s5" and run.tags == ["se", "resnet20", "embedded"]
        assert run.summary["status"] == results["status"]
        assert run.summary["params"] == results["params"] and run.summary["flops"] == results["flops"]
        assert run.summary["attention_variant"] == "se[reduction=8]"
    config = first_run.config
    assert config["attention.name"] == "se" and config["attention.reduction"] == 8
    assert config["backbone.name"] == "resnet20" and config["backbone.placement"] == "standard"
    assert config["backbone.stages"] == [1, 2, 3] and config["seed"] == 5 and config["data.name"] == "embedded"
    assert config["optim.lr"] == 0.1 and second_run.config["optim.lr"] == 1e30
    assert config["trainer.limit_val_batches"] == 2 and "_wandb" not in config
    assert first_run.summary["top1"] == first["top1"] and first_run.summary["epochs"] == 1
    assert first_run.summary["paired_by_seed"] is True  # summarize --wandb pairs seeds from it
    assert len({run.id for _, run in jobs}) == 3 and first["wandb_run_id"] == first_run.id  # each job closed its run


class _FakeApi:
    """``wandb.Api()`` for the network call alone: ``runs(path)`` returns runs read from .wandb files."""

    def __init__(self, runs):
        self._runs, self.asked = runs, []

    def runs(self, path):
        self.asked.append(path)
        return list(self._runs)


def test_summarize_maps_what_the_offline_runs_wrote(sweep):
    _, jobs = sweep
    api = _FakeApi([run for _, run in jobs])
    mapped = wandb_records("me/zoo", api=api)
    assert api.asked == ["me/zoo"]
    keys = ("status", "data", "backbone", "attention", "attention_variant", "seed", "params", "flops", "top1",
            "top5", "best_top1", "best_epoch", "epochs", "wall_time_s", "train_images_per_s", "finished_at")
    for (results, run), (record, origin) in zip(jobs, mapped):
        assert origin == f"wandb:me/zoo/{run.id}"
        for key in keys:
            expected, got = results.get(key), record.get(key)
            assert got == expected or (isinstance(got, float) and math.isnan(got) and math.isnan(expected)), key
        expected = json.loads(json.dumps(results["config"]))  # nested again, as results.json
        expected["logger"]["wandb"].update(name=run.name, group=run.group, job_type=run.job_type)  # what it got
        assert record["config"] == expected
    (_, _), (diverged, _), (failed, _) = mapped
    assert failed["error"] == jobs[2][0]["error"] and "overflow" in failed["error"].lower()  # the reason, not "failed"
    assert diverged["diverged_at_step"] == jobs[1][0]["diverged_at_step"] is not None
    assert diverged["error"] == f"diverged: non-finite loss at step {diverged['diverged_at_step']}"
    runs = scan([], mapped).runs
    assert runs["status"].tolist() == ["completed", "diverged", "failed"]
    assert is_completed(runs).tolist() == [True, False, False]  # only the completed run is averaged
    table = summarize(runs).set_index("attention")
    assert table.loc["se[reduction=8]", "n"] == 1
    assert table.loc["se[reduction=8]", "top1_mean"] == pytest.approx(jobs[0][0]["top1"])


def test_a_group_and_job_type_the_user_gives_win():
    cfg = compose(["logger=wandb", "paths.output_dir=unused", "logger.wandb.group=table13", "logger.wandb.job_type=probe",
                   "logger.wandb.name=mine"])
    fields = _wandb_run_fields(cfg, cfg.logger.wandb)
    assert fields["group"] == "table13" and fields["job_type"] == "probe" and fields["name"] == "mine"
    assert fields["config"]["logger.wandb.group"] == "table13" and fields["config"]["attention.name"] == "none"


@pytest.mark.parametrize("state, summary, status", [
    ("crashed", {}, "failed"),  # killed before it could write its status
    ("finished", {"_runtime": 3}, "failed"),  # not an attn_zoo run: no status of its own
    ("failed", {"status": "interrupted"}, "interrupted"),  # stopped by a signal: its own word counts
    ("running", {}, "running"),
])
def test_a_run_without_its_own_status_is_not_completed(state, summary, status):
    from analysis.summarize import _wandb_status

    assert _wandb_status(state, summary) == status


def test_secrets_in_the_config_do_not_reach_wandb(monkeypatch):
    monkeypatch.setenv("ZOO_API_TOKEN", "s3cr3t-value")
    cfg = compose(["logger=wandb", "paths.output_dir=unused", "logger.wandb.entity=${oc.env:ZOO_API_TOKEN}"])
    assert _wandb_run_fields(cfg, cfg.logger.wandb)["config"]["logger.wandb.entity"] == "<redacted>"


def test_wandb_without_api_key_logs_offline_by_itself_with_its_model(tmp_path):
    """Offline by itself, and ``log_model`` still keeps best.ckpt as an artifact for `wandb sync`
    (it raised before training offline; online it uploaded nothing: best.ckpt is our own save)."""
    out = tmp_path / "run"
    env = {key: value for key, value in os.environ.items() if not key.startswith("WANDB")}
    env.update(HOME=str(tmp_path), NETRC=str(tmp_path / "no-netrc"))
    completed = subprocess.run(
        [sys.executable, str(ROOT / "run.py"), "trainer=debug", "logger=wandb", "attention=se", "seed=4",
         "logger.wandb.log_model=true", f"hydra.run.dir={out}"],
        capture_output=True, text=True, cwd=tmp_path, env=env, timeout=600,
    )
    assert completed.returncode == 0, completed.stderr[-2000:]
    assert "logging offline" in completed.stdout + completed.stderr
    runs = list((out / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and list(runs[0].glob("run-*.wandb"))
    assert json.loads((out / "results.json").read_text())["status"] == "completed"
    artifacts = [record.artifact for record in records(next(runs[0].glob("run-*.wandb")))
                 if record.WhichOneof("record_type") == "artifact"]
    assert [(artifact.type, sorted(artifact.aliases)) for artifact in artifacts] == [("model", ["best", "latest"])]


def test_the_flat_config_keeps_empty_groups_lists_and_the_config_order():
    nested = {"seed": 0, "sched": {}, "backbone": {"name": "resnet20", "stages": [2, 3], "extra": {"depth": {"n": 1}}}}
    assert list(flat_config(nested).items()) == [
        ("seed", 0), ("sched", {}), ("backbone.name", "resnet20"), ("backbone.stages", [2, 3]), ("backbone.extra.depth.n", 1),
    ]


def test_a_ddp_rank_other_than_the_first_ends_its_wandb_logger_without_error(monkeypatch, tmp_path):
    """On rank 1 Lightning hands out a stand-in experiment: ``run.summary.update`` raised
    AttributeError there, rank 1 exited 1 and Lightning killed rank 0 before it wrote results.json."""
    from lightning.fabric.utilities.rank_zero import rank_zero_only
    from lightning.pytorch.loggers import WandbLogger

    from attn_zoo.train import _finish_loggers

    monkeypatch.setattr(rank_zero_only, "rank", 1)
    monkeypatch.setenv("LOCAL_RANK", "1")
    results = {"status": "completed", "top1": 50.0}
    _finish_loggers([WandbLogger(save_dir=str(tmp_path), offline=True)], results)
    assert results == {"status": "completed", "top1": 50.0}  # rank 0 writes the run's record
    assert not list(tmp_path.rglob("*.wandb"))


def test_a_run_resumed_in_its_own_folder_continues_its_wandb_run(tmp_path):
    """A kill and a rerun made two wandb runs of one seed, the first left crashed (read back by
    summarize --wandb as a failed seed). Online, the checkpoint of the run's own folder names its wandb
    run and the resume logs into it; a branch from another folder's checkpoint, a fresh start and an
    offline run (wandb cannot resume those: a sync would replace the first folder's history) get new ones."""
    from types import SimpleNamespace

    from attn_zoo import checkpoints
    from attn_zoo.train import _loggers, _wandb_run_id

    cfg = compose(["logger=csv_wandb", f"paths.output_dir={tmp_path / 'run'}"])
    saved = SimpleNamespace(path=tmp_path / "run" / "checkpoints" / "last.ckpt",
                            checkpoint={checkpoints.RUN_RECORD: {"wandb_run_id": "abc123"}})
    assert _wandb_run_id(cfg, saved, tmp_path / "run", offline=False) == "abc123"
    fresh = _wandb_run_id(cfg, None, tmp_path / "run", offline=False)
    assert fresh and fresh != "abc123" and fresh != _wandb_run_id(cfg, None, tmp_path / "run", offline=False)
    assert _wandb_run_id(cfg, saved, tmp_path / "branch", offline=False) not in (None, "abc123")
    assert _wandb_run_id(cfg, saved, tmp_path / "run", offline=True) is None
    assert _wandb_run_id(compose(["logger=csv", "paths.output_dir=x"]), saved, tmp_path / "run", offline=False) is None
    [_, wandb_logger] = _loggers(cfg, "abc123")
    assert wandb_logger._wandb_init["id"] == "abc123" and wandb_logger._wandb_init["resume"] == "allow"


@pytest.mark.slow  # two runs of run.py (about 50 s): make test-slow
def test_an_offline_resume_is_a_wandb_run_of_its_own(tmp_path):
    from tests.wandb_file import records

    env = {key: value for key, value in os.environ.items() if not key.startswith("WANDB")}
    env.update(HOME=str(tmp_path), NETRC=str(tmp_path / "no-netrc"), WANDB_MODE="offline", OMP_NUM_THREADS="1")
    folder = tmp_path / "run"
    for epochs, extra in ((1, ()), (2, (f"resume={folder}",))):  # then from last.ckpt, a second epoch
        completed = run_entry_point("trainer=debug", "logger=csv_wandb", f"trainer.max_epochs={epochs}",
                                    f"hydra.run.dir={folder}", *extra, cwd=tmp_path, env=env)
        assert completed.returncode == 0, completed.stderr[-2000:]
    ids = [next(record.run.run_id for record in records(path) if record.WhichOneof("record_type") == "run")
           for path in sorted(folder.glob("wandb/offline-run-*/run-*.wandb"))]
    assert len(ids) == 2 and ids[0] != ids[1]


@pytest.mark.parametrize("reachable", [True, False])
def test_logged_in_without_a_route_to_wandb_logs_offline(monkeypatch, reachable):
    """On a compute node without internet a login kept wandb online: wandb.init waited out its
    timeout and the run failed before its first step. The server is tried first."""
    import socket

    from attn_zoo import train

    tried = []

    def connect(address, timeout=None):
        tried.append(address)
        if not reachable:
            raise OSError("Network is unreachable")
        return socket.socket()  # closed by the caller's with

    for name in ("WANDB_MODE", "WANDB_BASE_URL", "HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy",
                 "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("WANDB_CONFIG_DIR", "/nonexistent")
    monkeypatch.setenv("WANDB_API_KEY", "0" * 40)
    monkeypatch.setattr(socket, "create_connection", connect)
    cfg = compose(["logger=wandb", "paths.output_dir=unused"])
    assert train._wandb_offline(cfg) is (not reachable)
    assert tried == [("api.wandb.ai", 443)] and "WANDB_MODE" not in os.environ  # the next job decides afresh
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy:3128")  # a direct connection tests nothing there
    assert train._wandb_offline(cfg) is False and len(tried) == 1


def test_a_self_hosted_server_from_wandb_login_host_is_the_one_tried(monkeypatch, tmp_path):
    """``wandb login --host`` writes its server into wandb's settings file and netrc: that server is
    tried and that login counts (the cloud was tried, and a node reaching its own server went offline)."""
    from attn_zoo import train

    (tmp_path / "settings").write_text("[default]\nbase_url = https://wandb.example.org:8443\n")
    (tmp_path / "netrc").write_text("machine wandb.example.org\n  login user\n  password " + "0" * 40 + "\n")
    for name in ("WANDB_MODE", "WANDB_BASE_URL", "WANDB_API_KEY", "HTTPS_PROXY", "https_proxy", "HTTP_PROXY",
                 "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path))
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))
    tried = []
    monkeypatch.setattr(train, "_reachable", lambda host, port: tried.append((host, port)) or True)
    assert train._wandb_server() == ("wandb.example.org", 8443)
    assert train._wandb_offline(compose(["logger=wandb", "paths.output_dir=unused"])) is False
    assert tried == [("wandb.example.org", 8443)]


def test_an_offline_job_leaves_wandb_mode_unset_and_keeps_log_model(monkeypatch, tmp_path):
    """Lightning's ``offline=True`` set ``WANDB_MODE=dryrun`` in os.environ: every later job of the
    process (a sweep's basic launcher, a reused joblib worker) logged offline without trying the
    server; and with ``log_model`` it raised before training (offline refuses uploads)."""
    import wandb

    from attn_zoo.train import _loggers

    monkeypatch.delenv("WANDB_MODE", raising=False)
    started = []
    monkeypatch.setattr(wandb, "init", lambda **fields: started.append(fields) or object())
    cfg = compose(["logger=wandb", "logger.wandb.log_model=true", f"paths.output_dir={tmp_path}"])
    (logger,) = _loggers(cfg, None, wandb_offline=True)
    assert logger.experiment is not None
    assert started[0]["mode"] == "offline" and "WANDB_MODE" not in os.environ


def test_a_failing_wandb_summary_leaves_the_run_completed_and_closes_it(monkeypatch, tmp_path):
    """``_finish_loggers`` runs in training's ``finally``: an error there (a dead wandb service) replaced
    the run's outcome, so a finished training was recorded ``failed``, and ``wandb.finish`` was never
    called, so the sweep's next job in the process logged into this run."""
    import wandb
    from lightning.pytorch.loggers import WandbLogger

    from attn_zoo.train import _finish_loggers

    class BrokenSummary:
        def update(self, values):
            raise ConnectionResetError("wandb-core is gone")

    class Run:
        id, url, summary = "abc123", None, BrokenSummary()

    closed = []
    monkeypatch.setattr(wandb, "finish", lambda exit_code: closed.append(exit_code))
    results = {"status": "completed", "top1": 50.0}
    _finish_loggers([WandbLogger(save_dir=str(tmp_path), experiment=Run())], results)
    assert results["status"] == "completed" and closed == [0]


def test_a_ctrl_c_while_the_loggers_close_leaves_the_ended_run_as_it_ended(monkeypatch, tmp_path):
    """A Ctrl-C during wandb's upload (minutes, with log_model) turned a completed run into an interrupted
    one, its results.json rewritten after training had recorded it completed."""
    import json

    from attn_zoo import train
    from attn_zoo.callbacks import RunInterrupted

    def interrupted(loggers, results):
        raise KeyboardInterrupt

    monkeypatch.setattr(train, "_finish_loggers", interrupted)
    with pytest.raises(RunInterrupted):  # the Ctrl-C still stops the process (and a sweep)
        train.run(compose(["trainer=debug", "logger=none", f"paths.output_dir={tmp_path}"]))
    record = json.loads((tmp_path / "results.json").read_text(encoding="utf-8"))
    assert record["status"] == "completed" and record["top1"] is not None and "interrupted_by" not in record


def test_a_ctrl_c_after_training_before_its_ending_is_written_is_an_interrupted_run(monkeypatch, tmp_path):
    """Training had said completed, but the metrics were not yet taken or written: kept as completed, it
    was a completed run without a top-1 that every rerun left alone."""
    import json

    from attn_zoo import train
    from attn_zoo.callbacks import RunInterrupted

    def interrupted(datamodule):
        raise KeyboardInterrupt

    monkeypatch.setattr(train, "_data_record", interrupted)
    with pytest.raises(RunInterrupted):
        train.run(compose(["trainer=debug", "logger=none", f"paths.output_dir={tmp_path}"]))
    assert json.loads((tmp_path / "results.json").read_text(encoding="utf-8"))["status"] == "interrupted"


def test_wandb_mode_online_over_an_offline_config_reaches_no_lightning_offline_path(monkeypatch):
    """WANDB_MODE decides before ``logger.wandb.offline``: with WANDB_MODE=online the config's
    ``offline: true`` still reached Lightning, which refused ``log_model`` before training."""
    from attn_zoo import train

    monkeypatch.setenv("WANDB_MODE", "online")
    cfg = compose(["logger=wandb", "logger.wandb.offline=true", "logger.wandb.log_model=true", "paths.output_dir=x"])
    assert not train._wandb_offline(cfg)
    (logger,) = train._loggers(cfg, wandb_offline=False)
    assert logger._log_model and not logger._offline


def test_logger_wandb_offline_true_is_a_plain_override_that_decides_alone(monkeypatch):
    from attn_zoo import train

    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setattr(train, "_reachable", lambda *address, **timeout: pytest.fail("the server was tried"))
    for logger in ("wandb", "csv_wandb"):
        assert train._wandb_offline(compose([f"logger={logger}", "logger.wandb.offline=true", "paths.output_dir=x"]))


def test_every_accuracy_summarize_reads_is_in_the_wandb_summary():
    """``summarize --wandb`` reads runs back from their summaries: EMA accuracies were left out of them."""
    from analysis.summarize import ACCURACY_FIELDS
    from attn_zoo.results import WANDB_SUMMARY_KEYS

    assert set(ACCURACY_FIELDS) <= set(WANDB_SUMMARY_KEYS)
