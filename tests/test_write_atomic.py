"""results.write_atomic: every output of a run and of analysis/ goes through it."""
import os
import subprocess
import sys
from pathlib import Path

from attn_zoo.results import write_atomic

ROOT = Path(__file__).resolve().parents[1]


def test_text_is_written_in_utf8_whatever_the_locale(tmp_path):
    """The tables hold ±, Δ and →: under an ASCII locale (LC_ALL=C without UTF-8 coercion) the
    write raised UnicodeEncodeError."""
    out = tmp_path / "summary.md"
    code = f"from pathlib import Path; from attn_zoo.results import write_atomic; write_atomic(Path({str(out)!r}), '\\u00b1 \\u0394 \\u2192')"
    env = {**os.environ, "LC_ALL": "C", "PYTHONUTF8": "0", "PYTHONCOERCECLOCALE": "0", "PYTHONPATH": str(ROOT)}
    completed = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert completed.returncode == 0, completed.stderr[-2000:]
    assert out.read_bytes() == "± Δ →".encode()


def test_writing_never_sets_the_process_umask(tmp_path, monkeypatch):
    """Reading the umask sets it to 0 for a moment: a file another thread (wandb's writer) made then
    was writable by everyone. It is read once, at import."""
    def umask(mask):
        raise AssertionError("os.umask called while writing")

    monkeypatch.setattr(os, "umask", umask)
    write_atomic(tmp_path / "out.txt", "x")
    assert (tmp_path / "out.txt").read_text() == "x"
