import io
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from attn_zoo.data import EmbeddedCIFAR10
from attn_zoo.tools.build_embedded import build_subset
from attn_zoo.data.cifar import CIFAR10_MEAN, CIFAR10_STD
from attn_zoo.data.embedded import EMBEDDED_ARCHIVE, load_image_archive

SHARED_CIFAR = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-jpg.tar.gz"


def _jpeg(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG")
    return buffer.getvalue()


def _make_archive(path: Path, files: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w:gz") as archive:
        for name, payload in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            archive.addfile(info, io.BytesIO(payload))
    return path


def test_embedded_dataset_is_class_balanced_cifar10():
    splits = load_image_archive(EMBEDDED_ARCHIVE.resolve())
    train_images, train_labels, classes = splits["train"]
    test_images, test_labels, _ = splits["test"]
    assert classes[:3] == ["airplane", "automobile", "bird"] and len(classes) == 10
    assert train_images.shape == (5000, 3, 32, 32) and train_images.dtype == torch.uint8
    assert test_images.shape == (1000, 3, 32, 32)
    assert torch.bincount(train_labels).tolist() == [500] * 10
    assert torch.bincount(test_labels).tolist() == [100] * 10


def test_datamodule_batches_are_normalised_and_augmented():
    datamodule = EmbeddedCIFAR10(batch_size=16)
    datamodule.setup("fit")
    images, labels = next(iter(datamodule.train_dataloader()))
    assert images.shape == (16, 3, 32, 32) and images.dtype == torch.float32 and labels.shape == (16,)

    raw = datamodule.val_set.images[0]
    expected = (raw.float() / 255 - torch.tensor(CIFAR10_MEAN)[:, None, None]) / torch.tensor(CIFAR10_STD)[:, None, None]
    torch.testing.assert_close(datamodule.val_set[0][0], expected)

    torch.manual_seed(0)
    augmented = torch.stack([datamodule.train_set[0][0] for _ in range(8)])
    assert not all(torch.equal(augmented[0], view) for view in augmented[1:]), "crop/flip never changed the image"


def test_build_subset_takes_first_n_per_class(tmp_path):
    files = {f"{split}/{label}/{index:04d}.jpg": _jpeg(index) for split in ("train", "test")
             for label in ("cat", "dog") for index in range(4)}
    files["README.txt"] = b"not an image"
    source = _make_archive(tmp_path / "source.tar.gz", files)
    out = tmp_path / "subset.tar.gz"
    assert build_subset(source, out, train_per_class=3, test_per_class=1) == 8
    splits = load_image_archive(out)
    assert torch.bincount(splits["train"][1]).tolist() == [3, 3]
    assert torch.bincount(splits["test"][1]).tolist() == [1, 1]
    with tarfile.open(out) as archive:
        assert archive.extractfile("train/dog/0002.jpg").read() == files["train/dog/0002.jpg"]


def test_corrupt_image_error_names_the_file(tmp_path):
    archive = _make_archive(tmp_path / "bad.tar.gz", {"train/cat/0000.jpg": b"not a jpeg"})
    with pytest.raises(ValueError, match="train/cat/0000.jpg"):
        load_image_archive(archive)


@pytest.mark.skipif(not SHARED_CIFAR.is_file(), reason=f"full JPEG CIFAR-10 not present at {SHARED_CIFAR}")
def test_embedded_archive_is_rebuilt_exactly_from_the_full_dataset(tmp_path):
    rebuilt = tmp_path / "rebuilt.tar.gz"
    build_subset(SHARED_CIFAR, rebuilt)
    with tarfile.open(rebuilt) as new, tarfile.open(EMBEDDED_ARCHIVE) as shipped:
        assert new.getnames() == shipped.getnames()
        name = "test/truck/0099.jpg"
        assert new.extractfile(name).read() == shipped.extractfile(name).read()


@pytest.mark.parametrize("loader", ["cpu", "gpu"])
def test_training_drops_the_partial_last_batch_and_validation_keeps_every_image(loader):
    """5,000 images at batch 128: 39 full training batches, no batch of 8 at the end of the epoch
    (a step 16 times noisier, and BatchNorm statistics from 8 images just before validation).
    ``loader=gpu`` is the device-resident loader, here on the CPU."""
    datamodule = EmbeddedCIFAR10(batch_size=128, loader=loader)
    datamodule.setup("fit")
    training = datamodule.train_dataloader()
    assert len(training) == 39
    assert [len(labels) for _, labels in training] == [128] * 39
    assert sum(len(labels) for _, labels in datamodule.val_dataloader()) == 1000
