"""``python -m attn_zoo.tools.jpeg_folder``: a synthetic ImageNet-like JPEG folder that data=imagefolder reads."""
from PIL import Image

from attn_zoo.data import ImageFolder
from attn_zoo.tools import jpeg_folder
from tests.helpers import ROOT


def test_folder_layout_sizes_and_reruns(tmp_path, capsys):
    assert jpeg_folder.main(["--out", str(tmp_path), "--classes", "3", "--train-per-class", "2", "--val-per-class", "1", "--jobs", "2"]) == 0
    assert "9 images" in capsys.readouterr().out
    train, val = sorted((tmp_path / "train").rglob("*.jpg")), sorted((tmp_path / "val").rglob("*.jpg"))
    assert [p.relative_to(tmp_path).as_posix() for p in val] == [f"val/class000{c}/00000.jpg" for c in range(3)]
    assert len(train) == 6
    for path in train + val:
        assert 50_000 < path.stat().st_size < 200_000  # an ImageNet photo's ~110 KB
        with Image.open(path) as image:
            assert image.format == "JPEG" and 450 <= max(image.size) <= 550
    before = {path: path.read_bytes() for path in train}
    train[0].unlink()
    jpeg_folder.make_folder(tmp_path, 3, 2, 1)  # writes the missing file, the same bytes as before
    assert {path: path.read_bytes() for path in train} == before
    assert not list(tmp_path.rglob("*.tmp"))


def test_imagefolder_data_reads_it(tmp_path):
    jpeg_folder.make_folder(tmp_path, classes=2, train_per_class=2, val_per_class=1)
    datamodule = ImageFolder(root=str(tmp_path), image_size=64, batch_size=2, num_workers=0)
    datamodule.setup("fit")
    images, labels = next(iter(datamodule.train_dataloader()))
    assert images.shape == (2, 3, 64, 64) and datamodule.num_classes == 2


def test_bad_counts_fail_in_one_line(tmp_path, capsys):
    assert jpeg_folder.main(["--out", str(tmp_path), "--classes", "0"]) == 2
    assert capsys.readouterr().err == "error: classes must be >= 1, got 0\n"


def test_images_are_shaped_as_imagenet_photos():
    """A mean of about 182,000 pixels (ImageNet's mean 469x387) and a median shape of 4:3 landscape:
    sides of 400-600 px at ratios spread evenly over 3:4-4:3 gave 220,000, near square."""
    import numpy as np

    sizes = [jpeg_folder.image_size(np.random.default_rng(seed)) for seed in range(2000)]
    pixels = np.mean([width * height for width, height in sizes])
    assert abs(pixels / (469 * 387) - 1) < 0.03
    assert abs(np.median([width / height for width, height in sizes]) - 4 / 3) < 0.01
    assert 0.15 < np.mean([height > width for width, height in sizes]) < 0.25


def test_parallel_writing_finishes_in_a_process_whose_threads_hold_locks(tmp_path):
    """As in a test runner's worker, where the suite once hung: a thread blocked reading stdin holds its
    lock, and an earlier run left a Python SIGTERM handler. A forked pool worker closed stdin on start
    (multiprocessing does), waited on that lock forever, and ignored the pool's SIGTERM (its Python
    handler never ran), so the pool's exit waited for it forever. The pool's workers start fresh."""
    import contextlib
    import os
    import signal
    import subprocess
    import sys
    import textwrap

    script = tmp_path / "locked.py"
    script.write_text(textwrap.dedent(f"""
        import io, os, signal, sys, threading, time
        from pathlib import Path
        from attn_zoo.tools import jpeg_folder

        if __name__ == "__main__":
            reader, _ = os.pipe()
            sys.stdin = io.BufferedReader(io.FileIO(reader, "rb"))
            threading.Thread(target=lambda: sys.stdin.read(1), daemon=True).start()
            time.sleep(0.2)
            signal.signal(signal.SIGTERM, lambda *args: None)
            done = threading.Event()
            threading.Thread(target=lambda: (jpeg_folder.make_folder(Path({str(tmp_path / 'out')!r}), 2, 2, 1, jobs=2),
                                             done.set()), daemon=True).start()
            print("finished" if done.wait(60) else "hung", flush=True)
            os._exit(0)
    """))
    process = subprocess.Popen([sys.executable, str(script)], cwd=tmp_path, start_new_session=True, text=True,
                               stdout=subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        stdout, _ = process.communicate(timeout=120)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)  # a hung pool's workers with it
    assert stdout.strip() == "finished"
