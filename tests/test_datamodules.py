"""Each data module on files the test makes: CIFAR pickle batches in the real format, an
ImageFolder tree, synthetic tensors."""
import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from attn_zoo.config_check import ConfigError
from attn_zoo.data import CIFAR10, CIFAR100, ImageFolder, Synthetic


def _write_batch(path, count, label_key, seed):
    rng = np.random.default_rng(seed)
    entry = {"data": rng.integers(0, 256, (count, 3072), dtype=np.uint8), label_key: list(range(count))}
    path.write_bytes(pickle.dumps(entry))
    return entry


def _fake_cifar10(root):
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for index in range(1, 6):
        _write_batch(folder / f"data_batch_{index}", 4, "labels", index)
    test = _write_batch(folder / "test_batch", 3, "labels", 9)
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": [f"c{i}" for i in range(10)]}))
    return test


def test_cifar10_reads_real_format_batches(tmp_path):
    test = _fake_cifar10(tmp_path)
    datamodule = CIFAR10(root=str(tmp_path), batch_size=2)
    datamodule.prepare_data()
    datamodule.setup("fit")
    assert len(datamodule.train_set) == 20 and len(datamodule.val_set) == 3
    images, labels = datamodule.val_split
    expected = torch.from_numpy(test["data"].reshape(3, 3, 32, 32))
    assert torch.equal(images, expected) and labels.tolist() == [0, 1, 2]
    batch, batch_labels = next(iter(datamodule.train_dataloader()))
    assert batch.shape == (2, 3, 32, 32) and batch.dtype == torch.float32


def test_cifar100_reads_fine_labels(tmp_path):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    _write_batch(folder / "train", 5, "fine_labels", 1)
    _write_batch(folder / "test", 2, "fine_labels", 2)
    (folder / "meta").write_bytes(pickle.dumps({"fine_label_names": [f"c{i}" for i in range(100)]}))
    datamodule = CIFAR100(root=str(tmp_path))
    datamodule.setup("fit")
    assert datamodule.num_classes == 100 and len(datamodule.train_set) == 5


def test_cifar_offline_without_files_says_where_to_put_them(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"cifar-10-python.tar.gz there extracted \(cifar-10-batches-py/\)"):
        CIFAR10(root=str(tmp_path / "nowhere")).prepare_data()


def _image_tree(root, classes=("cat", "dog"), per_class=3, size=40):
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for name in classes:
            folder = root / split / name
            folder.mkdir(parents=True)
            for index in range(per_class):
                pixels = rng.integers(0, 256, (size, size + 8, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{index}.jpg")


@pytest.mark.parametrize("augment,size", [("imagenet", 24), ("cifar", 32)])
def test_imagefolder_tree(tmp_path, augment, size):
    _image_tree(tmp_path)
    datamodule = ImageFolder(root=str(tmp_path), image_size=size, augment=augment, batch_size=2, num_workers=0)
    datamodule.setup("fit")
    assert datamodule.num_classes == 2 and datamodule.image_shape == (3, size, size)
    images, labels = next(iter(datamodule.train_dataloader()))
    assert images.shape == (2, 3, size, size)
    images, labels = next(iter(datamodule.val_dataloader()))
    assert images.shape == (2, 3, size, size) and labels.tolist() == [0, 1]  # class-interleaved


def test_imagefolder_corrupt_image_error_names_the_file(tmp_path):
    _image_tree(tmp_path, per_class=1)
    (tmp_path / "val" / "cat" / "0.jpg").write_bytes(b"not a jpeg")
    datamodule = ImageFolder(root=str(tmp_path), image_size=16, batch_size=1, num_workers=0)
    datamodule.setup("fit")
    with pytest.raises(ConfigError, match=r"cannot decode image .*val/cat/0.jpg"):
        next(iter(datamodule.val_dataloader()))


def test_imagefolder_missing_root_says_what_layout_is_expected(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"expected .*/<split>/<class>/\*\.jpg"):
        ImageFolder(root=str(tmp_path / "missing"))


def test_synthetic_shapes_and_gpu_style_loader():
    datamodule = Synthetic(num_samples=10, image_size=16, num_classes=3, batch_size=4, loader="gpu")
    datamodule.setup("fit")
    batches = list(datamodule.train_dataloader())
    assert [len(labels) for _, labels in batches] == [4, 4]  # the partial last batch dropped
    assert batches[0][0].shape == (4, 3, 16, 16) and int(max(l.max() for _, l in batches)) < 3


def test_unknown_loader_is_rejected():
    with pytest.raises(ValueError, match="unknown loader 'tpu'; valid: cpu, gpu"):
        Synthetic(loader="tpu")


def test_a_training_set_smaller_than_one_batch_is_refused():
    datamodule = Synthetic(num_samples=10, batch_size=16)
    datamodule.setup("fit")
    with pytest.raises(ValueError, match=r"10 training images make no full batch of data.batch_size=16"):
        datamodule.train_dataloader()
