"""A limited validation (``trainer=debug``: 2 batches) sees every class in balance, and a full one
still sees every image exactly once. Through Lightning's own batch limit, with the real yaml."""
import lightning as L
import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from PIL import Image

from attn_zoo.config import compose
from attn_zoo.data import EmbeddedCIFAR10, ImageFolder
from attn_zoo.data.balanced import class_interleaved_order
from attn_zoo.data.embedded import EMBEDDED_ARCHIVE, load_image_archive


class _LabelRecorder(L.LightningModule):
    """Records the labels of every validation batch Lightning hands it."""

    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(1, 1)
        self.labels: list[torch.Tensor] = []

    def validation_step(self, batch, batch_index):
        self.labels.append(batch[1].cpu())


def _validated_labels(datamodule, trainer_choice: str = "debug", **trainer_overrides) -> torch.Tensor:
    cfg = compose([f"trainer={trainer_choice}"])
    trainer = instantiate(cfg.trainer, **trainer_overrides, logger=False, enable_checkpointing=False)
    recorder = _LabelRecorder()
    trainer.validate(recorder, datamodule=datamodule, verbose=False)
    return torch.cat(recorder.labels)


def _balanced(labels: torch.Tensor, num_classes: int) -> bool:
    counts = torch.bincount(labels, minlength=num_classes)
    return bool(counts.min() >= 1 and counts.max() - counts.min() <= 1)


@pytest.mark.parametrize("loader", ["cpu", "gpu"])  # gpu: the device-resident loader, here on the CPU
def test_debug_validation_of_embedded_data_sees_every_class_in_balance(loader):
    labels = _validated_labels(EmbeddedCIFAR10(batch_size=128, loader=loader))
    assert len(labels) == 256  # trainer=debug: 2 batches
    assert _balanced(labels, 10), torch.bincount(labels, minlength=10).tolist()


def test_full_validation_sees_every_embedded_image_once():
    datamodule = EmbeddedCIFAR10(batch_size=256)
    labels = _validated_labels(datamodule, trainer_choice="cpu")
    assert torch.bincount(labels).tolist() == [100] * 10
    raw_images, raw_labels, _ = load_image_archive(EMBEDDED_ARCHIVE.resolve())["test"]
    order = class_interleaved_order(raw_labels)
    assert sorted(order.tolist()) == list(range(len(raw_labels)))
    assert torch.equal(datamodule.val_split[0], raw_images[order]) and torch.equal(labels, raw_labels[order])


def _image_tree(root, classes=("a", "b", "c"), per_class=(4, 4, 2)):
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for name, count in zip(classes, per_class):
            folder = root / split / name
            folder.mkdir(parents=True)
            for index in range(count):
                Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(folder / f"{index}.png")


def test_debug_validation_of_an_image_folder_sees_every_class(tmp_path):
    _image_tree(tmp_path)
    options = dict(root=str(tmp_path), image_size=8, augment="cifar", num_workers=0, batch_size=2)
    limited = _validated_labels(ImageFolder(**options))
    assert len(limited) == 4 and set(limited.tolist()) == {0, 1, 2}
    full = _validated_labels(ImageFolder(**options), trainer_choice="cpu")
    assert torch.bincount(full).tolist() == [4, 4, 2]


def test_interleaved_order_keeps_every_prefix_proportional():
    labels = torch.tensor([0] * 6 + [1] * 3 + [2] * 3)
    order = class_interleaved_order(labels)
    assert sorted(order.tolist()) == list(range(12))
    assert labels[order].tolist()[:4] == [0, 1, 2, 0]
    assert labels[order].tolist() == [0, 1, 2, 0, 0, 1, 2, 0, 0, 1, 2, 0]
