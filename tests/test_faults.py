"""Faults are survived and no result is lost: divergence, SIGTERM/SIGINT, half-written or foreign
results.json files, two runs aiming at one folder, unsafe checkpoint loading, leaked secrets."""
import json
import re
import signal

import pytest

from analysis.summarize import main as summarize_main
from tests.helpers import QUICK, ROOT, run_entry_point, signal_after_first_checkpoint

LONG = (
    "trainer.max_epochs=5", "trainer.limit_train_batches=4", "trainer.limit_val_batches=1",
    "trainer.enable_progress_bar=false", "logger=none", "data.batch_size=16",
)


def _results(folder):
    return json.loads((folder / "results.json").read_text())


def test_divergence_is_recorded_with_its_step_and_the_sweep_goes_on(tmp_path):
    sweep = tmp_path / "sweep"
    completed = run_entry_point(
        "-m", *QUICK, "sched=none", "trainer.limit_train_batches=6", "optim.lr=1e30,0.1",
        f"hydra.sweep.dir={sweep}", cwd=tmp_path,
    )
    # the sweep goes on and reports the diverged job at the end, in one line
    assert completed.returncode != 0 and "diverged: non-finite loss at step" in completed.stderr, completed.stderr[-2000:]
    diverged, finished = _results(sweep / "0"), _results(sweep / "1")
    assert diverged["status"] == "diverged", diverged.get("error")
    assert isinstance(diverged["diverged_at_step"], int) and 0 <= diverged["diverged_at_step"] < 6
    assert finished["status"] == "completed" and finished["config"]["optim"]["lr"] == 0.1


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_saves_a_checkpoint_and_a_rerun_resumes(tmp_path, signum):
    out = tmp_path / "run"
    returncode, stderr = signal_after_first_checkpoint(*LONG, out=out, cwd=tmp_path, signum=signum)
    checkpoint = out / "checkpoints" / "last.ckpt"
    results = _results(out)
    assert results["status"] == "interrupted", (results["status"], stderr[-2000:])
    assert results["interrupted_by"] == signum.name and returncode == 128 + signum
    assert f"checkpoint saved to {checkpoint}; rerun the same command to resume" in stderr
    assert results["epochs"] < 5
    if signum == signal.SIGINT:
        return  # the same checkpoint: resuming it is checked once, for SIGTERM

    resumed = run_entry_point(*LONG, f"hydra.run.dir={out}", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    after = _results(out)
    assert after["status"] == "completed" and after["resumed_from"] == str(checkpoint)
    assert [row["epoch"] for row in after["history"]] == [0, 1, 2, 3, 4]


# a rerun into a completed folder: tests/test_training.py::test_rerun_into_a_completed_folder_does_not_overwrite;
# a folder held by a live run: tests/test_errors.py::test_a_folder_in_use_by_a_live_run_is_refused


def test_sweep_jobs_get_one_folder_each():
    config = (ROOT / "conf" / "config.yaml").read_text()
    assert re.search(r"sweep:\s*\n\s*dir: .*\n\s*subdir: \$\{hydra\.job\.num\}", config)


def test_secrets_from_the_environment_never_reach_results_or_logs(tmp_path):
    out = tmp_path / "run"
    completed = run_entry_point(
        "trainer=debug", "logger=csv", "+extra=${oc.env:WANDB_API_KEY}", "+token_note=${oc.env:MY_SERVICE_TOKEN}",
        f"hydra.run.dir={out}", cwd=tmp_path, env={"WANDB_API_KEY": "sekrit-123", "MY_SERVICE_TOKEN": "tok-456789"},
    )
    assert completed.returncode == 0, completed.stderr[-2000:]
    results = _results(out)
    assert results["config"]["extra"] == "<redacted>" and results["config"]["token_note"] == "<redacted>"
    for path in [p for p in out.rglob("*") if p.is_file()]:
        content = path.read_bytes()
        assert b"sekrit-123" not in content and b"tok-456789" not in content, path
    assert "sekrit-123" not in completed.stdout + completed.stderr


def test_the_summary_survives_any_broken_results_file(tmp_path, capsys):
    runs = tmp_path / "runs"
    broken = {
        "list": "[]", "schema_only": '{"schema": 1}', "half": '{"schema": 1, "status": "compl',
        "empty": "", "whitespace": "  \n", "wrong_types": '{"schema": 1, "status": "completed", "top1": "high", '
        '"seed": [1], "data": {"x": 1}, "params": true}', "nan": '{"schema": 1, "status": "completed", "top1": NaN}',
    }
    for name, text in broken.items():
        (runs / name).mkdir(parents=True)
        (runs / name / "results.json").write_text(text)
    (runs / "a_directory" / "results.json").mkdir(parents=True)
    (runs / "no_results" / ".hydra").mkdir(parents=True)
    assert summarize_main([str(runs), "--out", str(tmp_path / "out")]) == 0
    printed = capsys.readouterr()
    for name in ("list", "half", "empty", "whitespace", "a_directory", "no_results"):
        assert str(runs / name / "results.json") in printed.err
    assert (tmp_path / "out" / "runs.csv").is_file() and (tmp_path / "out" / "summary.md").is_file()


def test_the_summary_survives_a_binary_results_file(tmp_path):
    (tmp_path / "binary").mkdir()
    (tmp_path / "binary" / "results.json").write_bytes(b"\xff\xfe\x00 garbage")
    assert summarize_main([str(tmp_path), "--out", str(tmp_path / "out")]) == 0


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
