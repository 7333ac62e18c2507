"""What a run trains and validates on, in a few characters (results.json's ``data_fingerprint``).

``data.root`` and ``data.archive`` say where data lie, not which data they are: the summary ignores
them so the same CIFAR-10 found at two paths is one experiment, and keys on this digest instead, so
two different folders never are. Computed once at start-up from what the data module holds anyway.
"""
from __future__ import annotations

import hashlib
import os
from typing import Iterable, Sequence

import torch

DIGEST_BYTES = 8  # 16 hex characters: enough to tell data sets apart, short enough for a table column
SIZED_FILES = 256  # files of each split whose size joins an image folder's digest


def _digest():
    return hashlib.blake2b(digest_size=DIGEST_BYTES)


def of_tensors(*splits: tuple[torch.Tensor, torch.Tensor]) -> str:
    """Digest of in-memory (images, labels) splits: every pixel and label, each split's shape and
    dtype (CIFAR-10's 180 MB hash in a fraction of a second)."""
    digest = _digest()
    for split in splits:
        for tensor in split:
            tensor = tensor.detach().cpu().contiguous()
            digest.update(f"{tuple(tensor.shape)} {tensor.dtype}\n".encode())
            digest.update(tensor.numpy())
    return digest.hexdigest()


def of_files(classes: Sequence[str], splits: Iterable[tuple[str, Sequence[tuple[str, int]]]]) -> str:
    """Digest of image folders from their scan: the class names, each split's (path relative to the
    split folder, label) list, and the sizes of ``SIZED_FILES`` of its files spread evenly over it. A
    copy re-encoded under the same names (a pre-resized ImageNet beside the original) changes nearly
    every file's size, so a few hundred stat calls tell it apart; the other files are not opened or
    stat-ed, so ImageNet's 1.3 M files cost only the scan the run makes anyway."""
    digest = _digest()
    digest.update(("\n".join(classes) + "\n\n").encode())
    for folder, samples in splits:
        entries = sorted((os.path.relpath(path, folder), label, path) for path, label in samples)
        digest.update(("\n".join(f"{name}\t{label}" for name, label, _ in entries) + "\n").encode())
        step = max(1, len(entries) / SIZED_FILES)
        sized = sorted({int(position * step) for position in range(min(SIZED_FILES, len(entries)))})
        digest.update((" ".join(str(os.path.getsize(entries[index][2])) for index in sized) + "\n\n").encode())
    return digest.hexdigest()
