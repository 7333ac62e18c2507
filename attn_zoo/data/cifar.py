"""CIFAR-style data: small uint8 images held in memory, standard CIFAR augmentation.

Training images get a random crop of the 4-pixel zero-padded image and a random horizontal flip
(He et al. 2016, §4.2); every image is normalised per channel. ``loader="gpu"`` moves the whole
dataset to the training device and augments there (``DeviceResidentLoader``); ``loader="cpu"`` is
the usual DataLoader path with torchvision transforms.

Also here: ``CIFAR10``/``CIFAR100`` (torchvision's datasets, with download) and ``Synthetic``.
"""
from __future__ import annotations

import pickle
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset
from torchvision import datasets
from torchvision.transforms import v2

from attn_zoo.config_check import ConfigError
from attn_zoo.data import fingerprint
from attn_zoo.data.balanced import class_interleaved_order
from attn_zoo.data.device_loader import DeviceResidentLoader
from attn_zoo.data.resumable import ResumableRandomSampler
from attn_zoo.data.shards import host_loader, placement

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)
LOADERS = ("cpu", "gpu")


class TensorImageDataset(Dataset):
    def __init__(self, images: torch.Tensor, labels: torch.Tensor, transform):
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int):
        return self.transform(self.images[index]), self.labels[index]


def cifar_transforms(train: bool, mean=CIFAR10_MEAN, std=CIFAR10_STD, size: int = 32, augment: bool = True):
    steps = [v2.RandomCrop(size, padding=4), v2.RandomHorizontalFlip()] if train and augment else []
    return v2.Compose([*steps, v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)])


class CifarDataModule(L.LightningDataModule):
    """Base for in-memory uint8 image data; subclasses implement ``load_split`` ("train" / "test")."""

    num_classes = 10
    image_shape = (3, 32, 32)
    mean, std = CIFAR10_MEAN, CIFAR10_STD
    augment = True

    def __init__(
        self,
        *,
        batch_size: int = 128,
        num_workers: int = 0,
        eval_batch_size: int | None = None,
        loader: str = "cpu",
        name: str | None = None,
    ):
        super().__init__()
        self.name = name  # the data group's name (results.json's "data")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if loader not in LOADERS:
            raise ValueError(f"unknown loader '{loader}'; valid: {', '.join(LOADERS)}")
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.loader = loader
        self.loader_device: torch.device | None = None  # the gpu loader's device outside a Trainer

    def load_split(self, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def setup(self, stage: str | None = None) -> None:
        self.train_split = self.load_split("train")
        self.val_split = _class_interleaved(*self.load_split("test"))
        transform = lambda train: cifar_transforms(train, self.mean, self.std, self.image_shape[-1], self.augment)  # noqa: E731
        self.train_set = TensorImageDataset(*self.train_split, transform(True))
        self.train_sampler = ResumableRandomSampler(self.train_set)  # LoaderPosition resumes it mid-epoch
        self.val_set = TensorImageDataset(*self.val_split, transform(False))

    def data_record(self) -> dict:
        """results.json's ``train_images`` and ``data_fingerprint`` (every pixel and label) once set up."""
        return {"train_images": len(self.train_split[1]),
                "data_fingerprint": fingerprint.of_tensors(self.train_split, self.val_split)}

    def _device_loader(self, split, batch_size: int, train: bool) -> DeviceResidentLoader:
        return DeviceResidentLoader(
            *split, batch_size=batch_size, mean=self.mean, std=self.std, train=train,
            padding=4 if self.augment else 0, flip=self.augment, sampler=self.train_sampler if train else None,
            **placement(self.trainer, self.loader_device),
        )

    def _loader(self, dataset: Dataset, batch_size: int, train: bool) -> DataLoader:
        return host_loader(dataset, batch_size, train=train, sampler=self.train_sampler, trainer=self.trainer,
                           num_workers=self.num_workers)

    def train_dataloader(self):
        if len(self.train_split[1]) < self.batch_size:
            raise ValueError(
                f"{len(self.train_split[1])} training images make no full batch of data.batch_size="
                f"{self.batch_size} (the partial last batch is dropped); lower data.batch_size"
            )
        if self.loader == "gpu":
            return self._device_loader(self.train_split, self.batch_size, train=True)
        return self._loader(self.train_set, self.batch_size, train=True)

    def val_dataloader(self):
        if self.loader == "gpu":
            return self._device_loader(self.val_split, self.eval_batch_size, train=False)
        return self._loader(self.val_set, self.eval_batch_size, train=False)


def _class_interleaved(images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The split in class-interleaved order, so a limited validation (``trainer=debug``) sees every class."""
    order = class_interleaved_order(labels)
    return images[order], labels[order]


def _presence_checked(dataset_class: type) -> type:
    """torchvision's CIFAR class with its per-file md5 checks off (file presence only).

    torchvision verifies the archive's md5 when it downloads; the per-batch checks would also
    reject re-pickled copies of the batches (as the tests make), so only presence is checked.
    """
    without_md5 = lambda files: [[name, None] for name, _ in files]  # noqa: E731
    return type(
        f"_{dataset_class.__name__}",
        (dataset_class,),
        {
            "train_list": without_md5(dataset_class.train_list),
            "test_list": without_md5(dataset_class.test_list),
            "meta": {**dataset_class.meta, "md5": None},
        },
    )


_CIFAR10 = _presence_checked(datasets.CIFAR10)
_CIFAR100 = _presence_checked(datasets.CIFAR100)


class CIFAR10(CifarDataModule):
    """CIFAR-10 (Krizhevsky 2009) through torchvision: ``root`` holds ``cifar-10-batches-py/``."""

    dataset_class = _CIFAR10
    archive_name = "cifar-10-python.tar.gz"

    def __init__(self, *, root: str = "data", download: bool = False, **loader_options):
        super().__init__(**loader_options)
        self.root, self.download = Path(root).expanduser(), download

    def prepare_data(self) -> None:
        self._dataset(train=True)

    def _dataset(self, train: bool):
        folder = self.root.resolve() / self.dataset_class.base_folder
        try:
            return self.dataset_class(str(self.root), train=train, download=self.download)
        except (pickle.UnpicklingError, EOFError, ValueError) as error:  # only presence is checked (below)
            raise ConfigError(
                f"{type(self).__name__}: a batch file in {folder} is cut short or corrupt ({type(error).__name__}: "
                f"{error}); an extraction that stopped part-way leaves one. Delete {folder}, then extract "
                f"{self.archive_name} again or set data.download=true (which passes over files that are there)"
            ) from error
        except (RuntimeError, OSError) as error:  # bad input (e.g. data.root one folder off): one error line
            if self.download:
                raise ConfigError(f"{type(self).__name__}: could not download or verify it into {self.root.resolve()} "
                                  f"({error})") from error
            raise ConfigError(
                f"{type(self).__name__} not found in {self.root.resolve()} ({error}). Put "
                f"{self.archive_name} there extracted ({self.dataset_class.base_folder}/), or set "
                f"data.download=true on a machine with internet access"
            ) from error

    def load_split(self, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        dataset = self._dataset(train=split == "train")
        images = torch.from_numpy(dataset.data).permute(0, 3, 1, 2).contiguous()
        return images, torch.tensor(dataset.targets, dtype=torch.long)


class CIFAR100(CIFAR10):
    """CIFAR-100 (100 fine classes) through torchvision: ``root`` holds ``cifar-100-python/``."""

    dataset_class = _CIFAR100
    archive_name = "cifar-100-python.tar.gz"
    num_classes = 100
    mean, std = CIFAR100_MEAN, CIFAR100_STD


class Synthetic(CifarDataModule):
    """Random uint8 images and labels of a given shape, for speed tests; no augmentation."""

    augment = False

    def __init__(
        self, *, num_samples: int = 1024, image_size: int = 32, num_classes: int = 10, seed: int = 0, **loader_options
    ):
        super().__init__(**loader_options)
        if num_samples < 1 or image_size < 1 or num_classes < 1:
            raise ValueError("synthetic data needs num_samples, image_size and num_classes >= 1")
        self.num_samples, self.seed = num_samples, seed
        self.num_classes = num_classes
        self.image_shape = (3, image_size, image_size)

    def load_split(self, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        generator = torch.Generator().manual_seed(self.seed + (split == "test"))
        count = self.num_samples if split == "train" else max(1, self.num_samples // 4)
        images = torch.randint(0, 256, (count, *self.image_shape), dtype=torch.uint8, generator=generator)
        return images, torch.randint(0, self.num_classes, (count,), generator=generator)
