"""JPEG folders decoded and augmented on the training device (``data=imagefolder data.loader=gpu``).

From a folder of JPEGs the CPU path (PIL decode, RandomResizedCrop, flip, normalise in DataLoader
workers) bounds an ImageNet ResNet-50 by the host's cores. Here the DataLoader workers only read each
file's bytes; the batch of encoded JPEGs crosses to the device as bytes and is decoded there by
``torchvision.io.decode_jpeg`` (nvJPEG in one batched call on a GPU; libjpeg-turbo on the CPU, where
the tests run it), then augmented with torchvision's own v2 functions on the decoded tensors:

- training: ``v2.RandomResizedCrop`` (area 8-100 %, aspect 3/4-4/3; its own ``make_params``, so the
  same draws from the same generator as the CPU path) resized with antialiasing, a horizontal flip with
  probability 1/2, then ``(x / 255 - mean) / std``;
- evaluation: resize the shorter side to ``image_size * 256 / 224``, centre crop ``image_size``.

Each training image's crop and flip are drawn with torch's CPU generator seeded to the seed the
sampler gave that image (``attn_zoo.data.resumable``), as the CPU path draws them: the same crops as
``data.loader=cpu`` (up to the decoders' and resamplers' rounding), whatever the workers or a resume.
Under DDP each rank's share comes with the same per-image seeds (``shards.RankShareSampler``); an
index without one (another sampler's) is drawn from the global generator.
Greyscale and CMYK JPEGs are decoded to RGB. A file that is not a JPEG whatever its name (ImageNet-2012
holds a PNG and CMYK files named .JPEG) is decoded in the worker, on the CPU, by
``torchvision.io.decode_image`` and joins the batch as pixels, as the CPU path would read it; a file
that does not decode stops the run with an error that names it.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch.utils.data import Dataset
from torchvision.io import ImageReadMode, decode_image, decode_jpeg, read_file
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from attn_zoo.config_check import ConfigError
from attn_zoo.seeding import cpu_generator_seeded


JPEG_MAGIC = (0xFF, 0xD8, 0xFF)  # every JPEG file starts with SOI and a marker


def is_jpeg(data: torch.Tensor) -> bool:
    return len(data) >= 3 and tuple(data[:3].tolist()) == JPEG_MAGIC


class EncodedBatch:
    """JPEG bytes (1-D uint8; a file in another format arrives decoded, as a (3, H, W) uint8 image),
    their paths and augmentation seeds, and whether they are for training. A plain
    class, not a dataclass or a tensor, so Lightning's batch transfer leaves it on the host: nvJPEG
    reads its input from host memory, and the paths name a file that fails to decode."""

    def __init__(self, data: list[torch.Tensor], paths: list[str], train: bool, seeds: list[int | None] | None = None):
        self.data, self.paths, self.train = data, paths, train
        self.seeds = seeds if seeds is not None else [None] * len(data)


class EncodedImages(Dataset):
    """(file bytes as a uint8 tensor, path, label, seed) for each ``(path, label)`` sample; ``seed`` is
    the one a ``ResumableRandomSampler`` key ``(index, seed)`` carries (None for a plain index), kept
    for the crop drawn on the device."""

    def __init__(self, samples: Sequence[tuple[str, int]]):
        self.samples = list(samples)
        self.targets = [label for _, label in self.samples]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, str, int, int | None]:
        index, seed = key if isinstance(key, tuple) else (key, None)
        path, label = self.samples[index]
        try:
            data = read_file(path)
        except (OSError, RuntimeError) as error:
            raise ConfigError(f"cannot read image {path}: {error}; remove or replace the file") from error
        if is_jpeg(data):
            return data, path, label, seed
        try:  # not a JPEG (a PNG named .JPEG): nvJPEG cannot read it, this worker can
            return decode_image(data, mode=ImageReadMode.RGB), path, label, seed
        except RuntimeError as error:
            raise ConfigError(f"cannot decode image {path}: {error}; remove or replace the file") from error


def collate_encoded(items: list[tuple[torch.Tensor, str, int, int | None]], train: bool) -> tuple[EncodedBatch, torch.Tensor]:
    data, paths, labels, seeds = zip(*items)
    return EncodedBatch(list(data), list(paths), train, list(seeds)), torch.tensor(labels)


def decode(batch: EncodedBatch, device: torch.device) -> list[torch.Tensor]:
    """RGB uint8 (3, H, W) tensors on ``device``, in the batch's order: its JPEGs decoded in one call,
    its images already decoded in the worker moved there; a bad file is found and named."""
    encoded = [index for index, data in enumerate(batch.data) if data.dim() == 1]
    images = [data.to(device) if data.dim() != 1 else None for data in batch.data]
    if encoded:
        decoded = _decode_jpegs([batch.data[index] for index in encoded], [batch.paths[index] for index in encoded], device)
        for index, image in zip(encoded, decoded):
            images[index] = image
    return images


def _decode_jpegs(encoded: list[torch.Tensor], paths: list[str], device: torch.device) -> list[torch.Tensor]:
    try:
        return decode_jpeg(encoded, mode=ImageReadMode.RGB, device=device)
    except RuntimeError:
        for data, path in zip(encoded, paths):
            try:
                decode_jpeg(data, mode=ImageReadMode.RGB)
            except RuntimeError as error:
                raise ConfigError(f"cannot decode image {path} as a JPEG: {error}; remove or replace the file") from error
        raise


class DeviceAugment:
    """The ImageNet training or evaluation transform of the CPU path, on decoded device tensors."""

    def __init__(self, image_size: int, train: bool, mean: Sequence[float], std: Sequence[float]):
        self.image_size, self.train = image_size, train
        self.crop = v2.RandomResizedCrop(image_size, antialias=True)
        self.resize = int(round(image_size * 256 / 224))
        self.mean, self.std = tuple(mean), tuple(std)

    def one(self, image: torch.Tensor) -> torch.Tensor:
        if not self.train:
            resized = TF.resize(image, self.resize, antialias=True)
            return TF.center_crop(resized, self.image_size)
        box = self.crop.make_params([image])
        size = [self.image_size, self.image_size]
        crop = TF.resized_crop(image, box["top"], box["left"], box["height"], box["width"], size, antialias=True)
        return TF.horizontal_flip(crop) if torch.rand(1) < 0.5 else crop

    def seeded(self, image: torch.Tensor, seed: int | None) -> torch.Tensor:
        if seed is None:
            return self.one(image)
        with cpu_generator_seeded(seed):
            return self.one(image)

    def __call__(self, images: list[torch.Tensor], seeds: Sequence[int | None]) -> torch.Tensor:
        batch = torch.stack([self.seeded(image, seed) for image, seed in zip(images, seeds)])
        return TF.normalize(batch.float().div_(255), self.mean, self.std)


class DeviceDecoding:
    """Decodes and augments an ``EncodedBatch`` once it is on its device: the ``on_after_batch_transfer``
    of a data module whose loaders yield ``(EncodedBatch, labels)``."""

    def __init__(self, image_size: int, mean: Sequence[float], std: Sequence[float]):
        self.augment = {train: DeviceAugment(image_size, train, mean, std) for train in (True, False)}

    def __call__(self, batch):
        encoded, labels = batch
        if not isinstance(encoded, EncodedBatch):
            return batch
        return self.augment[encoded.train](decode(encoded, labels.device), encoded.seeds), labels
