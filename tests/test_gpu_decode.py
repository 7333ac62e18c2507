"""``data=imagefolder data.loader=gpu``: JPEG bytes decoded and augmented on the training device.

Run here on the CPU device (libjpeg-turbo instead of nvJPEG): the same code a GPU runs, compared with
the CPU path image by image, with the crops drawn from the same generator state.
"""
import pytest
import torch
from PIL import Image

from attn_zoo.config_check import ConfigError
from attn_zoo.data import ImageFolder
from attn_zoo.data.gpu_decode import EncodedBatch
from attn_zoo.data.imagefolder import imagefolder_transforms, load_rgb
from attn_zoo.tools import jpeg_folder, loader_speed
from tests.helpers import assert_a_debug_run_completes_on_jpegs, markdown_rows

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("jpegs")
    jpeg_folder.make_folder(root, classes=3, train_per_class=3, val_per_class=2)
    return root


def device_batch(datamodule: ImageFolder, loader) -> tuple[torch.Tensor, torch.Tensor]:
    batch = next(iter(loader))
    return datamodule.on_after_batch_transfer(datamodule.transfer_batch_to_device(batch, torch.device("cpu"), 0), 0)


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
def test_each_image_matches_the_cpu_path_with_the_same_draws(folder, train):
    size = 96
    datamodule = ImageFolder(root=str(folder), image_size=size, batch_size=4, num_workers=0, loader="gpu")
    datamodule.setup("fit")
    dataset = datamodule.train_set if train else datamodule.val_set
    cpu_transform = imagefolder_transforms(train, "imagenet", size, MEAN, STD)
    decoding = datamodule.device_decoding
    for index in range(4):
        data, path, _, _ = dataset[index]
        torch.manual_seed(index)
        expected = cpu_transform(load_rgb(path))
        torch.manual_seed(index)
        (actual,), _ = decoding((EncodedBatch([data], [path], train), torch.tensor([0])))
        assert actual.shape == expected.shape == (3, size, size)
        # PIL and torch resample with antialiasing differently by about one grey level
        assert (actual - expected).abs().mean() < 2.5 / 255 / min(STD)
        assert (actual - expected).abs().max() < 40 / 255 / min(STD)


def test_a_training_batch_has_the_cpu_loaders_crops(folder):
    """Both loaders seed each image's crop and flip from the sampler's per-image seed."""
    size, batches = 64, {}
    for loader in ("cpu", "gpu"):
        datamodule = ImageFolder(root=str(folder), image_size=size, batch_size=4, num_workers=0, loader=loader)
        datamodule.setup("fit")
        torch.manual_seed(5)
        batches[loader] = device_batch(datamodule, datamodule.train_dataloader())
    (cpu_images, cpu_labels), (gpu_images, gpu_labels) = batches["cpu"], batches["gpu"]
    assert torch.equal(cpu_labels, gpu_labels)
    # PIL and torch resample with antialiasing differently by up to a grey level (measured: 1e-5 here);
    # other crops of these images differ by a mean |Δ| of 0.8 (unseeded) to 1.3 (another seed)
    assert (gpu_images - cpu_images).abs().mean() < 2.5 / 255 / min(STD)


def test_batches_come_from_the_loaders_decoded_normalised_and_labelled(folder):
    datamodule = ImageFolder(root=str(folder), image_size=64, batch_size=4, num_workers=0, loader="gpu")
    datamodule.setup("fit")
    images, labels = device_batch(datamodule, datamodule.train_dataloader())
    assert images.shape == (4, 3, 64, 64) and images.dtype == torch.float32 and labels.shape == (4,)
    assert -3 < images.mean() < 3 and images.std() > 0.1
    assert len(datamodule.train_dataloader()) == 2  # 9 training images, the partial batch dropped
    images, labels = device_batch(datamodule, datamodule.val_dataloader())
    assert labels.tolist() == [0, 1, 2, 0]  # validation is class-interleaved


def test_a_corrupt_jpeg_is_named(tmp_path):
    jpeg_folder.make_folder(tmp_path, classes=2, train_per_class=2, val_per_class=1)
    broken = tmp_path / "train" / "class0001" / "00001.jpg"
    broken.write_bytes(broken.read_bytes()[:300])
    datamodule = ImageFolder(root=str(tmp_path), image_size=32, batch_size=4, num_workers=0, loader="gpu")
    datamodule.setup("fit")
    with pytest.raises(ConfigError, match=f"cannot decode image {broken}"):
        device_batch(datamodule, datamodule.train_dataloader())


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
def test_a_png_named_jpeg_is_decoded_as_the_cpu_path_reads_it(tmp_path, train):
    """ImageNet-2012 holds a PNG named .JPEG: nvJPEG cannot read it (it stopped the run), so the worker
    decodes it; the batch keeps its order, and each image is the CPU loader's, same crops and flips."""
    jpeg_folder.make_folder(tmp_path, classes=2, train_per_class=2, val_per_class=2)
    disguised = sorted((tmp_path / ("train" if train else "val") / "class0001").iterdir())[0]
    Image.open(disguised).convert("RGBA").save(disguised, format="PNG")  # with an alpha channel, too
    assert disguised.read_bytes()[:4] == b"\x89PNG"
    batches = {}
    for loader in ("cpu", "gpu"):
        datamodule = ImageFolder(root=str(tmp_path), image_size=48, batch_size=4, num_workers=0, loader=loader)
        datamodule.setup("fit")
        torch.manual_seed(5)
        batches[loader] = device_batch(datamodule, datamodule.train_dataloader() if train else datamodule.val_dataloader())
    (cpu_images, cpu_labels), (gpu_images, gpu_labels) = batches["cpu"], batches["gpu"]
    assert torch.equal(cpu_labels, gpu_labels) and gpu_images.shape == (4, 3, 48, 48)
    for cpu_image, gpu_image in zip(cpu_images, gpu_images):  # PIL and torch resample a grey level apart
        assert (gpu_image - cpu_image).abs().mean() < 2.5 / 255 / min(STD)


def test_only_the_imagenet_augmentation_and_known_loaders(folder):
    with pytest.raises(ValueError, match="data.loader=gpu decodes JPEGs with the imagenet augmentation"):
        ImageFolder(root=str(folder), augment="cifar", loader="gpu")
    with pytest.raises(ValueError, match="unknown loader 'ffcv'; valid: cpu, gpu, dali"):
        ImageFolder(root=str(folder), loader="ffcv")


def test_loader_speed_times_the_decoding_path(folder, capsys):
    overrides = ["data=imagefolder", f"data.root={folder}", "data.loader=gpu", "data.image_size=64", "data.batch_size=3",
                 "data.num_workers=0", "--epochs", "1", "--device", "cpu"]
    assert loader_speed.main(overrides) == 0
    assert [cells[:5] for cells in markdown_rows(capsys.readouterr().out)[1:]] == [["gpu", "0", "3", "cpu", "1"]]


def test_a_run_trains_from_device_decoded_jpegs(folder, tmp_path):
    assert_a_debug_run_completes_on_jpegs(folder, tmp_path, "data.loader=gpu", "data.num_workers=0")
