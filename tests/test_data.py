"""The data modules (``attn_zoo.data``): the embedded CIFAR-10 subset and the tool that builds it, and
each other data module on files the test makes (CIFAR pickle batches in the real format, an
ImageFolder tree, synthetic tensors); every data config takes a validation batch size."""
import io
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from PIL import Image

from attn_zoo.config import compose
from attn_zoo.config_check import ConfigError
from attn_zoo.data import CIFAR10, CIFAR100, EmbeddedCIFAR10, ImageFolder, Synthetic
from attn_zoo.tools.build_embedded import build_subset
from attn_zoo.data.cifar import CIFAR10_MEAN, CIFAR10_STD
from attn_zoo.data.imagefolder import IMAGENET_MEAN, IMAGENET_STD
from attn_zoo.data.embedded import EMBEDDED_ARCHIVE, load_image_archive
from tests.helpers import image_tree

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


# ---------------------------------------------------------------- CIFAR files, ImageFolder trees, synthetic tensors


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
    with pytest.raises(ConfigError, match=r"cifar-10-python.tar.gz there extracted \(cifar-10-batches-py/\)"):
        CIFAR10(root=str(tmp_path / "nowhere")).prepare_data()


@pytest.mark.parametrize("damage", ["truncated", "empty"])
def test_a_batch_file_cut_short_is_one_error_that_says_what_to_do(tmp_path, damage):
    """Only the files' presence is checked: a batch an interrupted extraction cut short passed, and
    loading it ended in pickle's traceback (not caught) on every later run."""
    _fake_cifar10(tmp_path)
    batch = tmp_path / "cifar-10-batches-py" / "data_batch_1"
    batch.write_bytes(batch.read_bytes()[:100] if damage == "truncated" else b"")
    with pytest.raises(ConfigError, match=r"a batch file in .*cifar-10-batches-py is cut short or corrupt .*Delete "):
        CIFAR10(root=str(tmp_path), batch_size=2).setup("fit")


def test_a_failed_download_is_not_reported_as_missing_files(tmp_path, monkeypatch):
    import torchvision.datasets.cifar as torchvision_cifar

    def no_network(*args, **kwargs):
        raise RuntimeError("File not found or corrupted.")

    monkeypatch.setattr(torchvision_cifar, "download_and_extract_archive", no_network)
    with pytest.raises(ConfigError, match=r"could not download or verify it into .*File not found or corrupted"):
        CIFAR10(root=str(tmp_path), download=True).prepare_data()


@pytest.mark.parametrize("augment,size", [("imagenet", 24), ("cifar", 32)])
def test_imagefolder_tree(tmp_path, augment, size):
    image_tree(tmp_path, per_class=3, size=(40, 48), suffix=".jpg")
    datamodule = ImageFolder(root=str(tmp_path), image_size=size, augment=augment, batch_size=2, num_workers=0)
    datamodule.setup("fit")
    assert datamodule.num_classes == 2 and datamodule.image_shape == (3, size, size)
    images, labels = next(iter(datamodule.train_dataloader()))
    assert images.shape == (2, 3, size, size)
    images, labels = next(iter(datamodule.val_dataloader()))
    assert images.shape == (2, 3, size, size) and labels.tolist() == [0, 1]  # class-interleaved


@pytest.mark.parametrize("augment,overrides,mean,std", [
    ("imagenet", [], IMAGENET_MEAN, IMAGENET_STD),
    ("cifar", [], CIFAR10_MEAN, CIFAR10_STD),  # as data=cifar10 normalises (it was ImageNet's)
    ("cifar", ["data.mean=[0.5,0.5,0.5]", "data.std=[0.25,0.25,0.25]"], (0.5,) * 3, (0.25,) * 3),
])
def test_imagefolder_normalises_with_the_augmentations_statistics_unless_told(tmp_path, augment, overrides, mean, std):
    """A white image's pixels become (1 - mean) / std per channel: the statistics the batches carry."""
    for split in ("train", "val"):
        for name in ("a", "b"):
            (tmp_path / split / name).mkdir(parents=True)
            Image.new("RGB", (8, 8), (255, 255, 255)).save(tmp_path / split / name / "0.png")
    cfg = compose(["data=imagefolder", f"data.root={tmp_path}", f"data.augment={augment}", "data.image_size=8",
                   "data.num_workers=0", "data.batch_size=2", *overrides])
    datamodule = instantiate(cfg.data)
    datamodule.setup("fit")
    images, _ = next(iter(datamodule.val_dataloader()))
    expected = (1 - torch.tensor(mean)) / torch.tensor(std)
    torch.testing.assert_close(images[:, :, 4, 4], expected.expand(2, 3))


def test_imagefolder_corrupt_image_error_names_the_file(tmp_path):
    image_tree(tmp_path, per_class=1, size=(40, 48), suffix=".jpg")
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


@pytest.mark.parametrize("data", ["embedded", "cifar10", "cifar100", "cifar10_jpg", "synthetic", "imagefolder"])
def test_every_data_config_takes_a_validation_batch_size(data, tmp_path):
    image_tree(tmp_path, classes=("cat",), per_class=1, suffix=".jpg")
    cfg = compose([f"data={data}", "data.eval_batch_size=7", f"data.root={tmp_path}" if data == "imagefolder" else "data.batch_size=5"])
    options = {key: value for key, value in OmegaConf.to_container(cfg.data, resolve=True).items() if key != "name"}
    assert instantiate(options).eval_batch_size == 7


@pytest.mark.parametrize("group", ["embedded", "synthetic", "cifar10", "cifar100", "cifar10_jpg"])
def test_every_data_group_instantiates_whole_and_keeps_its_name(group):
    """No key of a data group is filtered out before instantiate: ``name`` is an argument too."""
    datamodule = instantiate(compose([f"data={group}"]).data)
    assert datamodule.name == group and datamodule.batch_size == 128


def test_an_archive_whose_splits_have_different_classes_is_refused(tmp_path):
    """Each split numbers its class folders: test/ without 'cat' would label its dogs 0, train/'s cats."""
    png = io.BytesIO()
    Image.new("RGB", (4, 4)).save(png, format="PNG")
    archive = _make_archive(tmp_path / "data.tar.gz", {
        "train/cat/0.png": png.getvalue(), "train/dog/0.png": png.getvalue(), "test/dog/0.png": png.getvalue()})
    datamodule = EmbeddedCIFAR10(archive=archive, batch_size=1)
    with pytest.raises(ValueError, match=r"class folders of train/ and test/ differ \(only in train: \['cat'\]; "
                                         r"only in test: none\)"):
        datamodule.setup("fit")


def _png(size: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (size, size)).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.mark.parametrize("classes, size, found", [(5, 32, "5 classes of 32×32"), (10, 16, "10 classes of 16×16")])
def test_an_archive_that_is_not_cifar10_shaped_is_refused(tmp_path, classes, size, found):
    """The head, crops and FLOPs are CIFAR-10's: 5 classes trained a 10-way head (top-5 100 %), and
    64×64 images trained on random 32×32 patches, without a word."""
    files = {f"{split}/c{label}/0.png": _png(size) for split in ("train", "test") for label in range(classes)}
    datamodule = EmbeddedCIFAR10(archive=_make_archive(tmp_path / "data.tar.gz", files), batch_size=1)
    with pytest.raises(ValueError, match=f"'train' holds {found} images; this data is CIFAR-10's 10 classes of 32×32"):
        datamodule.setup("fit")


def test_an_archive_of_mixed_image_sizes_names_the_first_odd_file(tmp_path):
    files = {"train/cat/0.png": _png(32), "train/cat/1.png": _png(24), "test/cat/0.png": _png(32)}
    datamodule = EmbeddedCIFAR10(archive=_make_archive(tmp_path / "mixed.tar.gz", files), batch_size=1)
    with pytest.raises(ValueError, match="train/cat/1.png is 24×24, the images before it 32×32"):
        datamodule.setup("fit")
