"""CIFAR-style data: 32×32 uint8 images held in memory, standard CIFAR augmentation.

Training images get a random 32×32 crop of the 4-pixel zero-padded image and a random
horizontal flip (He et al. 2016, §4.2); every image is normalised per channel.
"""
from __future__ import annotations

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)


class TensorImageDataset(Dataset):
    def __init__(self, images: torch.Tensor, labels: torch.Tensor, transform):
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int):
        return self.transform(self.images[index]), self.labels[index]


def cifar_transforms(train: bool, mean=CIFAR10_MEAN, std=CIFAR10_STD) -> v2.Compose:
    augment = [v2.RandomCrop(32, padding=4), v2.RandomHorizontalFlip()] if train else []
    return v2.Compose([*augment, v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)])


class CifarDataModule(L.LightningDataModule):
    """Base for in-memory CIFAR-style data; subclasses implement ``load_split``."""

    num_classes = 10
    image_shape = (3, 32, 32)

    def __init__(self, *, batch_size: int = 128, num_workers: int = 0, eval_batch_size: int | None = None):
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers

    def load_split(self, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def setup(self, stage: str | None = None) -> None:
        self.train_set = TensorImageDataset(*self.load_split("train"), cifar_transforms(train=True))
        self.val_set = TensorImageDataset(*self.load_split("test"), cifar_transforms(train=False))

    def _loader(self, dataset: Dataset, batch_size: int, shuffle: bool) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=shuffle,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, self.eval_batch_size, shuffle=False)
