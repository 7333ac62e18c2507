"""Which code trained a run: the git commit of the checkout attn_zoo runs from, ``+dirty.<digest>``
when the code a run uses differs from that commit or code the commit lacks lies beside it (an
untracked file under ``attn_zoo/`` or ``conf/``: a module added in one file, not yet committed), the
digest telling two different sets of uncommitted changes apart; ``+dirty`` when only other tracked
files differ; ``+dirty?`` when git could not say (never the bare commit); else, for an installed
copy, the package's version.

Runs of one table can span weeks of commits (a sweep resumed in later sessions): results.json lists
every version that trained the run, in order, so a reader can tell which runs share their code.
"""
from __future__ import annotations

import functools
import hashlib
import subprocess
from importlib import metadata
from pathlib import Path

PACKAGE_ROOT = Path(__file__).resolve().parent.parent  # the checkout, for an editable install
CODE_PATHS = ("attn_zoo", "conf", "run.py")  # what a run imports or composes (git-ignored files aside)


@functools.cache
def code_version() -> str:
    """``3b13b77c1f0a``, ``3b13b77c1f0a+dirty.1f2e3d4c``, ``3b13b77c1f0a+dirty?``, ``attn_zoo 0.1.0`` (an
    installed copy) or ``unknown``."""
    toplevel = _git("rev-parse", "--show-toplevel")
    # only the package's own checkout: an installed copy may lie inside some other repository (a venv in it)
    if toplevel is not None and Path(toplevel).resolve() == PACKAGE_ROOT:
        commit = _git("rev-parse", "--short=12", "HEAD")
        if commit:
            return commit + _uncommitted()
    try:
        return f"attn_zoo {metadata.version('attn_zoo')}"
    except metadata.PackageNotFoundError:
        return "unknown"


def _uncommitted() -> str:
    """'' for a clean checkout; ``+dirty.<8 hex>`` where the code a run uses (``CODE_PATHS``) differs
    from the commit, the hex a digest of those changes and of the untracked files among that code
    (names and contents): runs of two different edits of one commit are two codes, and a run resumed
    after another edit lists both; ``+dirty`` alone where only other tracked files differ (README,
    tests, analysis: the commit's training code); ``+dirty?`` where git failed or timed out (a clean
    answer is never assumed)."""
    tracked = _git("status", "--porcelain", "--untracked-files=no")
    untracked = _git("ls-files", "-z", "--others", "--exclude-standard", "--", *CODE_PATHS)
    if tracked is None or untracked is None:
        return "+dirty?"
    if not tracked and not untracked:
        return ""
    changes = _git("diff", "HEAD", "--binary", "--no-ext-diff", "--no-textconv", "--", *CODE_PATHS)
    if changes is None:
        return "+dirty?"
    if not changes and not untracked:
        return "+dirty"
    digest = hashlib.sha256(changes.encode())
    for name in sorted(filter(None, untracked.split("\0"))):
        digest.update(b"\0" + name.encode() + b"\0")
        try:
            digest.update((PACKAGE_ROOT / name).read_bytes())
        except OSError:
            return "+dirty?"
    return f"+dirty.{digest.hexdigest()[:8]}"


def _git(*args: str) -> str | None:
    try:
        completed = subprocess.run(["git", "-C", str(PACKAGE_ROOT), *args], capture_output=True, text=True,
                                   errors="replace", timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return completed.stdout.strip() if completed.returncode == 0 else None


def versions_after_resume(earlier: list[str] | None, resumed: bool) -> list[str]:
    """The code versions of a run: those its checkpoint lists (``unknown`` for a checkpoint saved
    before they were recorded), then this process's when it differs from the last."""
    versions = list(earlier or (["unknown"] if resumed else []))
    current = code_version()
    return versions if versions and versions[-1] == current else [*versions, current]
