"""Build the embedded default dataset: a class-balanced subset of the JPEG CIFAR-10.

    python -m attn_zoo.tools.build_embedded --source ../shared/data/cifar10-jpg.tar.gz

takes images 0000…(n-1) of every class from the source tarball (ImageFolder layout:
``<split>/<class>/NNNN.jpg``), copies their JPEG bytes unchanged, and writes them in the same
layout to ``attn_zoo/data/cifar10_subset.tar.gz``. The choice is by file index, so it does not
depend on the order of the source archive.
"""
from __future__ import annotations

import argparse
import io
import tarfile
from pathlib import Path

from attn_zoo.data.embedded import EMBEDDED_ARCHIVE as DEFAULT_OUT


def _wanted(name: str, per_split: dict[str, int]) -> bool:
    parts = Path(name).parts
    if len(parts) != 3 or not parts[2].endswith(".jpg") or parts[0] not in per_split:
        return False
    stem = Path(parts[2]).stem
    return stem.isdigit() and int(stem) < per_split[parts[0]]


def build_subset(source: Path, out: Path, train_per_class: int = 500, test_per_class: int = 100) -> int:
    """Write the subset tarball; returns the number of images written."""
    per_split = {"train": train_per_class, "test": test_per_class}
    chosen: dict[str, bytes] = {}
    with tarfile.open(source, "r:gz") as archive:
        for member in archive:
            if member.isfile() and _wanted(member.name, per_split):
                chosen[member.name] = archive.extractfile(member).read()
    if not chosen:
        raise ValueError(f"{source} holds no <train|test>/<class>/NNNN.jpg files")
    temporary = out.with_suffix(".tmp")
    with tarfile.open(temporary, "w:gz") as archive:
        for name in sorted(chosen):
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(chosen[name]), 0, 0o644
            archive.addfile(info, io.BytesIO(chosen[name]))
    temporary.replace(out)
    return len(chosen)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", type=Path, required=True)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--train-per-class", type=int, default=500)
    parser.add_argument("--test-per-class", type=int, default=100)
    args = parser.parse_args()
    count = build_subset(args.source, args.out, args.train_per_class, args.test_per_class)
    print(f"wrote {count} images to {args.out} ({args.out.stat().st_size / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
