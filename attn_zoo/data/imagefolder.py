"""Any ImageFolder tree (``root/<split>/<class>/*.jpg``: ImageNet, Imagenette, JPEG CIFAR-10).

``augment="imagenet"`` (default): RandomResizedCrop + flip for training, resize to 256/224 of the
crop size + centre crop for evaluation (the standard ResNet recipe). ``augment="cifar"``: 4-pixel
pad + random crop + flip at ``image_size``, for small-image trees. Images are normalised with the
augmentation's usual statistics unless ``mean``/``std`` say otherwise: ImageNet's for ``imagenet``,
CIFAR-10's for ``cifar`` (those of ``data=cifar10``, so a JPEG copy of CIFAR-10 trains alike).

``loader`` says where the imagenet augmentation runs: ``cpu`` (PIL in DataLoader workers, default),
``gpu`` (workers read bytes, the training device decodes: ``gpu_decode``) or ``dali`` (an NVIDIA DALI
pipeline reads, decodes and augments: ``dali_loader``, the optional ``dali`` extra).
"""
from __future__ import annotations

import os
from functools import partial
from pathlib import Path
from typing import Iterator

import lightning as L
import torch
from PIL import Image
from torch.utils.data import DataLoader, Subset
from torchvision import datasets
from torchvision.datasets.folder import IMG_EXTENSIONS
from torchvision.transforms import v2

from attn_zoo.config_check import ConfigError
from attn_zoo.data import fingerprint
from attn_zoo.data.balanced import check_same_classes, class_interleaved_order
from attn_zoo.data.cifar import CIFAR10_MEAN, CIFAR10_STD
from attn_zoo.data.dali_loader import DaliLoader, dali_available
from attn_zoo.data.gpu_decode import DeviceDecoding, EncodedImages, collate_encoded
from attn_zoo.data.resumable import ResumableRandomSampler
from attn_zoo.data.shards import host_loader, placement

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# each augmentation's default (mean, std): the statistics of the data it is the usual recipe for
NORMALISATION = {"imagenet": (IMAGENET_MEAN, IMAGENET_STD), "cifar": (CIFAR10_MEAN, CIFAR10_STD)}
AUGMENTATIONS = ("imagenet", "cifar")
# where a batch is decoded and augmented: DataLoader workers, the training device, or a DALI pipeline
LOADERS = ("cpu", "gpu", "dali")


def load_rgb(path: str) -> Image.Image:
    """PIL loader whose error names the file that could not be read or decoded, or that is larger
    than PIL's decompression-bomb limit (a ``ConfigError``: bad input)."""
    try:
        with open(path, "rb") as stream:
            return Image.open(stream).convert("RGB")
    except Image.DecompressionBombError as error:
        raise ConfigError(f"image {path} is too large to decode safely: {error}; remove or shrink the file") from error
    except OSError as error:
        raise ConfigError(f"cannot decode image {path}: {error}; remove or replace the file") from error


def _real_folders(top: str) -> Iterator[tuple[str, list[str]]]:
    """``os.walk(top, followlinks=True)`` that enters each real folder once and never a symlink to
    a folder above it (a loop): either would list the same images again, or another class's."""
    seen: set[str] = set()
    for root, folders, files in os.walk(top, followlinks=True):
        real = os.path.realpath(root)
        if real in seen:  # reached a second way (two links to one folder)
            folders[:] = []
            continue
        seen.add(real)
        ancestors = {str(parent) for parent in Path(real).parents}
        folders[:] = sorted(
            name for name in folders
            if os.path.realpath(os.path.join(root, name)) not in seen | ancestors
        )
        yield root, sorted(files)


def _holds_an_image(folder: Path) -> bool:
    """Whether ``folder`` (or a folder below it) holds a file torchvision's ImageFolder would load.
    Stops at the first one, so a class folder of thousands of images costs one directory read."""
    return any(name.lower().endswith(IMG_EXTENSIONS) for _, files in _real_folders(str(folder)) for name in files)


class _LoopFreeImageFolder(datasets.ImageFolder):
    """torchvision's ImageFolder whose scan enters each real folder once (see ``_real_folders``)."""

    @staticmethod
    def make_dataset(directory, class_to_idx, extensions=None, is_valid_file=None, allow_empty=False):
        samples = []
        for name in sorted(class_to_idx):
            for root, files in _real_folders(os.path.join(directory, name)):
                samples += [(os.path.join(root, file), class_to_idx[name]) for file in files
                            if file.lower().endswith(extensions or IMG_EXTENSIONS)]
        return samples


def imagefolder_transforms(train: bool, augment: str, image_size: int, mean, std) -> v2.Compose:
    finish = [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)]
    if augment == "cifar":
        steps = [v2.Resize((image_size, image_size))]
        if train:
            steps += [v2.RandomCrop(image_size, padding=4), v2.RandomHorizontalFlip()]
        return v2.Compose(steps + finish)
    if train:
        return v2.Compose([v2.RandomResizedCrop(image_size, antialias=True), v2.RandomHorizontalFlip(), *finish])
    resize = int(round(image_size * 256 / 224))
    return v2.Compose([v2.Resize(resize, antialias=True), v2.CenterCrop(image_size), *finish])


class ImageFolder(L.LightningDataModule):
    def __init__(
        self,
        *,
        root: str,
        train_dir: str = "train",
        val_dir: str = "val",
        image_size: int = 224,
        augment: str = "imagenet",
        batch_size: int = 256,
        eval_batch_size: int | None = None,
        num_workers: int = 8,
        mean: tuple[float, float, float] | None = None,
        std: tuple[float, float, float] | None = None,
        loader: str = "cpu",
        name: str | None = None,
    ):
        super().__init__()
        self.name = name  # the data group's name (results.json's "data")
        if augment not in AUGMENTATIONS:
            raise ValueError(f"unknown augment '{augment}'; valid: {', '.join(AUGMENTATIONS)}")
        if loader not in LOADERS:
            raise ValueError(f"unknown loader '{loader}'; valid: {', '.join(LOADERS)}")
        if loader in ("gpu", "dali") and augment != "imagenet":
            raise ValueError(f"data.loader={loader} decodes JPEGs with the imagenet augmentation; set data.augment=imagenet")
        if loader == "dali" and not dali_available():
            raise ValueError("data.loader=dali needs NVIDIA DALI, not installed: pip install -e '.[dali]'")
        self.loader = loader
        mean, std = mean or NORMALISATION[augment][0], std or NORMALISATION[augment][1]
        self.loader_device: torch.device | None = None  # the dali loader's device outside a Trainer
        self.device_decoding = DeviceDecoding(image_size, mean, std) if loader == "gpu" else None
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.root = Path(root).expanduser()
        self.train_dir, self.val_dir = train_dir, val_dir
        self.image_size, self.augment = image_size, augment
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size or batch_size
        self.num_workers, self.mean, self.std = num_workers, tuple(mean), tuple(std)
        self.image_shape = (3, image_size, image_size)
        self.classes = self._classes()
        self.num_classes = len(self.classes)

    def _split_dir(self, name: str) -> Path:
        path = self.root / name
        if not path.is_dir():
            raise FileNotFoundError(f"ImageFolder split not found: {path} (expected {self.root}/<split>/<class>/*.jpg)")
        return path

    def _classes(self) -> list[str]:
        """The class folders of the training split; the validation split must have the same ones
        (ImageFolder numbers classes per split, so a missing one would shift every label after it)."""
        classes = self._split_classes(self.train_dir)
        validation = self._split_classes(self.val_dir)
        check_same_classes(self.root, self.train_dir, classes, self.val_dir, validation)
        return classes

    def _split_classes(self, split: str) -> list[str]:
        folder = self._split_dir(split)
        classes = sorted(p.name for p in folder.iterdir() if p.is_dir())
        if not classes:
            raise FileNotFoundError(f"no class folders in {folder} (expected {folder}/<class>/*.jpg)")
        empty = [name for name in classes if not _holds_an_image(folder / name)]
        if empty:
            raise FileNotFoundError(
                f"class folder {folder / empty[0]} holds no images ({', '.join(IMG_EXTENSIONS)})"
                + (f"; {len(empty) - 1} more empty class folders" if len(empty) > 1 else "")
            )
        return classes

    def _dataset(self, split: str, train: bool) -> datasets.ImageFolder | EncodedImages:
        transform = imagefolder_transforms(train, self.augment, self.image_size, self.mean, self.std)
        folder = _LoopFreeImageFolder(str(self._split_dir(split)), transform=transform, loader=load_rgb)
        # the gpu and dali loaders read the files themselves: only the scan's (path, label) pairs are kept
        return EncodedImages(folder.samples) if self.loader in ("gpu", "dali") else folder

    def setup(self, stage: str | None = None) -> None:
        self.train_set = self._dataset(self.train_dir, train=True)
        self.train_sampler = ResumableRandomSampler(self.train_set)  # LoaderPosition resumes it mid-epoch
        validation = self._dataset(self.val_dir, train=False)
        # class-interleaved, so a limited validation (trainer=debug) sees every class, not the first ones
        self.val_set = Subset(validation, class_interleaved_order(torch.tensor(validation.targets)).tolist())

    def data_record(self) -> dict:
        """results.json's ``train_images`` and ``data_fingerprint`` (the class names and each split's
        files, relative to the split folder) once set up."""
        splits = [(self.train_dir, self.train_set.samples), (self.val_dir, self.val_set.dataset.samples)]
        return {"train_images": len(self.train_set), "data_fingerprint": fingerprint.of_files(
            self.classes, [(str(self._split_dir(split)), samples) for split, samples in splits])}

    def _loader(self, dataset, batch_size: int, train: bool) -> DataLoader:
        """With ``loader=gpu`` the batches hold JPEG bytes, augmented after decoding on the device."""
        decoded_on_device = self.loader == "gpu"
        return host_loader(dataset, batch_size, train=train, sampler=self.train_sampler, trainer=self.trainer,
                           num_workers=self.num_workers, seeded=not decoded_on_device,
                           collate_fn=partial(collate_encoded, train=train) if decoded_on_device else None)

    def _dali_loader(self, dataset, batch_size: int, train: bool) -> DaliLoader:
        """A DALI pipeline on the trainer's device (its ``"mixed"`` nvJPEG decode on a GPU), reading
        ``dataset``'s files in its order (a ``Subset``: the class-interleaved validation order)."""
        samples = [dataset.dataset.samples[i] for i in dataset.indices] if isinstance(dataset, Subset) else dataset.samples
        return DaliLoader(
            samples, batch_size=batch_size, image_size=self.image_size, mean=self.mean, std=self.std, train=train,
            num_threads=self.num_workers, sampler=self.train_sampler if train else None,
            **placement(self.trainer, self.loader_device),
        )

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        """With ``loader=gpu``, the batch arrives as JPEG bytes: decoded and augmented on its device."""
        return self.device_decoding(batch) if self.device_decoding else batch

    def train_dataloader(self) -> DataLoader | DaliLoader:
        if self.loader == "dali":
            return self._dali_loader(self.train_set, self.batch_size, train=True)
        return self._loader(self.train_set, self.batch_size, train=True)

    def val_dataloader(self) -> DataLoader | DaliLoader:
        if self.loader == "dali":
            return self._dali_loader(self.val_set, self.eval_batch_size, train=False)
        return self._loader(self.val_set, self.eval_batch_size, train=False)
