"""The device-resident loader has the CPU path's augmentation semantics (on CPU here; on CUDA too
when a GPU is present)."""
import pytest
import torch
import torch.nn.functional as F

from attn_zoo.data.cifar import CIFAR10_MEAN, CIFAR10_STD, cifar_transforms
from attn_zoo.data.device_loader import DeviceResidentLoader

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)]  # cuda: skipped without CUDA


def _dataset(count=12, size=8):
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (count, 3, size, size), dtype=torch.uint8, generator=generator)
    return images, torch.arange(count)


def _denormalise(batch: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(CIFAR10_MEAN, device=batch.device).view(1, 3, 1, 1)
    std = torch.tensor(CIFAR10_STD, device=batch.device).view(1, 3, 1, 1)
    return (batch * std + mean) * 255


def _windows(image: torch.Tensor, padding: int = 4) -> list[torch.Tensor]:
    padded = F.pad(image, (padding,) * 4)
    size = image.shape[-1]
    crops = [padded[:, top : top + size, left : left + size] for top in range(2 * padding + 1)
             for left in range(2 * padding + 1)]
    return crops + [crop.flip(-1) for crop in crops]


@pytest.mark.parametrize("device", DEVICES)
def test_training_batches_are_padded_crops_or_their_mirror(device):
    images, labels = _dataset()
    loader = DeviceResidentLoader(images, labels, batch_size=5, mean=CIFAR10_MEAN, std=CIFAR10_STD,
                                  train=True, device=device, drop_last=False)
    torch.manual_seed(1)
    seen, flipped = [], 0
    for batch, batch_labels in loader:
        assert batch.device.type == device and batch.dtype == torch.float32
        pixels = _denormalise(batch).round().cpu()
        for image, label in zip(pixels, batch_labels.cpu()):
            candidates = _windows(images[label].float())
            matches = [i for i, crop in enumerate(candidates) if torch.equal(crop, image)]
            assert matches, "not a crop of the zero-padded image"
            flipped += min(matches) >= 81
            seen.append(int(label))
    assert sorted(seen) == list(range(len(labels))) and len(loader) == 3
    assert 0 < flipped < len(labels) or len(labels) < 4


@pytest.mark.parametrize("device", DEVICES)
def test_each_epoch_reshuffles(device):
    images, labels = _dataset(count=64)
    loader = DeviceResidentLoader(images, labels, batch_size=64, mean=CIFAR10_MEAN, std=CIFAR10_STD,
                                  train=True, device=device)
    first = next(iter(loader))[1].tolist()
    second = next(iter(loader))[1].tolist()
    assert first != second and sorted(first) == sorted(second) == list(range(64))


def test_an_epoch_is_fixed_by_the_generator_state_when_it_starts():
    """What resuming relies on: ``RandomStateCheckpoint`` restores the state before an epoch starts."""
    images, labels = _dataset(count=20)
    loader = DeviceResidentLoader(images, labels, batch_size=8, mean=CIFAR10_MEAN, std=CIFAR10_STD, train=True)
    torch.manual_seed(3)
    epochs = [list(loader) for _ in range(2)]
    torch.manual_seed(3)
    epochs_again = [list(loader) for _ in range(2)]
    for epoch, epoch_again in zip(epochs, epochs_again):
        for (batch, batch_labels), (batch_again, labels_again) in zip(epoch, epoch_again, strict=True):
            assert torch.equal(batch, batch_again) and torch.equal(batch_labels, labels_again)
    assert not torch.equal(epochs[0][0][0], epochs[1][0][0])


def test_evaluation_batches_equal_the_cpu_transform_in_order():
    images, labels = _dataset(size=32)
    loader = DeviceResidentLoader(images, labels, batch_size=5, mean=CIFAR10_MEAN, std=CIFAR10_STD, train=False)
    batches = list(loader)
    assert [int(x) for _, batch_labels in batches for x in batch_labels] == list(range(12))
    expected = torch.stack([cifar_transforms(train=False)(image) for image in images])
    torch.testing.assert_close(torch.cat([batch for batch, _ in batches]), expected)


def test_ranks_get_disjoint_equal_shards():
    images, labels = _dataset(count=10)
    shards = []
    for rank in (0, 1):
        loader = DeviceResidentLoader(images, labels, batch_size=4, mean=CIFAR10_MEAN, std=CIFAR10_STD,
                                      train=False, rank=rank, world_size=2)
        shards.append([int(x) for _, batch_labels in loader for x in batch_labels])
    assert len(shards[0]) == len(shards[1]) == 5
    assert sorted(shards[0] + shards[1]) == list(range(10))


def test_under_ddp_evaluation_scores_each_image_once_and_training_pads_to_equal_shards():
    """11 images on 2 ranks: validation reads 6 + 5 (padding would score image 0 twice and count 12);
    training gets 6 + 6, one image repeated, so both ranks run the same steps."""
    images, labels = _dataset(count=11)
    options = dict(batch_size=4, mean=CIFAR10_MEAN, std=CIFAR10_STD, world_size=2, drop_last=False)
    shares = [[int(x) for _, batch in DeviceResidentLoader(images, labels, train=False, rank=rank, **options)
               for x in batch] for rank in (0, 1)]
    assert [len(share) for share in shares] == [6, 5] and sorted(shares[0] + shares[1]) == list(range(11))
    for rank in (0, 1):
        loader = DeviceResidentLoader(images, labels, train=True, rank=rank, **options)
        assert len(loader) == 2 and sum(len(batch) for _, batch in loader) == 6


def test_rejects_float_images():
    with pytest.raises(ValueError, match="expected uint8"):
        DeviceResidentLoader(torch.zeros(2, 3, 4, 4), torch.zeros(2), batch_size=1, mean=CIFAR10_MEAN,
                             std=CIFAR10_STD, train=True)


def test_training_drops_the_partial_last_batch_by_default_and_evaluation_keeps_it():
    images, labels = _dataset(count=12)
    options = dict(batch_size=5, mean=CIFAR10_MEAN, std=CIFAR10_STD)
    training = DeviceResidentLoader(images, labels, train=True, **options)
    evaluation = DeviceResidentLoader(images, labels, train=False, **options)
    assert len(training) == 2 and [len(batch_labels) for _, batch_labels in training] == [5, 5]
    assert len(evaluation) == 3 and [len(batch_labels) for _, batch_labels in evaluation] == [5, 5, 2]


def test_with_the_run_sampler_a_resumed_epoch_continues_the_same_order_and_crops():
    from attn_zoo.data.resumable import ResumableRandomSampler

    images, labels = _dataset(count=12)
    sampler = ResumableRandomSampler(labels)
    loader = DeviceResidentLoader(images, labels, batch_size=4, mean=CIFAR10_MEAN, std=CIFAR10_STD, train=True,
                                  sampler=sampler)
    torch.manual_seed(0)
    whole = list(loader)
    sampler.resume_at(sampler.seed, 4)  # one batch of four done
    torch.manual_seed(123)  # the resumed epoch depends on the sampler's seed alone
    resumed = list(loader)
    assert len(resumed) == 2
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(whole[1:], resumed))
    torch.manual_seed(0)
    order, _ = ResumableRandomSampler(labels).epoch()
    assert torch.cat([batch_labels for _, batch_labels in whole]).tolist() == order



def test_crop_offsets_do_not_follow_the_epoch_order():
    """On the CPU the order (randperm) and the offsets (randint) come from one kind of generator: seeded
    alike, each position's vertical offset was tied to the image placed there (56 % of the positions
    i ≡ n mod 9 had top = (order_i − i) mod 9, where chance gives 1/9)."""
    from attn_zoo.data.resumable import ResumableRandomSampler

    count = 5000
    labels = torch.arange(count)
    loader = DeviceResidentLoader(torch.zeros(count, 3, 8, 8, dtype=torch.uint8), labels, batch_size=100,
                                  mean=CIFAR10_MEAN, std=CIFAR10_STD, train=True, sampler=ResumableRandomSampler(labels))
    positions = torch.arange(count)
    for seed in range(3):
        torch.manual_seed(seed)
        order, _, generator = loader._epoch()
        rows, _ = loader._crop_windows(count, generator)
        top = rows[:, 0, 0, 0] - loader.row_offsets[0]
        tied = (top == (order - positions) % 9)[positions % 9 == count % 9].float().mean().item()
        assert tied < 0.2, f"seed {seed}: {tied:.2f} of the offsets follow the order"


def test_without_augmentation_the_training_images_are_neither_cropped_nor_flipped():
    """``data=synthetic`` (augment off): padding 0 and no flips, as the CPU path's transform."""
    images, labels = _dataset(count=12)
    loader = DeviceResidentLoader(images, labels, batch_size=4, mean=CIFAR10_MEAN, std=CIFAR10_STD, train=True,
                                  padding=0, flip=False)
    for batch, batch_labels in loader:
        expected = torch.stack([cifar_transforms(False)(images[i]) for i in batch_labels])
        torch.testing.assert_close(batch, expected)


def test_under_ddp_each_rank_draws_its_own_windows_the_ones_one_process_would_draw():
    """The windows are drawn for the whole epoch and sharded with its order: rank r's k-th image gets
    the window of position 2k + r on one process (it got rank 0's k-th window: the same crop and flip
    on every GPU)."""
    from attn_zoo.data.resumable import ResumableRandomSampler

    images, labels = _dataset(count=16)
    options = dict(batch_size=4, mean=CIFAR10_MEAN, std=CIFAR10_STD, train=True)

    def epoch(rank: int, world_size: int) -> torch.Tensor:
        sampler = ResumableRandomSampler(labels)
        sampler.resume_at(seed=7, start=0)
        loader = DeviceResidentLoader(images, labels, sampler=sampler, rank=rank, world_size=world_size, **options)
        return torch.cat([batch for batch, _ in loader])

    whole = epoch(0, 1)
    for rank in (0, 1):
        torch.testing.assert_close(epoch(rank, 2), whole[rank::2])
