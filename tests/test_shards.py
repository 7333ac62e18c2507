"""Each rank's share of a split under DDP (``attn_zoo.data.shards``): training padded to equal shares,
evaluation unpadded, for the DataLoader path as for the device loaders."""
from types import SimpleNamespace

import pytest
import torch
from torch.utils.data import DataLoader

from attn_zoo.data import Synthetic
from attn_zoo.data.shards import evaluation_sampler, rank_share, share_size


@pytest.mark.parametrize("make", [list, torch.tensor])
def test_shares_cover_the_split_once_for_evaluation_and_equally_for_training(make):
    order = make(list(range(10, 17)))  # 7 samples on 3 ranks
    evaluation = [list(map(int, rank_share(order, rank, 3, pad=False))) for rank in range(3)]
    assert evaluation == [[10, 13, 16], [11, 14], [12, 15]]
    assert [share_size(7, rank, 3, pad=False) for rank in range(3)] == [3, 2, 2]
    training = [list(map(int, rank_share(order, rank, 3, pad=True))) for rank in range(3)]
    assert training == [[10, 13, 16], [11, 14, 10], [12, 15, 11]]  # wrapped round, as DistributedSampler
    assert [share_size(7, rank, 3, pad=True) for rank in range(3)] == [3, 3, 3]
    assert rank_share(order, 0, 1, pad=True) is order


def test_the_validation_dataloader_under_ddp_holds_each_rank_its_unpadded_share():
    """Lightning keeps a DistributedSampler it is given; the one it would put in pads the split."""
    data = Synthetic(num_samples=20, batch_size=2)  # 5 validation images
    data.setup()
    shares = []
    for rank in range(2):
        data.trainer = SimpleNamespace(world_size=2, global_rank=rank)
        loader = data.val_dataloader()
        assert isinstance(loader, DataLoader)
        shares.append(torch.cat([labels for _, labels in loader]).tolist())
    assert sorted(map(len, shares)) == [2, 3]
    assert sorted(shares[0] + shares[1]) == sorted(data.val_split[1].tolist())
    data.trainer = None
    assert data.val_dataloader().sampler.__class__.__name__ == "SequentialSampler"
    assert evaluation_sampler(range(5), SimpleNamespace(world_size=1, global_rank=0)) is None


def test_a_validation_split_smaller_than_the_world_is_a_config_error_on_every_loader():
    """A rank with no validation image failed in Lightning's sampler with a bare AssertionError."""
    from attn_zoo.config_check import ConfigError
    from attn_zoo.data.dali_loader import DaliLoader
    from attn_zoo.data.device_loader import DeviceResidentLoader

    message = "the validation split has 1 image, fewer than the 2 DDP processes"
    with pytest.raises(ConfigError, match=message):
        evaluation_sampler(range(1), SimpleNamespace(world_size=2, global_rank=1))
    one_image, normalise = torch.zeros(1, 3, 4, 4, dtype=torch.uint8), {"mean": (0.5,) * 3, "std": (0.25,) * 3}
    with pytest.raises(ConfigError, match=message):
        DeviceResidentLoader(one_image, torch.zeros(1), batch_size=2, train=False, rank=1, world_size=2, **normalise)
    with pytest.raises(ConfigError, match=message):
        DaliLoader([("a.jpg", 0)], batch_size=2, image_size=4, train=False, rank=1, world_size=2, **normalise)
    # training pads its share, and two images on two ranks are one each
    DeviceResidentLoader(one_image, torch.zeros(1), batch_size=2, train=True, rank=1, world_size=2, **normalise)
    assert len(evaluation_sampler(range(2), SimpleNamespace(world_size=2, global_rank=1))) == 1


def test_the_training_dataloader_under_ddp_shares_the_resumable_order_with_per_sample_seeds():
    """Lightning swapped in its own DistributedSampler for ours: a resumed epoch restarted from a new
    shuffle and augmentation was not seeded per sample. Now each rank takes its padded share of the
    one resumable order (Lightning keeps a DistributedSampler), and a resume starts the share where
    the saved position says."""
    from torch.utils.data import DistributedSampler

    from attn_zoo.data.resumable import sample_seed
    from attn_zoo.data.shards import RankShareSampler

    data = Synthetic(num_samples=70, batch_size=4)  # 56 training images (the rest validates)
    data.setup()
    count = len(data.train_set)
    shares = []
    for rank in range(3):
        data.trainer = SimpleNamespace(world_size=3, global_rank=rank)
        sampler = data.train_dataloader().sampler
        assert isinstance(sampler, RankShareSampler) and isinstance(sampler, DistributedSampler)
        data.train_sampler.resume_at(seed=11, start=0)
        shares.append(list(sampler))
        assert len(sampler) == len(shares[-1]) == -(-count // 3)
    order = torch.randperm(count, generator=torch.Generator().manual_seed(11)).tolist()
    assert [[index for index, _ in share] for share in shares] == [rank_share(order, rank, 3, pad=True) for rank in range(3)]
    assert all(seed == sample_seed(11, index) for share in shares for index, seed in share)
    data.trainer = SimpleNamespace(world_size=3, global_rank=1)
    sampler = data.train_dataloader().sampler
    data.train_sampler.resume_at(seed=11, start=8)  # two batches of 4 of this rank's share done
    assert list(sampler) == shares[1][8:]
    data.trainer = SimpleNamespace(world_size=1, global_rank=0)
    assert data.train_dataloader().sampler is data.train_sampler  # one process: the sampler itself


@pytest.mark.parametrize("other_seed, fails", [(11, False), (12, True)])
def test_ranks_that_drew_different_epoch_orders_stop_the_run(monkeypatch, other_seed, fails):
    """Each rank draws the epoch order from its own generator; a rank with another order would train
    on samples another rank trains on too. At an epoch's first batch the ranks compare seeds (here
    the other rank's seed is brought in by a stand-in for the all-reduce)."""
    from attn_zoo.callbacks import LoaderPosition
    from attn_zoo.data.resumable import ResumableRandomSampler

    def all_reduce_with_the_other_rank(tensor, op):
        tensor.copy_(torch.maximum(tensor, torch.tensor([other_seed, -other_seed])))

    monkeypatch.setattr(torch.distributed, "all_reduce", all_reduce_with_the_other_rank)
    sampler = ResumableRandomSampler(range(8))
    sampler.resume_at(seed=11, start=0)
    list(sampler)  # this rank's epoch order: seed 11
    trainer = SimpleNamespace(world_size=2, current_epoch=3, datamodule=SimpleNamespace(train_sampler=sampler),
                              strategy=SimpleNamespace(root_device=torch.device("cpu")))
    position = LoaderPosition()
    if fails:
        with pytest.raises(RuntimeError, match=r"DDP ranks drew different epoch orders in epoch 3 \(seeds 11 to 12\)"):
            position.on_train_batch_start(trainer, None, None, 0)
    else:
        position.on_train_batch_start(trainer, None, None, 0)
