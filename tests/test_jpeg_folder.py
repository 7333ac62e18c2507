"""``python -m attn_zoo.tools.jpeg_folder``: a synthetic ImageNet-like JPEG folder that data=imagefolder reads."""
from PIL import Image

from attn_zoo.data import ImageFolder
from attn_zoo.tools import jpeg_folder


def test_folder_layout_sizes_and_reruns(tmp_path, capsys):
    assert jpeg_folder.main(["--out", str(tmp_path), "--classes", "3", "--train-per-class", "2", "--val-per-class", "1", "--jobs", "2"]) == 0
    assert "9 images" in capsys.readouterr().out
    train, val = sorted((tmp_path / "train").rglob("*.jpg")), sorted((tmp_path / "val").rglob("*.jpg"))
    assert [p.relative_to(tmp_path).as_posix() for p in val] == [f"val/class000{c}/00000.jpg" for c in range(3)]
    assert len(train) == 6
    for path in train + val:
        assert 50_000 < path.stat().st_size < 200_000  # an ImageNet photo's ~110 KB
        with Image.open(path) as image:
            assert image.format == "JPEG" and 450 <= max(image.size) <= 550
    before = {path: path.read_bytes() for path in train}
    train[0].unlink()
    jpeg_folder.make_folder(tmp_path, 3, 2, 1)  # writes the missing file, the same bytes as before
    assert {path: path.read_bytes() for path in train} == before
    assert not list(tmp_path.rglob("*.tmp"))


def test_imagefolder_data_reads_it(tmp_path):
    jpeg_folder.make_folder(tmp_path, classes=2, train_per_class=2, val_per_class=1)
    datamodule = ImageFolder(root=str(tmp_path), image_size=64, batch_size=2, num_workers=0)
    datamodule.setup("fit")
    images, labels = next(iter(datamodule.train_dataloader()))
    assert images.shape == (2, 3, 64, 64) and datamodule.num_classes == 2


def test_bad_counts_fail_in_one_line(tmp_path, capsys):
    assert jpeg_folder.main(["--out", str(tmp_path), "--classes", "0"]) == 2
    assert capsys.readouterr().err == "error: classes must be >= 1, got 0\n"


def test_images_are_shaped_as_imagenet_photos():
    """A mean of about 182,000 pixels (ImageNet's mean 469x387) and a median shape of 4:3 landscape:
    sides of 400-600 px at ratios spread evenly over 3:4-4:3 gave 220,000, near square."""
    import numpy as np

    sizes = [jpeg_folder.image_size(np.random.default_rng(seed)) for seed in range(2000)]
    pixels = np.mean([width * height for width, height in sizes])
    assert abs(pixels / (469 * 387) - 1) < 0.03
    assert abs(np.median([width / height for width, height in sizes]) - 4 / 3) < 0.01
    assert 0.15 < np.mean([height > width for width, height in sizes]) < 0.25
