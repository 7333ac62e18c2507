"""The tests' run.py, forked from a server that imported torch and Lightning once (tests/helpers.py
RunPy), ends as a fresh interpreter's run.py does: the same exit code, stdout and stderr lines."""
import signal
import subprocess

import pytest

from tests.helpers import QUICK, RunPy, run_entry_point


def _fresh(*overrides: str, cwd, env=None) -> subprocess.CompletedProcess:
    return RunPy(*overrides, cwd=cwd, env=env, fresh=True).wait(timeout=300)


def _without_timestamps(text: str) -> list[str]:
    return [line.split("] - ", 1)[-1] for line in text.splitlines() if "Warning" not in line]


@pytest.mark.parametrize("overrides, env", [
    (("--help",), None),                                       # stdout, exit 0
    ((*QUICK, "attention.reduction=-1"), {"HYDRA_FULL_ERROR": "0"}),  # one error line, exit 2
    ((*QUICK, "attention.reduction=-1"), {"HYDRA_FULL_ERROR": "1"}),  # an uncaught exception: traceback, exit 1
], ids=["help", "error", "traceback"])
def test_a_forked_run_ends_as_a_fresh_interpreter_does(overrides, env, tmp_path):
    runs = {how: start(*overrides, f"hydra.run.dir={tmp_path / how}", cwd=tmp_path, env=env)
            for how, start in (("forked", run_entry_point), ("fresh", _fresh))}
    forked, fresh = runs["forked"], runs["fresh"]
    assert forked.returncode == fresh.returncode, (forked.stderr[-2000:], fresh.stderr[-2000:])
    assert forked.stdout.replace("forked", "fresh") == fresh.stdout
    if env and env["HYDRA_FULL_ERROR"] == "1":
        assert "Traceback" in forked.stderr and forked.stderr.splitlines()[-1] == fresh.stderr.splitlines()[-1]
    else:
        assert _without_timestamps(forked.stderr.replace("forked", "fresh")) == _without_timestamps(fresh.stderr)


def test_a_forked_run_is_a_process_of_its_own_that_signals_end(tmp_path):
    """SIGKILL ends it with -9 as Popen reports it; the test process goes on."""
    process = RunPy(*QUICK, "trainer.max_epochs=50", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    process.send_signal(signal.SIGKILL)
    assert process.wait(timeout=60).returncode == -signal.SIGKILL


def test_a_variable_torch_reads_at_import_gets_a_fresh_interpreter(tmp_path):
    runs = [RunPy("--help", cwd=tmp_path, env={key: "1"}) for key in ("OMP_NUM_THREADS", "HYDRA_FULL_ERROR")]
    assert [run.fresh for run in runs] == [True, False]
    assert [run.wait(timeout=120).returncode for run in runs] == [0, 0]
