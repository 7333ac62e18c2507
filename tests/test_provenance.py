"""``attn_zoo.provenance``: which code trained a run (the checkout's commit, +dirty.<digest>, or the installed
version), and every version a resumed run went through."""
import subprocess

import pytest
import torch

from attn_zoo import checkpoints, provenance
from tests.helpers import ROOT, TWO_EPOCHS, as_killed, results, run_entry_point


@pytest.fixture
def fresh_cache():
    provenance.code_version.cache_clear()
    yield
    provenance.code_version.cache_clear()


def _git(*args):
    completed = subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True)
    return completed.stdout.strip() if completed.returncode == 0 else None


def test_a_checkout_gives_its_commit_and_whether_tracked_files_changed(fresh_cache):
    commit = _git("rev-parse", "--short=12", "HEAD")
    if commit is None:
        pytest.skip("not a git checkout")
    dirty = bool(_git("status", "--porcelain", "--untracked-files=no")
                 or _git("status", "--porcelain", "--untracked-files=all", "--", "attn_zoo", "conf", "run.py"))
    version = provenance.code_version()
    assert version.startswith(commit + "+dirty") if dirty else version == commit


def test_an_uncommitted_module_file_makes_the_checkout_dirty(fresh_cache, monkeypatch, tmp_path):
    """README's one-file module, not yet committed, trained runs recorded as the clean commit that lacks it."""
    repo = tmp_path / "repo"
    (repo / "attn_zoo" / "attention").mkdir(parents=True)
    (repo / "attn_zoo" / "attention" / "se.py").write_text("# se\n")
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-qm", "c"], check=True)
    monkeypatch.setattr(provenance, "PACKAGE_ROOT", repo.resolve())
    clean = provenance.code_version()
    assert len(clean) == 12 and "+" not in clean
    (repo / "notes.txt").write_text("not code")  # untracked, but no code a run uses
    provenance.code_version.cache_clear()
    assert provenance.code_version() == clean
    (repo / "attn_zoo" / "attention" / "my_gate.py").write_text("# a new module\n")
    provenance.code_version.cache_clear()
    assert provenance.code_version().startswith(clean + "+dirty.")


def _version(provenance_module):
    provenance_module.code_version.cache_clear()
    return provenance_module.code_version()


def test_two_different_uncommitted_edits_are_two_codes(fresh_cache, monkeypatch, tmp_path):
    """'+dirty' was one bit: runs of two different edits of one commit read as one code, and a run
    resumed after a fix (still uncommitted) listed one version."""
    repo = tmp_path / "repo"
    (repo / "attn_zoo").mkdir(parents=True)
    (repo / "attn_zoo" / "se.py").write_text("reduction = 16\n")
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-qm", "c"], check=True)
    monkeypatch.setattr(provenance, "PACKAGE_ROOT", repo.resolve())
    clean = _version(provenance)
    (repo / "attn_zoo" / "se.py").write_text("reduction = 8\n")
    first = _version(provenance)
    (repo / "attn_zoo" / "se.py").write_text("reduction = 4\n")
    second = _version(provenance)
    assert first.startswith(clean + "+dirty.") and second.startswith(clean + "+dirty.") and first != second
    (repo / "attn_zoo" / "se.py").write_text("reduction = 8\n")
    assert _version(provenance) == first  # the same edit, the same code
    (repo / "attn_zoo" / "gate.py").write_text("# new\n")
    with_new = _version(provenance)
    (repo / "attn_zoo" / "gate.py").write_text("# new, changed\n")
    assert len({first, with_new, _version(provenance)}) == 3  # untracked code counts by its contents
    (repo / "attn_zoo" / "gate.py").unlink()
    (repo / "attn_zoo" / "se.py").write_text("reduction = 16\n")
    (repo / "README.md").write_text("notes\n")
    subprocess.run([*git, "add", "README.md"], check=True)
    assert _version(provenance) == clean + "+dirty"  # only files a run does not use differ: no digest


def test_a_git_that_fails_is_never_read_as_a_clean_checkout(fresh_cache, monkeypatch):
    real = provenance._git

    def status_fails(*args):
        return None if args[0] == "status" else real(*args)

    monkeypatch.setattr(provenance, "_git", status_fails)
    commit = real("rev-parse", "--short=12", "HEAD")
    if commit is None:
        pytest.skip("not a git checkout")
    assert provenance.code_version() == commit + "+dirty?"


def test_an_installed_copy_outside_its_checkout_gives_the_package_version(fresh_cache, monkeypatch, tmp_path):
    """A copy in site-packages may lie inside another repository (a venv in it): that repository's
    commit is not the copy's code."""
    inside = tmp_path / "repo" / "site-packages"
    inside.mkdir(parents=True)
    subprocess.run(["git", "init", "-q", str(tmp_path / "repo")], check=True)
    monkeypatch.setattr(provenance, "PACKAGE_ROOT", inside)
    assert provenance.code_version().startswith("attn_zoo ")


def test_a_resumed_run_lists_the_versions_it_went_through(two_epoch_copy):
    run_copy = two_epoch_copy
    as_killed(run_copy)
    last = run_copy / "checkpoints" / "last.ckpt"
    saved = torch.load(last, weights_only=True)
    saved[checkpoints.RUN_RECORD]["code_versions"] = ["0123456789ab"]  # trained by another commit so far
    torch.save(saved, last)
    again = run_entry_point(*TWO_EPOCHS, f"hydra.run.dir={run_copy}", cwd=run_copy.parent)
    assert again.returncode == 0, again.stderr[-2000:]
    assert results(run_copy)["code_versions"] == ["0123456789ab", provenance.code_version()]
    # said as it resumes, not only in results.json
    assert f"resuming under code {provenance.code_version()}, the checkpoint was trained by 0123456789ab" in \
        again.stdout + again.stderr


def test_versions_after_a_resume():
    current = provenance.code_version()
    assert provenance.versions_after_resume(None, resumed=False) == [current]
    assert provenance.versions_after_resume(None, resumed=True) == ["unknown", current]  # an older checkpoint
    assert provenance.versions_after_resume([current], resumed=True) == [current]
    assert provenance.versions_after_resume(["a", current], resumed=True) == ["a", current]
