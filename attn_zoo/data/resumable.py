"""A shuffling sampler that can resume in the middle of an epoch, for exact mid-epoch resumes.

``ResumableRandomSampler`` draws its epoch seed from the global generator and its order with
``torch.randperm`` exactly as ``torch.utils.data.RandomSampler`` does (same numbers as before), and
remembers the seed, so a checkpoint can say "epoch order from seed s, n batches done" and a resumed
run can continue the same order after those batches without loading them. A ``RandomSampler``
subclass, so Lightning still swaps in a ``DistributedSampler`` under DDP.
"""
from __future__ import annotations

from typing import Iterator

import torch
from torch.utils.data import RandomSampler


class ResumableRandomSampler(RandomSampler):
    def __init__(self, data_source):
        super().__init__(data_source)
        self.seed: int | None = None
        self._resume: tuple[int, int] | None = None

    def resume_at(self, seed: int, start: int) -> None:
        """The next epoch's order is the one from ``seed``, from its ``start``-th index on."""
        self._resume = (seed, start)

    def epoch(self) -> tuple[list[int], int]:
        """The next epoch's whole order and the index to start it at (0 unless resumed): for a loader
        that shards the order itself before skipping (``DaliLoader``)."""
        if self._resume is not None:
            (seed, start), self._resume = self._resume, None
        else:
            seed, start = int(torch.empty((), dtype=torch.int64).random_().item()), 0
        self.seed = seed
        generator = torch.Generator()
        generator.manual_seed(seed)
        return torch.randperm(len(self.data_source), generator=generator).tolist(), start

    def __iter__(self) -> Iterator[int]:
        order, start = self.epoch()
        yield from order[start:]
