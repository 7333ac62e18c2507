"""A synthetic ImageNet-like JPEG folder for input-pipeline speed tests, made on the machine.

    python -m attn_zoo.tools.jpeg_folder --out .data/synthetic-imagenet --classes 1000 --train-per-class 20 --val-per-class 2 --jobs 16

What matters to a loader's speed is what it decodes and resizes, not what the pictures show: each
image is a smooth random colour field (four octaves of bicubic-upsampled Gaussian noise) of
ImageNet's shapes: the longer side 450-550 px (most ImageNet photos have 500), 4:3 (seven in ten) or
3:2, upright one time in five: a mean of about 182,000 pixels, as ImageNet's mean of 469x387, and a
median shape of 500x375, saved as JPEG at quality 90: about 110 KB, like an ImageNet photo. (Sides of
400-600 px at ratios spread evenly over 3:4-4:3 gave near-square images of 220,000 pixels on average,
a fifth more to decode and resize than ImageNet's.) Image ``i`` of class ``c`` in a
split comes from its own seed, so a folder is the same on every machine and a rerun into a partly
written folder only writes the missing files.

Layout: ``<out>/train/<class>/<i>.jpg`` and ``<out>/val/<class>/<i>.jpg``, as ``data=imagefolder``
reads it (``data.root=<out>``).
"""
from __future__ import annotations

import argparse
import os
import sys
import zlib
import multiprocessing
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

# (cells across the width, amplitude): coarse shapes to fine texture; the finest octave sets the
# JPEG size (amplitude 45 gives ~110 KB at quality 90 for 500x375)
OCTAVES = ((4, 60.0), (16, 35.0), (64, 20.0), (256, 45.0))
QUALITY = 90
SPLITS = ("train", "val")


def image_seed(split: str, label: int, index: int) -> int:
    return zlib.crc32(f"{split}/{label}/{index}".encode())


def image_size(rng: np.random.Generator) -> tuple[int, int]:
    """(width, height) of one image, drawn as ImageNet's photos are shaped (see the module docstring)."""
    longer = int(rng.integers(450, 551))
    shorter = round(longer * (3 / 4 if rng.random() < 0.7 else 2 / 3))
    return (shorter, longer) if rng.random() < 0.2 else (longer, shorter)


def synthetic_image(seed: int) -> Image.Image:
    """A smooth random colour field of ImageNet-like size, the same for the same seed."""
    rng = np.random.default_rng(seed)
    width, height = image_size(rng)
    field = np.full((height, width, 3), 128.0, np.float32) + rng.normal(0, 40, 3).astype(np.float32)
    for cells, amplitude in OCTAVES:
        rows = max(2, round(cells * height / width))
        noise = rng.normal(0, 1, (rows, cells, 3)).astype(np.float32)
        for channel in range(3):
            layer = Image.fromarray(noise[..., channel]).resize((width, height), Image.BICUBIC)
            field[..., channel] += amplitude * np.asarray(layer)
    return Image.fromarray(np.clip(field, 0, 255).astype(np.uint8))


def _write(task: tuple[str, str, int, int]) -> int:
    """Write one image unless a complete one is there; returns the bytes on disk."""
    path, split, label, index = task
    target = Path(path)
    if not target.is_file() or target.stat().st_size == 0:
        temporary = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        synthetic_image(image_seed(split, label, index)).save(temporary, "JPEG", quality=QUALITY)
        temporary.replace(target)  # a stopped run leaves no half-written JPEG behind
    return target.stat().st_size


def tasks(out: Path, classes: int, per_split: dict[str, int]) -> list[tuple[str, str, int, int]]:
    found = []
    for split, count in per_split.items():
        for label in range(classes):
            folder = out / split / f"class{label:04d}"
            folder.mkdir(parents=True, exist_ok=True)
            found += [(str(folder / f"{index:05d}.jpg"), split, label, index) for index in range(count)]
    return found


def make_folder(out: Path, classes: int, train_per_class: int, val_per_class: int, jobs: int = 1) -> tuple[int, int]:
    """Write the folder; returns (images, bytes)."""
    for name, value in (("classes", classes), ("train_per_class", train_per_class), ("val_per_class", val_per_class), ("jobs", jobs)):
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
    work = tasks(out, classes, {"train": train_per_class, "val": val_per_class})
    if jobs == 1:
        sizes = [_write(task) for task in work]
    else:
        # fresh interpreters, not forks: a process forked while another of its threads held a lock
        # (a test runner's, a data loader's) can wait on that lock forever, and the pool's exit with it
        with multiprocessing.get_context("spawn").Pool(jobs) as pool:
            sizes = pool.map(_write, work, chunksize=16)
    return len(sizes), sum(sizes)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m attn_zoo.tools.jpeg_folder", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--train-per-class", type=int, default=20)
    parser.add_argument("--val-per-class", type=int, default=2)
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args(argv)
    try:
        count, size = make_folder(args.out, args.classes, args.train_per_class, args.val_per_class, args.jobs)
    except (ValueError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"{count} images, {size / count / 1e3:.0f} KB each on average, {size / 1e9:.2f} GB in {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
