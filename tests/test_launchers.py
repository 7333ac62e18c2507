"""``hydra/launcher=parallel``: the jobs of a sweep run in n_jobs worker processes at once (joblib's loky
workers, each taking the next job when it finishes one)."""
import json

import pytest

from tests.helpers import QUICK, run_entry_point

pytest.importorskip("hydra_plugins.hydra_joblib_launcher")


def test_two_jobs_at_once_each_write_their_own_complete_results(tmp_path):
    sweep = tmp_path / "sweep"
    completed = run_entry_point(
        "-m", "hydra/launcher=parallel", "hydra.launcher.n_jobs=2", *QUICK, "attention=none,se", "optim.lr=0.1,-1",
        f"hydra.sweep.dir={sweep}", cwd=tmp_path,
    )
    records = {folder.name: json.loads((folder / "results.json").read_text()) for folder in sweep.iterdir() if folder.is_dir()}
    assert sorted(records) == ["0", "1", "2", "3"]
    by_job = {(r["attention"], r["config"]["optim"]["lr"]): r for r in records.values()}
    for attention in ("none", "se"):
        good, bad = by_job[(attention, 0.1)], by_job[(attention, -1)]
        assert good["status"] == "completed" and good["epochs"] == 1 and good["params"] > 0
        assert bad["status"] == "failed" and "lr" in bad["error"]
    assert len({r["pid"] for r in records.values()}) == 2  # n_jobs worker processes, each taking the next job
    assert completed.returncode != 0  # the failed jobs fail the sweep at its end
    assert "error:" in completed.stderr
