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
