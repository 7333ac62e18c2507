"""Which code trained a run: the git commit of the checkout attn_zoo runs from, ``+dirty`` when its
tracked files differ from that commit or code the commit lacks lies beside it (an untracked file
under ``attn_zoo/`` or ``conf/``: a module added in one file, not yet committed); else, for an
installed copy, the package's version.

Runs of one table can span weeks of commits (a sweep resumed in later sessions): results.json lists
every version that trained the run, in order, so a reader can tell which runs share their code.
"""
from __future__ import annotations

import functools
import subprocess
from importlib import metadata
from pathlib import Path

PACKAGE_ROOT = Path(__file__).resolve().parent.parent  # the checkout, for an editable install
CODE_PATHS = ("attn_zoo", "conf", "run.py")  # what a run imports or composes (git-ignored files aside)


@functools.cache
def code_version() -> str:
    """``3b13b77c1f0a``, ``3b13b77c1f0a+dirty``, ``attn_zoo 0.1.0`` (an installed copy) or ``unknown``."""
    toplevel = _git("rev-parse", "--show-toplevel")
    # only the package's own checkout: an installed copy may lie inside some other repository (a venv in it)
    if toplevel is not None and Path(toplevel).resolve() == PACKAGE_ROOT:
        commit = _git("rev-parse", "--short=12", "HEAD")
        if commit:
            return commit + ("+dirty" if is_dirty() else "")
    try:
        return f"attn_zoo {metadata.version('attn_zoo')}"
    except metadata.PackageNotFoundError:
        return "unknown"


def is_dirty() -> bool:
    """Tracked files differ from HEAD, or an untracked file lies among the code a run uses."""
    return bool(_git("status", "--porcelain", "--untracked-files=no")
                or _git("status", "--porcelain", "--untracked-files=all", "--", *CODE_PATHS))


def _git(*args: str) -> str | None:
    try:
        completed = subprocess.run(["git", "-C", str(PACKAGE_ROOT), *args], capture_output=True, text=True,
                                   timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return completed.stdout.strip() if completed.returncode == 0 else None


def versions_after_resume(earlier: list[str] | None, resumed: bool) -> list[str]:
    """The code versions of a run: those its checkpoint lists (``unknown`` for a checkpoint saved
    before they were recorded), then this process's when it differs from the last."""
    versions = list(earlier or (["unknown"] if resumed else []))
    current = code_version()
    return versions if versions and versions[-1] == current else [*versions, current]
