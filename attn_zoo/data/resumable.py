"""A shuffling sampler that can resume in the middle of an epoch, with augmentation seeded per sample.

``ResumableRandomSampler`` draws its epoch seed from the global generator and its order with
``torch.randperm`` exactly as ``torch.utils.data.RandomSampler`` does, and remembers the seed, so a
checkpoint can say "epoch order from seed s, n batches done" and a resumed run can continue the
same order after those batches without loading them. Under DDP the loaders read it through
``shards.RankShareSampler`` (each rank's share of this order), which Lightning keeps.

It yields ``(index, sample_seed)`` pairs, and ``SeededSamples`` draws sample ``index`` with torch's
CPU generator seeded to ``sample_seed`` (a function of the epoch seed and the index). A DataLoader
worker process has a random state of its own, advanced by whatever that worker drew before, and a
resumed run restarts its workers; seeded per sample, an image's random crop and flip depend on the
epoch and the image alone, so they are the same in any worker, at any ``num_workers``, resumed or
not. The generator's state around the sample is saved and restored, so the caller's stream (the
in-process loader's) is untouched. Transforms that draw from torch's generator are covered (all of
torchvision's); Python's ``random`` and NumPy's are not reseeded.
"""
from __future__ import annotations

from typing import Iterator

import torch
from torch.utils.data import Dataset, RandomSampler

from attn_zoo.seeding import cpu_generator_seeded
from attn_zoo.seeding import derived_seed as sample_seed  # (epoch seed, image index) -> the image's seed


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

    def __iter__(self) -> Iterator[tuple[int, int]]:
        order, start = self.epoch()
        for index in order[start:]:
            yield index, sample_seed(self.seed, index)


class SeededSamples(Dataset):
    """``dataset[(index, seed)]`` is ``dataset[index]`` drawn with torch's CPU generator seeded to
    ``seed``; a plain index (another sampler's) is passed through unseeded."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key):
        if not isinstance(key, tuple):
            return self.dataset[key]
        index, seed = key
        with cpu_generator_seeded(seed):
            return self.dataset[index]
