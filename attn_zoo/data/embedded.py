"""The embedded default dataset: 5,000 train + 1,000 test CIFAR-10 images shipped in the package.

A class-balanced subset (500 + 100 per class) of the JPEG CIFAR-10, built by
``attn_zoo.tools.build_embedded``. It makes ``make run`` and the tests work offline on a fresh
clone; its accuracies compare runs with each other, not with published CIFAR-10 numbers.
"""
from __future__ import annotations

import io
import tarfile
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from attn_zoo.data.balanced import check_same_classes
from attn_zoo.data.cifar import CifarDataModule

EMBEDDED_ARCHIVE = Path(__file__).with_name("cifar10_subset.tar.gz")


@lru_cache(maxsize=2)
def load_image_archive(path: Path) -> dict[str, tuple[torch.Tensor, torch.Tensor, list[str]]]:
    """Decode an ImageFolder-layout tarball into ``{split: (uint8 NCHW images, labels, classes)}``."""
    images: dict[str, dict[str, list[np.ndarray]]] = {}
    shape: tuple[int, ...] | None = None  # the first image's: every image has it
    with tarfile.open(path, "r:*") as archive:
        for member in archive:
            parts = Path(member.name).parts
            if not member.isfile() or len(parts) != 3:
                continue
            split, label = parts[0], parts[1]
            try:
                picture = Image.open(io.BytesIO(archive.extractfile(member).read())).convert("RGB")
            except OSError as error:
                raise ValueError(f"{path}: cannot decode {member.name}: {error}") from error
            pixels = np.asarray(picture)
            shape = shape or pixels.shape
            if pixels.shape != shape:
                raise ValueError(f"{path}: {member.name} is {pixels.shape[1]}×{pixels.shape[0]}, the images before "
                                 f"it {shape[1]}×{shape[0]}: every image of the archive has one size")
            images.setdefault(split, {}).setdefault(label, []).append(pixels)
    splits = {}
    for split, by_class in images.items():
        classes = sorted(by_class)
        pixels = np.stack([image for name in classes for image in by_class[name]])
        labels = [index for index, name in enumerate(classes) for _ in by_class[name]]
        splits[split] = (
            torch.from_numpy(pixels).permute(0, 3, 1, 2).contiguous(),
            torch.tensor(labels, dtype=torch.long),
            classes,
        )
    return splits


class EmbeddedCIFAR10(CifarDataModule):
    """CIFAR-10 subset from a tarball in the package (or any ``archive`` of the same layout)."""

    def __init__(self, *, archive: str | Path = EMBEDDED_ARCHIVE, **loader_options):
        super().__init__(**loader_options)
        self.archive = Path(archive)

    def load_split(self, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.archive.is_file():
            raise FileNotFoundError(f"embedded dataset archive not found: {self.archive}")
        splits = load_image_archive(self.archive.resolve())
        if split not in splits:
            raise ValueError(f"{self.archive} has no '{split}' split; found {sorted(splits)}")
        images, labels, classes = splits[split]
        named = splits.get("train", splits[split])[2]
        for other in sorted(splits):  # every split, whichever is loaded first
            check_same_classes(self.archive, "train", named, other, splits[other][2])
        # the network's head, the crops and the FLOPs are CIFAR-10's: another archive trained a 10-way head
        # on 5 classes (a top-5 of 100 %) or random 32×32 patches of 64×64 images, without a word
        if len(classes) != self.num_classes or tuple(images.shape[1:]) != tuple(self.image_shape):
            size = "×".join(str(side) for side in images.shape[2:])
            raise ValueError(f"{self.archive}: '{split}' holds {len(classes)} classes of {size} images; "
                             f"this data is CIFAR-10's {self.num_classes} classes of 32×32 (for other images "
                             "use data=imagefolder)")
        return images, labels
