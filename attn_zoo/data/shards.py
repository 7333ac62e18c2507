"""Each process's share of a split under DDP, and the loaders' common parts.

Training pads the split by wrapping round to a multiple of the world size, as torch's
``DistributedSampler`` does: every rank must run the same number of steps, since each step syncs the
gradients. Evaluation does not pad, so each image is scored exactly once and a run on N GPUs scores
the same images as a run on one (padding repeats up to N − 1 images in the top-1 and in
``val_images``); a rank may then run one batch fewer, which is safe because no collective runs per
validation batch (BatchNorm uses its running statistics, gradients are off, the metrics sync once
at the epoch's end).
"""
from __future__ import annotations

import math
from typing import Iterator, Sequence, Sized, TypeVar

import torch
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from attn_zoo.config_check import ConfigError
from attn_zoo.data.resumable import ResumableRandomSampler, SeededSamples, sample_seed

Order = TypeVar("Order", bound=Sequence)


def share_size(count: int, rank: int, world_size: int, pad: bool) -> int:
    """How many of ``count`` samples rank ``rank`` gets (the ``pad``ded share is the same on every rank)."""
    return math.ceil(count / world_size) if pad else len(range(rank, count, world_size))


def check_evaluation_split(count: int, world_size: int) -> None:
    """Every rank must score a validation image: a rank with none failed in Lightning's sampler with a
    bare AssertionError (the other ranks then with a lost connection), as the first error a user saw."""
    if count < world_size:
        raise ConfigError(f"the validation split has {count} image{'s' if count != 1 else ''}, fewer than the "
                          f"{world_size} DDP processes: each scores at least one (use fewer processes or a larger split)",
                          every_rank=True)


def rank_share(order: Order, rank: int, world_size: int, pad: bool) -> Order:
    """Rank ``rank``'s samples of ``order`` (a list or a 1-D tensor): every ``world_size``-th from ``rank``
    on, after wrapping round to a multiple of ``world_size`` when ``pad``."""
    if world_size == 1:
        return order
    if pad:
        wrapped = order[: share_size(len(order), rank, world_size, pad) * world_size - len(order)]
        order = order + wrapped if isinstance(order, list) else torch.cat([order, wrapped])
    return order[rank::world_size]


class RankShareSampler(DistributedSampler):
    """Under DDP, rank ``rank``'s padded share of a ``ResumableRandomSampler``'s epoch order, as
    ``(index, sample seed)`` pairs. Every rank draws the same epoch seed (their generators are seeded
    alike and draw alike, as the device-resident loader relies on too) and takes every
    ``world_size``-th sample of that order; a mid-epoch resume starts the share at the saved position.
    A ``DistributedSampler``, so Lightning keeps it: the one it swapped in instead restarted a resumed
    epoch from a new shuffle, and gave plain indices, so augmentation was not seeded per sample."""

    def __init__(self, sampler: ResumableRandomSampler, rank: int, world_size: int):
        super().__init__(sampler.data_source, num_replicas=world_size, rank=rank, shuffle=False)
        self.sampler = sampler

    def __len__(self) -> int:
        return share_size(len(self.sampler.data_source), self.rank, self.num_replicas, pad=True)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        order, start = self.sampler.epoch()
        for index in rank_share(order, self.rank, self.num_replicas, pad=True)[start:]:
            yield index, sample_seed(self.sampler.seed, index)


def training_sampler(sampler: Sampler, trainer) -> Sampler:
    """``sampler`` itself in one process; under DDP its rank's share (``RankShareSampler``)."""
    if trainer is None or trainer.world_size == 1 or not isinstance(sampler, ResumableRandomSampler):
        return sampler
    return RankShareSampler(sampler, trainer.global_rank, trainer.world_size)


def evaluation_sampler(dataset: Sized, trainer) -> UnrepeatedDistributedSampler | None:
    """A DataLoader's sampler for evaluation: under DDP each rank's unpadded share, in order (Lightning
    keeps a ``DistributedSampler`` it is given; the one it would make pads); else None (in order)."""
    if trainer is None or trainer.world_size == 1:
        return None
    check_evaluation_split(len(dataset), trainer.world_size)
    return UnrepeatedDistributedSampler(dataset, num_replicas=trainer.world_size, rank=trainer.global_rank, shuffle=False)


def placement(trainer, device: torch.device | str | None) -> dict:
    """The ``device``, ``rank`` and ``world_size`` a loader serves: the trainer's, or outside a Trainer
    one process on ``device`` (the CPU when None)."""
    if trainer is None:
        return {"device": device or "cpu", "rank": 0, "world_size": 1}
    return {"device": trainer.strategy.root_device, "rank": trainer.global_rank, "world_size": trainer.world_size}


def host_loader(dataset: Dataset, batch_size: int, *, train: bool, sampler: Sampler, trainer, num_workers: int,
                seeded: bool = True, collate_fn=None) -> DataLoader:
    """The DataLoader of a split prepared on the host. Training reads ``sampler``'s order (resumable)
    with augmentation seeded per sample (``seeded``), and drops the partial last batch, as timm's and
    torchvision's reference scripts do: a batch of a few images is a far noisier step and leaves
    BatchNorm's running statistics taken from those few just before validation. Evaluation keeps
    every image, in order, each rank its unpadded share."""
    return DataLoader(
        SeededSamples(dataset) if train and seeded else dataset, batch_size=batch_size,
        sampler=training_sampler(sampler, trainer) if train else evaluation_sampler(dataset, trainer), drop_last=train,
        num_workers=num_workers, persistent_workers=num_workers > 0, pin_memory=True, collate_fn=collate_fn,
        generator=worker_seed_generator(),
    )


def worker_seed_generator() -> torch.Generator:
    """A DataLoader's own generator, for the base seed each new iterator draws (its workers' seeds),
    seeded from the run's seed without drawing from torch's global generator: the epoch seeds come from
    that one, and a resumed process makes a new iterator where the uninterrupted run, whose persistent
    workers keep theirs, made none, so every later epoch's order and crops differed (with workers)."""
    return torch.Generator().manual_seed(torch.initial_seed())
