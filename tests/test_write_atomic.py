"""results.write_atomic: every output of a run and of analysis/ goes through it."""
import os
import subprocess
import sys
import threading
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


def test_files_another_thread_makes_meanwhile_keep_the_umask(tmp_path):
    """Reading the umask sets it to 0 for a moment: a file another thread (wandb's writer) made then
    was writable by everyone. It is read once, at import."""
    mask = os.umask(0o022)
    try:
        stop, made = threading.Event(), []

        def make_files():
            while not stop.is_set():
                path = tmp_path / f"other{len(made)}"
                path.touch()
                made.append(path)

        worker = threading.Thread(target=make_files)
        worker.start()
        try:
            for index in range(2000):
                write_atomic(tmp_path / "out" / f"{index % 5}.txt", "x")
        finally:
            stop.set()
            worker.join()
        assert made and all(path.stat().st_mode & 0o022 == 0 for path in made)
    finally:
        os.umask(mask)
